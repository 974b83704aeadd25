"""Click-prediction data over long user behaviour histories.

Readers for MovieLens ratings, the Taobao `UserBehavior.csv` log (built the way MIMN does) and a generic
behaviour CSV, plus a synthetic task whose answer lies only at the start of very long histories. All
return a `DatasetDict` (`train`, `test`) of rows

    user_id: str, history_items / history_categories / history_behaviors: list[int] (oldest first),
    target_item: int, target_category: int, label: int (0/1)

and the `BehaviorVocab` that maps raw ids to the contiguous ids in those rows (0 is padding). The readers
stream a file in blocks of whole lines and parse the lines of a block together (pyarrow), leaving only unusual
or malformed lines to a line-by-line parser (see Parsing); they share one vectorised core (`_event_samples`):
"earlier" means strictly earlier in time, so events logged at the same time never enter each other's history
(timestamps are parsed exactly, never through floats). A file that yields no train or no test sample raises
`EmptySplitError`, saying why. The parsed log is held in memory as compact numpy columns (their size is logged);
histories are stored flat in Arrow, never as Python lists.
"""

import csv
import io
import json
import logging
import math
import os
import re
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from functools import cached_property, partial
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from datasets import Dataset, DatasetDict, Features, List, Value
from transformers import TrainerCallback

from .file_utils import MAX_LINE_BYTES, atomic_path, capped_lines

logger = logging.getLogger(__name__)

BEHAVIOR_TYPES = {"pv": 1, "cart": 2, "fav": 3, "buy": 4}
VOCAB_FILE_NAME = "behavior_vocab.json"
TAOBAO_COLUMNS = ("user_id", "item_id", "category_id", "behavior_type", "timestamp")
MOVIELENS_RATINGS_COLUMNS = ("userId", "movieId", "rating", "timestamp")
MOVIELENS_MOVIES_COLUMNS = ("movieId", "title", "genres")
BEHAVIOR_LOG_COLUMNS = ("user", "item", "category", "timestamp")

CLICK_FEATURES = Features(
    {
        "user_id": Value("string"),
        "history_items": List(Value("int32")),
        "history_categories": List(Value("int32")),
        "history_behaviors": List(Value("int32")),
        "target_item": Value("int32"),
        "target_category": Value("int32"),
        "label": Value("int32"),
    }
)


class BehaviorFormatError(ValueError):
    """A line of a behaviour file that cannot be read; the message names the file, line and expectation."""

    def __init__(self, path: str | os.PathLike, line_number: int, line: str, expected: str):
        self.path = str(path)
        self.line_number = line_number
        self.line = line
        self.expected = expected
        super().__init__(f"{self.path}, line {line_number}: expected {expected}; got {_shorten(line)!r}")


class EmptySplitError(ValueError):
    """A readable behaviour file that yields no `train` or no `test` sample; the message names the file and
    says why (too few earlier events for `min_history`, or a split setting that holds out none or all)."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        super().__init__(f"{self.path}: {reason}")


def _shorten(line: str, width: int = 80) -> str:
    return line if len(line) <= width else line[: width - 3] + "..."


@dataclass
class BehaviorVocab:
    """Raw item / category ids (as strings) to contiguous ids from 1; 0 is padding in every vocabulary.

    `item_categories[i]` is the category id of item id `i` (its first one seen), used to give sampled
    negative items a category. `bad_lines` counts the malformed lines a reader skipped with
    `skip_bad_lines=True` while building this vocabulary; it describes one load and is not saved.
    """

    items: dict[str, int] = field(default_factory=dict)
    categories: dict[str, int] = field(default_factory=dict)
    item_categories: list[int] = field(default_factory=lambda: [0])
    behaviors: dict[str, int] = field(default_factory=lambda: dict(BEHAVIOR_TYPES))
    bad_lines: int = field(default=0, compare=False)

    @property
    def item_vocab_size(self) -> int:
        return len(self.items) + 1

    @property
    def category_vocab_size(self) -> int:
        return len(self.categories) + 1

    @property
    def behavior_vocab_size(self) -> int:
        return max(self.behaviors.values()) + 1

    def add(self, item: str, category: str) -> tuple[int, int]:
        """Ids of `item` and `category`, registering them (and the item's category) when new."""
        category_id = self.categories.setdefault(category, len(self.categories) + 1)
        item_id = self.items.get(item)
        if item_id is None:
            item_id = self.items[item] = len(self.items) + 1
            self.item_categories.append(category_id)
        return item_id, category_id

    def save(self, path: str | os.PathLike) -> Path:
        """Write the vocabulary as JSON (to `behavior_vocab.json` inside `path` if it is a directory).

        Written to a temporary file that replaces the target, so a crash never leaves a half-written file.
        """
        path = _vocab_file(path)
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(self._state()), encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "BehaviorVocab":
        """Read a vocabulary written by `save` (a file, or a directory holding `behavior_vocab.json`).

        A damaged file raises a ValueError naming it and what is wrong: its ids size the model's embeddings,
        so a vocabulary that loads is one the model can use.
        """
        path = _vocab_file(path)
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError:
            problem = "not UTF-8 text"
        except json.JSONDecodeError as e:
            problem = f"not JSON ({e})"
        else:
            problem = _vocab_problem(state, list(cls()._state()))
        if problem:
            raise ValueError(f"{path}: cannot load the behaviour vocabulary: {problem}")
        return cls(**state)

    def _state(self) -> dict[str, Any]:
        """What `save` writes: everything but `bad_lines`, which describes one load."""
        return {name: value for name, value in asdict(self).items() if name != "bad_lines"}


def _vocab_file(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path / VOCAB_FILE_NAME if path.is_dir() else path


def _vocab_problem(state: Any, keys: list[str]) -> str | None:
    """What is wrong with `state` as a vocabulary written by `BehaviorVocab.save` with `keys`, or None."""
    if not isinstance(state, dict) or set(state) != set(keys):
        found = f"keys {list(state)}" if isinstance(state, dict) else _shorten(json.dumps(state), 40)
        return f"expected a JSON object with keys {', '.join(keys)}, found {found}"
    for name in ("items", "categories", "behaviors"):
        # `type(i) is int`: JSON true/false load as bools, which isinstance counts as ints
        if not (isinstance(state[name], dict) and all(type(i) is int for i in state[name].values())):
            return f"{name} must map names to integer ids"
    for name in ("items", "categories"):
        if sorted(state[name].values()) != list(range(1, len(state[name]) + 1)):
            return f"{name} must number its {len(state[name])} names 1, 2, ... without gaps or repeats"
    item_categories, num_categories = state["item_categories"], len(state["categories"])
    if not (
        isinstance(item_categories, list)
        and len(item_categories) == len(state["items"]) + 1
        and all(type(c) is int for c in item_categories)
        and item_categories[0] == 0
        and all(1 <= c <= num_categories for c in item_categories[1:])
    ):
        return (
            f"item_categories must be 0 (padding), then a category id from 1 to {num_categories} for each of "
            f"the {len(state['items'])} items"
        )
    if not state["behaviors"] or min(state["behaviors"].values()) < 1:
        return "behaviors must map at least one behaviour type to a positive id"
    return None


# ---------------------------------------------------------------------------------------------------------
# Parsing
#
# A file is read in blocks of whole lines. The lines of a block in the plain form logs are written in (no quotes,
# no padding, canonical numbers) are matched and read together: one RE2 pattern per file layout, run by pyarrow,
# captures their values, which are converted a column at a time. Every other line takes the exact path, one line at
# a time: the `csv` module and the value parsers below, which accept every valid line and name what is wrong with a
# bad one. A pattern accepts only texts its parser accepts and reads the same way, so both paths agree.

_BLOCK_BYTES = 1 << 20  # read at a time: small, so a line over the cap is refused after reading at most this more

# Fast-path patterns: ids as `_integer_id` returns them (no leading zero), texts that `str.strip` leaves as they are
# (first and last characters: ASCII printable but space, quote and comma, or any letter or digit) and unquoted
# CSV fields (`_OTHER_COLUMN`, a column no reader reads). Other forms, such as signed or 19-digit timestamps, are
# left to the exact path.
_INTEGER_ID = "0|[1-9][0-9]{0,17}"
_OTHER_COLUMN = r'[^,"\r\n\x00]*'
_EDGE = r"[!#-+\--~\pL\pN]"
_STRING_ID = rf"{_EDGE}(?:{_OTHER_COLUMN}{_EDGE})?"
_GENRE_EDGE = r"[!#-+\--{}~\pL\pN]"  # _EDGE without the genre separator |
_GENRE = rf'{_GENRE_EDGE}(?:[^|,"\r\n\x00]*{_GENRE_EDGE})?'
_BEHAVIOR_NAMES = pa.array(list(BEHAVIOR_TYPES))
_BEHAVIOR_IDS = np.array(list(BEHAVIOR_TYPES.values()), dtype=np.int8)


@dataclass(frozen=True)
class _Column:
    """How a reader reads one CSV column into the values `names`, of Arrow `types` (each a named group of
    `pattern`).

    `parse(text)` reads it exactly: a tuple with one value per name, or a ValueError saying what was expected.
    `pattern` (RE2) matches only texts `parse` accepts and reads alike; `accept`, when given, checks the matched
    texts further, all at once (what a pattern cannot say), and the lines it refuses take the exact path.
    """

    names: tuple[str, ...]
    types: tuple[pa.DataType, ...]
    pattern: str
    parse: Callable[[str], tuple]
    accept: Callable[[pa.Array], pa.Array] | None = None


def _integer_id_column(name: str, column: str) -> _Column:
    # as numbers: less memory than their text, and numbered (dictionary-encoded) twice as fast
    return _Column(
        (name,), (pa.int64(),), f"(?P<{name}>{_INTEGER_ID})", lambda text: (int(_integer_id(text, column)),)
    )


def _string_id_column(name: str, column: str) -> _Column:
    return _Column((name,), (pa.string(),), f"(?P<{name}>{_STRING_ID})", lambda text: (_string_id(text, column),))


def _timestamp_column(decimals: bool = False) -> _Column:
    if decimals:  # a negative decimal counts its fraction forward from the floor (see _timestamp): exact path
        pattern = r"(?P<time>[0-9]{1,18})(?:\.(?P<nanos>[0-9]{0,9}))?"
    else:  # the empty `nanos` group reads as 0
        pattern = "(?P<time>-?[0-9]{1,18})(?P<nanos>)"
    # whole time units, exact (see _timestamp), and the nanoseconds of a decimal timestamp
    return _Column(("time", "nanos"), (pa.int64(), pa.int32()), pattern, partial(_timestamp, decimals=decimals))


@dataclass(frozen=True)
class _Layout:
    """The columns of a file's lines: `names` (for messages) and the columns read, by position, in the order the
    exact path checks them (a line with several bad values is named for the first of them)."""

    names: tuple[str, ...]
    columns: dict[int, _Column]

    @property
    def value_types(self) -> dict[str, pa.DataType]:
        return {name: t for column in self.columns.values() for name, t in zip(column.names, column.types)}

    @cached_property
    def pattern(self) -> str:
        fields = (self.columns[i].pattern if i in self.columns else _OTHER_COLUMN for i in range(len(self.names)))
        return "^" + ",".join(fields) + r"\r?\n?$"

    def parse(self, fields: list[str]) -> tuple:
        _check_column_count(fields, self.names)
        return tuple(value for i, column in self.columns.items() for value in column.parse(fields[i]))


def _read_csv(
    path: Path,
    vocab: BehaviorVocab,
    skip_bad_lines: bool,
    *,
    max_line_bytes: int = MAX_LINE_BYTES,
    layout: _Layout | None = None,
    read_header: Callable[[list[str]], _Layout] | None = None,
) -> dict[str, pa.ChunkedArray]:
    """The values of every record of a CSV file with one record per line, in line order, by name.

    With `read_header`, the first non-blank line is the header and `read_header(fields)` returns the layout of the
    other lines (ValueError saying what was expected); a bad header is never skipped. A bad line raises a
    `BehaviorFormatError`, or with `skip_bad_lines` is counted in `vocab.bad_lines` and leaves no other trace. A
    line longer than `max_line_bytes` raises even with `skip_bad_lines`: it is a cap to raise, not a malformed
    record.
    """
    chunks = defaultdict(list)
    records = lines = 0
    for first_line, block, offsets in _line_blocks(path, max_line_bytes):
        lines = first_line + len(offsets) - 2
        start = 0
        while layout is None and start < len(offsets) - 1:  # the header, read exactly
            raw, number = block[offsets[start] : offsets[start + 1]], first_line + start
            start += 1
            try:
                fields = None if _is_blank(raw) else _csv_fields(raw)
                layout = None if fields is None else read_header(fields)
            except ValueError as e:
                raise BehaviorFormatError(path, number, _shown(raw), str(e)) from None
        if layout is None or start == len(offsets) - 1:
            continue
        values = _read_block(path, vocab, skip_bad_lines, layout, block, offsets[start:], first_line + start)
        for name, array in values.items():
            chunks[name].append(array)
        records += len(next(iter(values.values())))
    if not records:
        if lines == 0:
            expected = "behaviour records; the file is empty"
        elif layout is None:
            expected = "a header line; the file has only blank lines"
        else:
            expected = f"at least one valid record ({vocab.bad_lines} bad lines skipped)"
        raise BehaviorFormatError(path, lines + 1, "", expected)
    return {name: pa.chunked_array(chunks[name], value_type) for name, value_type in layout.value_types.items()}


def _read_block(
    path: Path,
    vocab: BehaviorVocab,
    skip_bad_lines: bool,
    layout: _Layout,
    block: bytes,
    offsets: np.ndarray,
    first_line: int,
) -> dict[str, pa.Array]:
    """The values of the records of the lines of `block` that `offsets` delimit (the first is line `first_line`),
    in line order: those the layout's pattern matches read together, the others exactly."""
    matched = pc.extract_regex(_lines_array(block, offsets), layout.pattern)  # null where it does not match
    fast = matched.is_valid()
    for column in layout.columns.values():
        if column.accept is not None:
            fast = pc.and_(fast, column.accept(matched.field(column.names[0])))
    fast = fast.to_numpy(zero_copy_only=False)
    fast_lines = np.flatnonzero(fast)
    if len(fast_lines) < len(fast):
        matched = matched.take(fast_lines)
    values = {name: _fast_values(name, matched.field(name), t) for name, t in layout.value_types.items()}

    exact_lines, exact_records = [], []
    for i in np.flatnonzero(~fast):
        raw = block[offsets[i] : offsets[i + 1]]
        try:
            if _is_blank(raw):
                continue
            exact_records.append(layout.parse(_csv_fields(raw)))
        except ValueError as e:
            error = BehaviorFormatError(path, first_line + i, _shown(raw), str(e))
            if not skip_bad_lines:
                raise error from None
            vocab.bad_lines += 1
            logger.debug("Skipping %s", error)
            continue
        exact_lines.append(i)
    if not exact_records:
        return values
    # the records of both paths, back in line order
    order = np.argsort(np.concatenate([fast_lines, exact_lines]), kind="stable")
    columns = zip(layout.value_types.items(), zip(*exact_records))
    return {
        name: pa.concat_arrays([values[name], pa.array(exact, value_type)]).take(order)
        for (name, value_type), exact in columns
    }


def _fast_values(name: str, text: pa.Array, value_type: pa.DataType) -> pa.Array:
    """The values `name`, of `value_type`, of the texts a pattern captured for them."""
    if name == "behavior":
        return pa.array(_BEHAVIOR_IDS[pc.index_in(text, value_set=_BEHAVIOR_NAMES).to_numpy()])
    if name == "nanos":  # the digits after the decimal point, 0 to 9 of them
        text = pc.utf8_rpad(text, 9, "0")
    return pc.cast(text, value_type)


def _line_blocks(path: Path, max_line_bytes: int) -> Iterator[tuple[int, bytes, np.ndarray]]:
    """Yield `(number of its first line from 1, block, offsets)` for consecutive blocks of whole lines of a file:
    line i of a block is `block[offsets[i]:offsets[i + 1]]`, its newline included (the last line of a file may
    have none). A line of more than `max_line_bytes` bytes, its newline not counted, raises (as `capped_lines`
    words it) once the lines before it are yielded, without being read whole."""
    number = 1
    pending = bytearray()  # read, but not yet yielded: the start of a line whose end is not read yet
    with open(path, "rb") as f:
        while True:
            data = f.read(_BLOCK_BYTES)
            pending += data
            end = pending.rfind(b"\n") + 1 if data else len(pending)
            with memoryview(pending) as view:
                block = bytes(view[:end])
            del pending[:end]
            offsets = _line_offsets(block)
            lengths = np.diff(offsets) - 1  # newlines not counted
            if not block.endswith(b"\n") and block:  # the file's last line, which has none
                lengths[-1] += 1
            too_long = np.flatnonzero(lengths > max_line_bytes)
            if too_long.size:
                i = too_long[0]
                yield number, block[: offsets[i]], offsets[: i + 1]
                raise _line_too_long(path, number + i, block[offsets[i] :], max_line_bytes)
            yield number, block, offsets
            number += len(offsets) - 1
            if len(pending) > max_line_bytes:  # a line without its newline yet, and already over the cap
                raise _line_too_long(path, number, bytes(pending), max_line_bytes)
            if not data:
                return


def _line_offsets(block: bytes) -> np.ndarray:
    """(lines + 1,) offsets of the lines of a block: 0, then where each line ends, after its newline if it has one."""
    ends = np.flatnonzero(np.frombuffer(block, dtype=np.uint8) == ord("\n")) + 1
    if block and not block.endswith(b"\n"):
        ends = np.append(ends, len(block))
    return np.concatenate([[0], ends])


def _line_too_long(path: Path, number: int, start: bytes, max_line_bytes: int) -> BehaviorFormatError:
    """The error for line `number`, which is over the cap (`start`: its first bytes), as `capped_lines` words it."""

    def error(_, line: str, expected: str) -> BehaviorFormatError:  # capped_lines counts from 1: the number is ours
        return BehaviorFormatError(path, number, line, expected)

    try:
        next(capped_lines(io.BytesIO(start), max_line_bytes, error))
    except BehaviorFormatError as e:
        return e
    raise AssertionError(f"line {number} of {path} is within the cap")


def _lines_array(block: bytes, offsets: np.ndarray) -> pa.Array:
    """The lines of a block as Arrow strings, over the block's bytes; a line that is not UTF-8 becomes empty, to be
    read exactly."""
    buffers = [None, pa.py_buffer(offsets.astype(np.int32)), pa.py_buffer(block)]
    lines = pa.Array.from_buffers(pa.binary(), len(offsets) - 1, buffers)
    try:
        return lines.cast(pa.string())  # checks that every line is UTF-8
    except pa.ArrowInvalid:  # some line is not: blank every line with a non-ASCII byte
        non_ascii = np.concatenate([[0], np.cumsum(np.frombuffer(block, dtype=np.uint8) >= 0x80)])
        has_non_ascii = non_ascii[offsets[1:]] > non_ascii[offsets[:-1]]
        return pc.if_else(pa.array(has_non_ascii), pa.scalar(b""), lines).cast(pa.string())


def _shown(raw: bytes) -> str:
    """A line as error messages show it; a byte-order mark (spreadsheet exports) is not part of the data."""
    return raw.decode("utf-8", errors="replace").removeprefix("\ufeff").rstrip("\r\n")


def _is_blank(raw: bytes) -> bool:
    return not _shown(raw).strip()


def _csv_fields(raw: bytes) -> list[str]:
    try:
        return next(csv.reader([raw.decode("utf-8-sig")]))
    except UnicodeDecodeError:
        raise ValueError("UTF-8 text") from None
    except csv.Error as e:
        raise ValueError(f"a well-formed CSV line ({e})") from None


def _check_column_count(fields: list[str], names: tuple[str, ...]) -> None:
    if len(fields) != len(names):
        raise ValueError(f"{len(names)} columns ({','.join(names)}), found {len(fields)}")


def _column_indices(header: list[str], required: tuple[str, ...], optional: tuple[str, ...] = ()) -> dict[str, int]:
    """Positions of the named columns in a header line; ValueError when a required one is missing or a name
    occurs twice (either copy could be the one meant, so neither is picked)."""
    positions = {}
    for i, name in enumerate(header):
        name = name.strip()
        if name in positions:
            raise ValueError(f"a header naming each column once, found {_shorten(name, 30)!r} twice")
        positions[name] = i
    missing = [name for name in required if name not in positions]
    if missing:
        raise ValueError(f"a header with columns {','.join(required)} (missing {','.join(missing)})")
    return {name: positions[name] for name in required + optional if name in positions}


def _integer_id(text: str, column: str) -> str:
    """Canonical form of a numeric id, so `007` and `7` are the same item; at most 18 digits, so it fits int64."""
    text = text.strip()
    canonical = text.lstrip("0") or "0"
    if not (text.isascii() and text.isdigit() and len(canonical) <= 18):
        raise ValueError(f"a non-negative integer {column} of at most 18 digits, found {_shorten(text, 30)!r}")
    return canonical


def _string_id(text: str, column: str) -> str:
    text = text.strip()
    if not text:
        raise ValueError(f"a non-empty {column}")
    return text


def _number(text: str, column: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise ValueError(f"a numeric {column}, found {_shorten(text.strip(), 30)!r}")
    return value


# At most 19 digits before the point and 9 after: the whole part fits int64, the fraction counts nanoseconds.
_TIMESTAMP = re.compile(r"[+-]?[0-9]{1,19}(\.[0-9]{0,9})?")


def _timestamp(text: str, decimals: bool = False) -> tuple[int, int]:
    """A timestamp parsed exactly, as (whole units, nanoseconds); a decimal point only with `decimals`.

    Not a float: float64 keeps about 16 digits, so timestamps in nanoseconds (19 digits) would merge and
    no event would have an earlier one.
    """
    text = text.strip()
    match = _TIMESTAMP.fullmatch(text)
    if match and (decimals or not match[1]):
        value = Fraction(text) if match[1] else int(text)
        whole = math.floor(value)  # so the fraction of a negative timestamp counts forward too: -1.25 = -2 + 0.75
        if -(2**63) <= whole < 2**63:
            return whole, int((value - whole) * 10**9)
    allowed = "an integer or a decimal with at most 9 decimals" if decimals else "an integer"
    raise ValueError(f"a numeric timestamp ({allowed}, within 64 bits), found {_shorten(text, 30)!r}")


def _behavior(text: str) -> int:
    behavior = BEHAVIOR_TYPES.get(text.strip().lower())
    if behavior is None:
        raise ValueError(f"a behaviour type in {'/'.join(BEHAVIOR_TYPES)}, found {_shorten(text.strip(), 30)!r}")
    return behavior


def _label(text: str) -> tuple[int]:
    label = text.strip()
    if label not in ("0", "1"):
        raise ValueError(f"a label of 0 or 1, found {_shorten(label, 30)!r}")
    return (int(label),)


def _first_genre(text: str) -> tuple[str]:
    genres = text.strip()
    if not genres:
        raise ValueError("pipe-separated genres")
    return (genres.split("|")[0],)


_BEHAVIOR_COLUMN = _Column(
    ("behavior",), (pa.int8(),), f"(?P<behavior>{'|'.join(BEHAVIOR_TYPES)})", lambda text: (_behavior(text),)
)
_LABEL_COLUMN = _Column(("label",), (pa.int8(),), "(?P<label>[01])", _label)
_RATING_COLUMN = _Column(
    ("rating",), (pa.float64(),), r"(?P<rating>[0-9]{1,9}(?:\.[0-9]{1,9})?)", lambda text: (_number(text, "rating"),)
)
_GENRES_COLUMN = _Column(("category",), (pa.string(),), rf"(?P<category>{_GENRE})(?:\|{_GENRE})*", _first_genre)
_TAOBAO_LAYOUT = _Layout(
    TAOBAO_COLUMNS,
    {
        0: _integer_id_column("user", "user_id"),
        1: _integer_id_column("item", "item_id"),
        2: _integer_id_column("category", "category_id"),
        3: _BEHAVIOR_COLUMN,
        4: _timestamp_column(),  # Unix seconds
    },
)


@dataclass
class _EventLog:
    """Parsed events as numpy columns, one entry per event in line order; `user` indexes `user_names`."""

    user_names: list[str]
    user: np.ndarray
    time: np.ndarray  # whole time units, exact (see _timestamp)
    nanos: np.ndarray  # the fraction of a decimal timestamp, in nanoseconds
    tiebreak: np.ndarray | None  # orders events logged at the same time; None: the line order
    item: np.ndarray
    category: np.ndarray
    behavior: np.ndarray
    label: np.ndarray


def _event_log(path: Path, values: dict[str, pa.ChunkedArray], **columns: np.ndarray) -> _EventLog:
    """The events of `path` whose users and times `values` holds (users numbered in order of first appearance);
    `columns` gives the other columns of `_EventLog`. Logs how many were read, and the memory their columns take."""
    user, user_names = _first_seen_indices(values["user"])
    log = _EventLog(user_names, user, values["time"].to_numpy(), values["nanos"].to_numpy(), **columns)
    arrays = [value for value in vars(log).values() if isinstance(value, np.ndarray)]
    logger.info(
        "Read %s of %s from %s: %.1f MiB of event columns",
        _plural(len(user), "event"),
        _plural(len(user_names), "user"),
        path,
        sum(a.nbytes for a in arrays) / 2**20,
    )
    return log


def _first_seen_indices(values: pa.ChunkedArray) -> tuple[np.ndarray, list[str]]:
    """(n,) indices of `values` among their distinct values in order of first appearance, and those values as text
    (integer ids as `_integer_id` writes them)."""
    encoded = pc.dictionary_encode(values)  # one dictionary for every chunk, in order of first appearance
    indices = pa.chunked_array([chunk.indices for chunk in encoded.chunks], pa.int32()).to_numpy()
    return indices, list(map(str, encoded.chunks[-1].dictionary.to_pylist()))


def _number_items(
    vocab: BehaviorVocab, items: pa.ChunkedArray, categories: pa.ChunkedArray
) -> tuple[np.ndarray, np.ndarray]:
    """Fill the empty `vocab` from events (`items` and `categories`, in line order) as `vocab.add` would one event
    at a time: ids from 1 in order of first appearance, each item's category the one of its first event. Returns
    every event's item and category ids."""
    category, category_names = _first_seen_indices(categories)
    item, item_names = _first_seen_indices(items)
    category, item = category + 1, item + 1
    # an item's first event is the one whose id exceeds every earlier one (ids are numbered as first seen)
    is_first = np.diff(np.maximum.accumulate(item), prepend=0) > 0
    vocab.items = dict(zip(item_names, range(1, len(item_names) + 1)))
    vocab.categories = dict(zip(category_names, range(1, len(category_names) + 1)))
    vocab.item_categories = [0, *category[is_first].tolist()]
    return item, category


# ---------------------------------------------------------------------------------------------------------
# The shared sample-building core


@dataclass
class _Samples:
    """Click samples as numpy columns; histories are ragged, stored flat with one length per sample."""

    user: np.ndarray  # index into the user names
    history_lengths: np.ndarray
    history_items: np.ndarray
    history_categories: np.ndarray
    history_behaviors: np.ndarray
    target_item: np.ndarray
    target_category: np.ndarray
    target_time: np.ndarray  # whole time units (the Taobao split reads it; its timestamps are integers)
    label: np.ndarray

    def to_dataset_dict(self, user_names: list[str], is_test: np.ndarray) -> DatasetDict:
        """`train` and `test` datasets, `is_test` telling per sample which one it goes to."""
        offsets = np.zeros(len(self.user) + 1, dtype=np.int64)
        np.cumsum(self.history_lengths, out=offsets[1:])
        _check_history_events(offsets[-1])

        list_offsets = pa.array(offsets.astype(np.int32))

        def ragged(values: np.ndarray) -> pa.Array:
            return pa.ListArray.from_arrays(list_offsets, pa.array(values.astype(np.int32)))

        columns = {
            "user_id": pa.array(np.asarray(user_names, dtype=object)[self.user], type=pa.string()),
            "history_items": ragged(self.history_items),
            "history_categories": ragged(self.history_categories),
            "history_behaviors": ragged(self.history_behaviors),
            "target_item": pa.array(self.target_item.astype(np.int32)),
            "target_category": pa.array(self.target_category.astype(np.int32)),
            "label": pa.array(self.label.astype(np.int32)),
        }
        is_test = np.asarray(is_test, dtype=bool)
        splits = {}
        for name, mask in (("train", ~is_test), ("test", is_test)):
            mask = pa.array(mask)
            splits[name] = Dataset.from_dict({c: a.filter(mask) for c, a in columns.items()}, features=CLICK_FEATURES)
        return DatasetDict(splits)


def _check_history_events(total: int) -> None:
    if total > np.iinfo(np.int32).max:  # Arrow list offsets are int32
        raise ValueError(f"{total} history events in all exceed one Arrow column; lower max_history")


def _stable_order(keys: list[np.ndarray]) -> np.ndarray:
    """The indices that sort rows by `keys`, most significant first, ties in row order.

    Where the keys' ranges fit in 63 bits together they are packed into one int64 and sorted once, several times
    faster than np.lexsort (users and times of the Taobao log: 20 bits for a million users, 20 for its 9 days).
    """
    low = [int(key.min()) for key in keys]
    bits = [(int(key.max()) - lowest).bit_length() for key, lowest in zip(keys, low)]
    if sum(bits) > 63:
        return np.lexsort(keys[::-1])
    packed = np.zeros(len(keys[0]), dtype=np.int64)
    for key, lowest, width in zip(keys, low, bits):
        packed <<= width
        packed |= key.astype(np.int64) - lowest
    return np.argsort(packed, kind="stable")


def _event_samples(
    log: _EventLog, *, min_history: int, max_history: int, last_only: bool = False, copies: int = 1
) -> _Samples:
    """One sample per event with at least `min_history` strictly earlier events of its user (only each
    user's last event with `last_only`), repeated `copies` times; the history is the user's strictly
    earlier events, oldest first, truncated to the most recent `max_history`."""
    if min_history < 0 or max_history < 1:
        raise ValueError(f"need min_history >= 0 and max_history >= 1, got {min_history} and {max_history}")
    keys = [log.user, log.time, log.nanos] + ([] if log.tiebreak is None else [log.tiebreak])
    order = _stable_order(keys)
    user, time, nanos = log.user[order], log.time[order], log.nanos[order]
    item, category, behavior, label = log.item[order], log.category[order], log.behavior[order], log.label[order]

    # For each event: where its user's events start, and where the run of its user's events logged at the
    # same time starts; everything between the two is its strictly earlier history.
    index = np.arange(len(user))
    new_user = np.ones(len(user), dtype=bool)
    new_user[1:] = user[1:] != user[:-1]
    new_time = new_user.copy()
    new_time[1:] |= (time[1:] != time[:-1]) | (nanos[1:] != nanos[:-1])
    user_start = np.maximum.accumulate(np.where(new_user, index, 0))
    history_end = np.maximum.accumulate(np.where(new_time, index, 0))

    selected = history_end - user_start >= min_history
    if last_only:
        selected &= np.append(new_user[1:], True)
    targets = np.repeat(index[selected], copies)

    end = history_end[targets]
    start = np.maximum(user_start[targets], end - max_history)
    lengths = end - start
    _check_history_events(lengths.sum())  # before gathering them
    # Flat positions of every history: sample s contributes start[s], ..., end[s] - 1.
    first_output = np.cumsum(lengths) - lengths
    gather = np.arange(lengths.sum()) + np.repeat(start - first_output, lengths)
    return _Samples(
        user=user[targets],
        history_lengths=lengths,
        history_items=item[gather],
        history_categories=category[gather],
        history_behaviors=behavior[gather],
        target_item=item[targets],
        target_category=category[targets],
        target_time=time[targets],
        label=label[targets],
    )


def _replace_with_negatives(samples: _Samples, replace: np.ndarray, vocab: BehaviorVocab, rng: np.random.Generator):
    """Swap the targets where `replace` holds for a random other item of the vocabulary, labelled 0.

    With fewer than two items there is no other item, so the targets stay as they are.
    """
    num_items = len(vocab.items)
    if num_items < 2:
        return
    real = samples.target_item[replace]
    other = rng.integers(1, num_items, size=len(real))  # 1 .. num_items - 1, then skip over the real item
    other += other >= real
    samples.target_item[replace] = other
    samples.target_category[replace] = np.asarray(vocab.item_categories)[other]
    samples.label[replace] = 0


def _test_users(num_users: int, test_fraction: float, rng: np.random.Generator) -> np.ndarray:
    """A boolean per user: a random `test_fraction` of the users (rounded) is held out."""
    if not 0.0 <= test_fraction <= 1.0:
        raise ValueError(f"test_fraction must be in [0, 1], got {test_fraction}")
    is_test = np.zeros(num_users, dtype=bool)
    is_test[rng.permutation(num_users)[: round(num_users * test_fraction)]] = True
    return is_test


def _split_by_user(
    samples: _Samples, user_names: list[str], test_fraction: float, rng: np.random.Generator, path: Path
) -> DatasetDict:
    # Only users with samples are split, so the test share of sample-bearing users is `test_fraction`.
    users, sample_user = np.unique(samples.user, return_inverse=True)
    is_test = _test_users(len(users), test_fraction, rng)
    if is_test.all() or not is_test.any():
        raise EmptySplitError(
            path,
            f"the {'train' if is_test.all() else 'test'} split would be empty: test_fraction={test_fraction} "
            f"holds out {is_test.sum()} of {_plural(len(users), 'user')} with samples",
        )
    return samples.to_dataset_dict(user_names, is_test[sample_user])


def _require_samples(samples: _Samples, log: _EventLog, path: Path, min_history: int, event: str) -> None:
    """Fail before splitting when no event became a sample, saying how much was read and what min_history asked."""
    if not len(samples.user):
        raise EmptySplitError(
            path,
            f"no {event} has at least min_history={min_history} strictly earlier {event}s of its user "
            f"({_plural(len(log.user), event)} of {_plural(len(log.user_names), 'user')} read), so both splits "
            "would be empty",
        )


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _log_bad_lines(vocab: BehaviorVocab, path: Path) -> None:
    if vocab.bad_lines:
        logger.warning("Skipped %d malformed lines while reading %s", vocab.bad_lines, path)


def _read_item_events(path: Path, vocab: BehaviorVocab, skip_bad_lines: bool, max_line_bytes: int, **layout):
    """The events of a CSV with item and category ids (Taobao, a behaviour log), in line order among equal times:
    (event log, names of the columns read). `layout`: `_read_csv`'s `layout` or `read_header`. A log without a
    behaviour column is all pv; one without labels, all clicks."""
    values = _read_csv(path, vocab, skip_bad_lines, max_line_bytes=max_line_bytes, **layout)
    _log_bad_lines(vocab, path)
    item, category = _number_items(vocab, values["item"], values["category"])
    events = len(item)
    log = _event_log(
        path,
        values,
        tiebreak=None,  # the line order
        item=item,
        category=category,
        behavior=values["behavior"].to_numpy() if "behavior" in values else np.full(events, BEHAVIOR_TYPES["pv"]),
        label=values["label"].to_numpy() if "label" in values else np.ones(events, dtype=np.int8),
    )
    return log, frozenset(values)  # the parsed columns themselves are freed here, before the events are sorted


# ---------------------------------------------------------------------------------------------------------
# Readers


def load_movielens(
    ratings_csv: str | os.PathLike,
    movies_csv: str | os.PathLike,
    min_history: int = 5,
    max_history: int = 200,
    test_fraction: float = 0.2,
    seed: int = 0,
    skip_bad_lines: bool = False,
    max_line_bytes: int = MAX_LINE_BYTES,
) -> tuple[DatasetDict, BehaviorVocab]:
    """MovieLens ratings as click samples: label = rating >= 4, category = a movie's first genre.

    One sample per rating with at least `min_history` earlier ratings of its user; ratings in the same
    second are ordered by movieId. Users are split into train and test with `seed`. Every behaviour is 1.
    """
    ratings_csv, movies_csv = Path(ratings_csv), Path(movies_csv)
    vocab = BehaviorVocab()

    def movies_layout(header: list[str]) -> _Layout:
        columns = _column_indices(header, MOVIELENS_MOVIES_COLUMNS)
        read = {columns["genres"]: _GENRES_COLUMN, columns["movieId"]: _integer_id_column("item", "movieId")}
        return _Layout(tuple(header), read)

    movies = _read_csv(movies_csv, vocab, skip_bad_lines, max_line_bytes=max_line_bytes, read_header=movies_layout)
    _number_items(vocab, movies["item"], movies["category"])
    listed = pa.array(list(vocab.items))  # as text, in the order of their ids, 1, 2, ...

    def listed_movie(text: str) -> tuple[int]:
        movie = _integer_id(text, "movieId")
        if movie not in vocab.items:
            raise ValueError(f"a movieId listed in {movies_csv.name}, found {_shorten(movie, 30)}")
        return (int(movie),)

    movie = _Column(
        ("item",), (pa.int64(),), f"(?P<item>{_INTEGER_ID})", listed_movie, lambda text: pc.is_in(text, listed)
    )

    def ratings_layout(header: list[str]) -> _Layout:
        columns = _column_indices(header, MOVIELENS_RATINGS_COLUMNS)
        read = {
            columns["movieId"]: movie,
            columns["userId"]: _integer_id_column("user", "userId"),
            columns["timestamp"]: _timestamp_column(),  # ratings.csv holds whole Unix seconds
            columns["rating"]: _RATING_COLUMN,
        }
        return _Layout(tuple(header), read)

    ratings = _read_csv(ratings_csv, vocab, skip_bad_lines, max_line_bytes=max_line_bytes, read_header=ratings_layout)
    _log_bad_lines(vocab, ratings_csv)
    item = pc.index_in(ratings["item"], value_set=listed.cast(pa.int64())).to_numpy() + 1
    log = _event_log(
        ratings_csv,
        ratings,
        tiebreak=ratings["item"].to_numpy(),  # the movieId
        item=item,
        category=np.asarray(vocab.item_categories)[item],
        behavior=np.ones(len(item), dtype=np.int8),
        label=(ratings["rating"].to_numpy() >= 4).astype(np.int8),
    )
    del ratings  # the parsed columns, before sorting the events

    samples = _event_samples(log, min_history=min_history, max_history=max_history)
    _require_samples(samples, log, ratings_csv, min_history, "rating")
    rng = np.random.default_rng(seed)
    return _split_by_user(samples, log.user_names, test_fraction, rng, ratings_csv), vocab


def load_taobao(
    path: str | os.PathLike,
    max_history: int = 200,
    min_history: int = 1,
    negative_ratio: float = 0.5,
    split_quantile: float = 0.7,
    seed: int = 0,
    skip_bad_lines: bool = False,
    max_line_bytes: int = MAX_LINE_BYTES,
) -> tuple[DatasetDict, BehaviorVocab]:
    """Taobao `UserBehavior.csv` (no header) as click samples, built the way MIMN does.

    One sample per user: the target is the user's last behaviour, swapped with probability
    `negative_ratio` for a random other item (label 0; otherwise label 1); the history is every earlier
    behaviour, truncated to the last `max_history`. Users whose last behaviour is at or before the
    `split_quantile` quantile of last-behaviour times are `train`, the later ones `test`.
    """
    if not (0.0 <= negative_ratio <= 1.0 and 0.0 <= split_quantile <= 1.0):
        raise ValueError(
            f"negative_ratio and split_quantile must be in [0, 1], got {negative_ratio}, {split_quantile}"
        )
    path = Path(path)
    vocab = BehaviorVocab()
    log, _ = _read_item_events(path, vocab, skip_bad_lines, max_line_bytes, layout=_TAOBAO_LAYOUT)

    rng = np.random.default_rng(seed)
    samples = _event_samples(log, min_history=min_history, max_history=max_history, last_only=True)
    _require_samples(samples, log, path, min_history, "behaviour")
    _replace_with_negatives(samples, rng.random(len(samples.user)) < negative_ratio, vocab, rng)
    # "lower" takes the time at or below the quantile, exactly (interpolating goes through float64); `>` splits
    # as it would at the interpolated quantile, since no time lies strictly between the two neighbours.
    is_test = samples.target_time > np.quantile(samples.target_time, split_quantile, method="lower")
    if not is_test.any():  # train always holds the user at the quantile itself
        raise EmptySplitError(
            path,
            f"the test split would be empty: no user's last behaviour is later than the split_quantile="
            f"{split_quantile} quantile of the last-behaviour times of {_plural(len(is_test), 'user')} with samples",
        )
    return samples.to_dataset_dict(log.user_names, is_test), vocab


def load_behavior_log(
    path: str | os.PathLike,
    max_history: int = 200,
    min_history: int = 1,
    test_fraction: float = 0.2,
    seed: int = 0,
    skip_bad_lines: bool = False,
    max_line_bytes: int = MAX_LINE_BYTES,
) -> tuple[DatasetDict, BehaviorVocab]:
    """A behaviour CSV with a header naming `user,item,category,timestamp` and optionally `label` (0/1)
    and `behavior` (pv/cart/fav/buy, default pv); ids are arbitrary strings, timestamps integers or decimals
    with at most 9 decimals (such as `1511544070.25`).

    One sample per event with at least `min_history` earlier events of its user; the history holds every
    earlier event, whatever its label. Without a `label` column
    every event is a click (label 1) and gets a twin sample with a random other item as target (label 0).
    Users are split into train and test with `seed`.
    """
    path = Path(path)
    vocab = BehaviorVocab()

    def layout(header: list[str]) -> _Layout:
        columns = _column_indices(header, BEHAVIOR_LOG_COLUMNS, optional=("label", "behavior"))
        read = {columns["label"]: _LABEL_COLUMN} if "label" in columns else {}
        read[columns["user"]] = _string_id_column("user", "user")
        read[columns["timestamp"]] = _timestamp_column(decimals=True)
        read[columns["item"]] = _string_id_column("item", "item")
        read[columns["category"]] = _string_id_column("category", "category")
        if "behavior" in columns:
            read[columns["behavior"]] = _BEHAVIOR_COLUMN
        return _Layout(tuple(header), read)

    log, columns = _read_item_events(path, vocab, skip_bad_lines, max_line_bytes, read_header=layout)
    has_label = "label" in columns

    rng = np.random.default_rng(seed)
    copies = 1 if has_label else 2
    samples = _event_samples(log, min_history=min_history, max_history=max_history, copies=copies)
    _require_samples(samples, log, path, min_history, "event")
    if not has_label:  # copies of one event are adjacent: every second sample becomes its negative twin
        _replace_with_negatives(samples, np.arange(len(samples.user)) % 2 == 1, vocab, rng)
    return _split_by_user(samples, log.user_names, test_fraction, rng, path), vocab


# ---------------------------------------------------------------------------------------------------------
# Synthetic long-history task


def generate_behavior_histories(
    num_users: int = 2000,
    history_length: int = 1000,
    num_items: int = 500,
    num_categories: int = 20,
    num_interests: int = 3,
    seed: int = 0,
    test_fraction: float = 0.2,
    early_noise: float = 0.0,
    interest_drift: float = 0.0,
) -> tuple[DatasetDict, BehaviorVocab]:
    """Click samples whose answer lies only in the first ~10% of a long history.

    Item `i` has category `(i - 1) % num_categories + 1`. Each user's categories are shuffled into
    `num_interests` interests, as many held-out categories, with `interest_drift > 0` as many drift categories,
    and the rest (noise). By default the first ~10% of the history (`early_length`, `max(num_interests,
    round(0.1 * history_length))` events) draws items from the interests only, the rest (`late_length` events)
    from noise categories only. Exactly half the users (label 1) get a target from an interest, the others
    (label 0) one from a held-out category, so the target's category never occurs late in the history either
    way: a model that forgets the start scores AUC ~0.5, one that remembers it ~1. Every behaviour is pv. Users
    are split by `test_fraction`.

    Two options make the task harder without moving the answer (at 0, their default, the data is exactly
    what it was before they existed, draw for draw):

    - `early_noise`: `round(early_noise * early_length)` of the early events (at most all but `num_interests`,
      which still show each interest once) come from the user's noise categories instead of the interests,
      at random positions of the early part.
    - `interest_drift`: `round(interest_drift * late_length)` of the late events come from the user's drift
      categories (uniformly among them, at random positions of the late part), the others from noise. Drift
      categories are new interests shown only late: they never occur early and never serve as targets, so
      the late history is structured but says nothing about the label; held-out categories still never occur
      anywhere in the history. Needs `num_categories > 3 * num_interests`, leaving at least one noise category.
    """
    drift_categories = num_interests if interest_drift > 0 else 0
    if not (1 <= num_interests and 2 * num_interests + drift_categories < num_categories <= num_items):
        raise ValueError(
            "need 1 <= num_interests, (3 with interest_drift, else 2) * num_interests < num_categories <= num_items"
        )
    if history_length <= num_interests:
        raise ValueError(f"history_length must exceed num_interests ({num_interests}), got {history_length}")
    if not (0.0 <= early_noise <= 1.0 and 0.0 <= interest_drift <= 1.0):
        raise ValueError(f"early_noise and interest_drift must be in [0, 1], got {early_noise}, {interest_drift}")
    rng = np.random.default_rng(seed)
    early_length = max(num_interests, round(0.1 * history_length))
    late_length = history_length - early_length
    early_noisy = min(round(early_noise * early_length), early_length - num_interests)
    late_drifted = round(interest_drift * late_length)
    items_per_category = num_items // num_categories  # every category has at least this many items

    categories = rng.permuted(np.tile(np.arange(1, num_categories + 1), (num_users, 1)), axis=1)
    interests = categories[:, :num_interests]
    held_out = categories[:, num_interests : 2 * num_interests]
    drift = categories[:, 2 * num_interests : 2 * num_interests + drift_categories]
    noise = categories[:, 2 * num_interests + drift_categories :]

    def draw(among: np.ndarray, count: int) -> np.ndarray:
        """`count` categories per user, each uniformly one of that user's `among`: (num_users, count)."""
        return np.take_along_axis(among, rng.integers(among.shape[1], size=(num_users, count)), axis=1)

    # The first num_interests early events show each interest once, so every interest really occurs. Draws
    # happen in this order whatever the options, and only when they draw anything, so option 0 changes nothing.
    early = [interests, draw(interests, early_length - num_interests - early_noisy)]
    if early_noisy:
        early.append(draw(noise, early_noisy))
    early = rng.permuted(np.concatenate(early, axis=1), axis=1)
    late = draw(noise, late_length - late_drifted)
    if late_drifted:
        late = rng.permuted(np.concatenate([late, draw(drift, late_drifted)], axis=1), axis=1)
    history_categories = np.concatenate([early, late], axis=1)

    label = rng.permutation(np.arange(num_users) % 2)
    pick = rng.integers(num_interests, size=num_users)
    target_category = np.where(label == 1, interests[np.arange(num_users), pick], held_out[np.arange(num_users), pick])

    def item_of(category: np.ndarray) -> np.ndarray:
        return category + num_categories * rng.integers(items_per_category, size=category.shape)

    vocab = BehaviorVocab(
        items={str(i): i for i in range(1, num_items + 1)},
        categories={str(c): c for c in range(1, num_categories + 1)},
        item_categories=[0] + [(i - 1) % num_categories + 1 for i in range(1, num_items + 1)],
    )
    samples = _Samples(
        user=np.arange(num_users),
        history_lengths=np.full(num_users, history_length),
        history_items=item_of(history_categories).ravel(),
        history_categories=history_categories.ravel(),
        history_behaviors=np.full(num_users * history_length, BEHAVIOR_TYPES["pv"]),
        target_item=item_of(target_category),
        target_category=target_category,
        target_time=np.zeros(num_users, dtype=np.int64),  # synthetic histories have no clock
        label=label,
    )
    is_test = _test_users(num_users, test_fraction, rng)
    return samples.to_dataset_dict([f"user{u}" for u in range(num_users)], is_test), vocab


# ---------------------------------------------------------------------------------------------------------
# Batching


@dataclass
class ClickCollator:
    """Pad click samples into a batch of tensors.

    Histories are padded on the right with 0 to the longest in the batch (rounded up to
    `pad_to_multiple_of`); `history_prefix` first keeps only each history's first events (the early stages of
    a `HistoryPrefixCurriculum`), then `max_history` only its most recent ones.
    """

    max_history: int | None = None
    pad_to_multiple_of: int | None = None
    history_prefix: int | None = None

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        columns = ("history_items", "history_categories", "history_behaviors")
        histories = {column: [list(f[column])[: self.history_prefix] for f in features] for column in columns}
        if self.max_history:
            histories = {column: [h[-self.max_history :] for h in values] for column, values in histories.items()}
        lengths = [len(h) for h in histories["history_items"]]
        width = max(lengths, default=0)
        if self.pad_to_multiple_of:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
        batch = {
            column: torch.tensor([h + [0] * (width - len(h)) for h in values], dtype=torch.long)
            for column, values in histories.items()
        }
        batch["attention_mask"] = (torch.arange(width) < torch.tensor(lengths).unsqueeze(1)).long()
        batch["target_item"] = torch.tensor([int(f["target_item"]) for f in features], dtype=torch.long)
        batch["target_category"] = torch.tensor([int(f["target_category"]) for f in features], dtype=torch.long)
        batch["labels"] = torch.tensor([float(f["label"]) for f in features], dtype=torch.float)
        return batch


def parse_history_curriculum(text: str) -> list[tuple[int, float]]:
    """ "EVENTS:SHARE,..." -> [(events, share)]: up to `share` of training (cumulative, increasing, below 1), each
    history is read only up to its first `events` events; after the last stage, whole."""
    try:
        stages = [(int(events), float(share)) for events, share in (stage.split(":") for stage in text.split(","))]
    except ValueError:
        raise ValueError(f"a history curriculum is EVENTS:SHARE,... (e.g. 1000:0.4), got {text!r}") from None
    shares = [share for _, share in stages]
    if any(events < 1 for events, _ in stages) or shares != sorted(set(shares)) or not 0 < shares[0] <= shares[-1] < 1:
        raise ValueError(f"history curriculum {text!r}: events must be >= 1 and shares increasing in (0, 1)")
    return stages


class HistoryPrefixCurriculum(TrainerCallback):
    """A length curriculum for click training on long histories: for the first shares of training the collator
    reads only each history's first events, then whole histories. On the synthetic task, whose answer lies in the
    first 10% of a history, a prefix keeps the answer and costs a fraction of the whole: Rehearsal Memory learns
    what to store on prefixes, then to keep it through the rest (bench/results/ctr_equal_cpu.json). On real logs a
    prefix is an older view of the user than the label's: use it knowingly.

    Evaluation reads whole histories: the prefix is lifted before an evaluation and restored after it.
    `progress(state)` is the share of training done (default: optimizer steps over `max_steps`).
    """

    def __init__(self, collator: ClickCollator, stages: list[tuple[int, float]], progress=None):
        self.collator, self.stages = collator, stages
        self.progress = progress or (lambda state: state.global_step / max(state.max_steps, 1))

    def prefix(self, state) -> int | None:
        done = self.progress(state)
        return next((events for events, share in self.stages if done < share), None)

    def on_train_begin(self, args, state, control, **kwargs):
        self.collator.history_prefix = self.prefix(state)

    def on_step_end(self, args, state, control, **kwargs):
        # an evaluation right after this step (the flow callback, earlier in the list, has decided) reads whole
        self.collator.history_prefix = None if control.should_evaluate else self.prefix(state)

    def on_evaluate(self, args, state, control, **kwargs):
        self.collator.history_prefix = self.prefix(state)

    def on_train_end(self, args, state, control, **kwargs):
        self.collator.history_prefix = None
