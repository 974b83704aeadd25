"""Reader for the bAbI QA tasks (Weston et al., 2015, arXiv:1502.05698): one dataset row per question.

A bAbI file is a sequence of stories. Every line starts with an id; id 1 starts a new story. A story sentence
is `<id> <text>`, a question is `<id> <question>\t<answer>\t<supporting ids>`, where the supporting ids are
the ids of earlier story sentences (ids count question lines too).
"""

import bz2
import gzip
import io
import logging
import lzma
import re
import tarfile
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import BinaryIO, Literal, overload

import pyarrow as pa
from datasets import Dataset, Features, List, Value

from .file_utils import MAX_LINE_BYTES, capped_lines

logger = logging.getLogger(__name__)

QA_FEATURES = Features(
    {
        "story": List(Value("string")),
        "story_line_ids": List(Value("int32")),
        "question": Value("string"),
        "answer": Value("string"),
        "supporting_ids": List(Value("int32")),
        "supporting_positions": List(Value("int32")),
        "task_id": Value("int32"),
        "story_id": Value("int64"),
        "question_type": Value("string"),
    }
)

# Default cap on an archive member read into memory, far above the real data (files of at most 2.5 MB), so that a
# damaged or foreign archive fails fast instead of filling memory; lines are capped by `MAX_LINE_BYTES`.
MAX_MEMBER_BYTES = 256 << 20

# Compressed archives by their first bytes. Read to the end, these readers check each stream's trailer (gzip's CRC32
# and length, bzip2's CRCs, xz's check); tarfile alone stops at the tar end-of-archive marker, before the trailer.
_DECOMPRESSORS = {b"\x1f\x8b": gzip.open, b"BZh": bz2.open, b"\xfd7zXZ\x00": lzma.open}

# What a damaged archive raises while it is decompressed and read. OSError covers gzip.BadGzipFile and bzip2's
# bare "Invalid data stream"; the archive is opened outside the `try` that catches them, so an unreadable path
# is not taken for a damaged archive.
_ARCHIVE_ERRORS = (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError)

# Bytes per read of a tar stream; also what tarfile holds at a time while it skips the members not asked for.
_READ_SIZE = 1 << 16

_BOM = b"\xef\xbb\xbf"
# Control characters (Unicode category Cc) other than the tab that separates a question's fields.
_CONTROL_RE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")

# Room for a million stories per task keeps story ids unique across the tasks of one dataset.
STORY_ID_STRIDE = 1_000_000

# Without re.ASCII, `\d` would accept other scripts' digits, which int() converts silently.
_ID_RE = re.compile(r"[1-9]\d*", re.ASCII)
_LINE_RE = re.compile(rf"({_ID_RE.pattern}) (.*)", re.ASCII | re.DOTALL)


class BabiFormatError(ValueError):
    """A line of a bAbI file that does not follow the format; names the file, the line and what was expected."""

    def __init__(self, source: str, line_number: int, line: str, expected: str):
        self.source = source
        self.line_number = line_number
        self.line = line
        self.expected = expected
        # Cut rather than textwrap.shorten, which would turn the tabs that matter here into spaces.
        shown = line if len(line) <= 80 else line[:77] + "..."
        super().__init__(f"{source}, line {line_number}: expected {expected}, got {shown!r}")


@dataclass
class _Story:
    """The sentences read so far of the story being parsed."""

    story_id: int
    last_line_id: int = 0
    sentences: list[str] = field(default_factory=list)
    line_ids: list[int] = field(default_factory=list)
    # original line id -> index in `sentences`; question lines are absent, so they cannot be supporting facts
    positions: dict[int, int] = field(default_factory=dict)


def _parse_line(
    source: str, number: int, raw: bytes, story: _Story | None
) -> tuple[int, str, tuple[str, str, list[int]] | None]:
    """Validate one non-blank line against the current story.

    Returns (line id, sentence, None) for a story sentence and (line id, "", (question, answer, supporting ids))
    for a question.
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BabiFormatError(source, number, raw.decode("utf-8", errors="replace"), "UTF-8 text") from None
    if _CONTROL_RE.search(text.removesuffix("\r")):  # the CR of a CR-LF line ending is fine
        raise BabiFormatError(source, number, text, "text without control characters")
    line = text.rstrip()
    match = _LINE_RE.fullmatch(line)
    if match is None:
        raise BabiFormatError(source, number, line, "'<positive integer id> <text>'")
    line_id, text = int(match[1]), match[2]
    if line_id != 1:
        if story is None:
            raise BabiFormatError(source, number, line, "id 1 to start a story")
        if line_id != story.last_line_id + 1:
            raise BabiFormatError(source, number, line, f"id {story.last_line_id + 1} or 1 (a new story)")
    if "\t" not in text:
        sentence = text.strip()
        # Story sentences never end with '?': this is a question that lost its answer and supporting ids.
        if not sentence or sentence.endswith("?"):
            raise BabiFormatError(source, number, line, "a sentence, or 'question<TAB>answer<TAB>supporting ids'")
        return line_id, sentence, None

    parts = text.split("\t")
    question, answer, supporting = (part.strip() for part in parts) if len(parts) == 3 else ("", "", "")
    if not (question and answer and supporting):
        raise BabiFormatError(source, number, line, "'question<TAB>answer<TAB>supporting ids', none empty")
    # A question that starts a story has no sentences to refer to; the check below reports it.
    positions = story.positions if story is not None and line_id != 1 else {}
    supporting_ids = []
    for token in supporting.split():
        if _ID_RE.fullmatch(token) is None or int(token) not in positions:
            raise BabiFormatError(source, number, line, "supporting ids of earlier sentences of the same story")
        supporting_ids.append(int(token))
    return line_id, "", (question, answer, supporting_ids)


def _read_task_file(
    source: str, f: BinaryIO, task_id: int, skip_bad_lines: bool, max_line_bytes: int, columns: dict[str, list]
) -> int:
    """Append one row per question of a task file to `columns`; returns the number of skipped lines.

    With `skip_bad_lines`, a malformed line and the rest of its story (up to the next line with id 1) are
    skipped: the ids of the following lines can no longer be trusted to point at the right sentences.
    A line longer than `max_line_bytes` is never skipped: it is a cap to raise, not a format error.
    """
    story: _Story | None = None
    story_count = 0
    skipped = malformed = 0
    skipping = False
    any_line = False
    for number, raw in capped_lines(f, max_line_bytes, partial(BabiFormatError, source)):
        raw = raw.removesuffix(b"\n")
        if number == 1:
            raw = raw.removeprefix(_BOM)  # editors on Windows start UTF-8 files with one
        if not raw.strip():
            continue
        any_line = True
        if skipping and not raw.startswith(b"1 "):
            skipped += 1
            continue
        skipping = False
        try:
            line_id, sentence, question = _parse_line(source, number, raw, story)
        except BabiFormatError:
            if not skip_bad_lines:
                raise
            skipped += 1
            malformed += 1
            skipping = True
            story = None
            continue
        if line_id == 1:
            story = _Story(story_id=task_id * STORY_ID_STRIDE + story_count)
            story_count += 1
        story.last_line_id = line_id
        if question is None:
            story.positions[line_id] = len(story.sentences)
            story.sentences.append(sentence)
            story.line_ids.append(line_id)
            continue
        text, answer, supporting_ids = question
        row = {
            "story": list(story.sentences),
            "story_line_ids": list(story.line_ids),
            "question": text,
            "answer": answer,
            "supporting_ids": supporting_ids,
            "supporting_positions": [story.positions[i] for i in supporting_ids],
            "task_id": task_id,
            "story_id": story.story_id,
            "question_type": f"qa{task_id}",
        }
        for name, value in row.items():
            columns[name].append(value)
    if not any_line:
        raise BabiFormatError(source, 1, "", "a non-empty file")
    if skipped:
        logger.warning("Skipped %d lines of %s (%d malformed, the rest in their stories).", skipped, source, malformed)
    return skipped


def dataset_from_columns(columns: Mapping[str, list], features: Features) -> Dataset:
    """A `Dataset` from column lists, typed by `features`.

    Converting to pyarrow arrays first skips `datasets`' per-value Python encoding, which is several times slower
    on list columns such as stories.
    """
    schema = features.arrow_schema
    arrays = {name: pa.array(columns[name], type=schema.field(name).type) for name in features}
    return Dataset.from_dict(arrays, features=features)


def _task_pattern(task_id: int, split: str) -> re.Pattern[str]:
    # `qa1_` must not match `qa10_...`, hence the underscore right after the number.
    return re.compile(rf"qa{task_id}_[^/]*_{re.escape(split)}\.txt")


def _find_in_folder(folder: Path, task_id: int, split: str, subset: str) -> Path:
    directory = folder / subset if (folder / subset).is_dir() else folder
    pattern = _task_pattern(task_id, split)
    matches = sorted(p for p in directory.iterdir() if pattern.fullmatch(p.name))
    if not matches:
        raise FileNotFoundError(f"No bAbI file qa{task_id}_*_{split}.txt in {directory}")
    return matches[0]


def _decompressed(raw: BinaryIO) -> BinaryIO:
    """The tar stream in `raw`: decompressed by the format its first bytes announce, else `raw` itself."""
    magic = raw.read(6)
    raw.seek(0)
    for prefix, open_stream in _DECOMPRESSORS.items():
        if magic.startswith(prefix):
            return open_stream(raw)
    return raw


def _read_to_end(archive: tarfile.TarFile) -> None:
    """Read a tar stream ("r|" mode) to its end after its last member, so that the decompressor checks its trailer.

    Only zero blocks may follow the last member: a partial block means a truncated archive, and data means a
    member header so damaged that tarfile took it for the end of the archive.
    """
    stream = archive.fileobj  # just after the block that ended tarfile's iteration
    if stream.tell() != archive.offset + tarfile.BLOCKSIZE:
        raise tarfile.ReadError("no end-of-archive marker (truncated?)")
    while chunk := stream.read(_READ_SIZE):
        if chunk.strip(b"\0"):
            raise tarfile.ReadError("data after the end-of-archive marker (a damaged member header?)")


def _read_from_archive(
    path: Path, task_ids: list[int], split: str, subset: str, max_member_bytes: int
) -> list[tuple[str, bytes]]:
    """`(source, data)` of each task's file in a tar archive, read in one pass that also verifies the whole archive.

    Nothing comes out of a damaged archive, even where the damage lies outside the files asked for, so a corrupt
    download passes neither as data nor as a missing task. The files wait in memory until the archive is verified;
    `max_member_bytes` bounds that, checked on a member's header before its data is read.
    """
    patterns = {
        task_id: re.compile(rf"(?:.*/)?{re.escape(subset)}/{_task_pattern(task_id, split).pattern}")
        for task_id in task_ids
    }
    members: dict[int, tarfile.TarInfo] = {}
    data: dict[int, bytes] = {}
    with open(path, "rb") as raw:
        try:
            with _decompressed(raw) as stream, tarfile.open(fileobj=stream, mode="r|", bufsize=_READ_SIZE) as archive:
                for member in archive:
                    for task_id, pattern in patterns.items():
                        if task_id not in members and member.isfile() and pattern.fullmatch(member.name):
                            members[task_id] = member
                            if member.size <= max_member_bytes:
                                data[task_id] = archive.extractfile(member).read()
                _read_to_end(archive)
        except _ARCHIVE_ERRORS as error:
            # The decompressors' errors (EOFError, "CRC check failed", ...) name neither the file nor the cause.
            raise tarfile.ReadError(f"{path}: not a readable tar archive (truncated or corrupt?): {error}") from error
    for task_id in task_ids:
        if task_id not in members:
            raise FileNotFoundError(f"No member {subset}/qa{task_id}_*_{split}.txt in {path}")
        if task_id not in data:
            raise ValueError(
                f"{path}:{members[task_id].name} is {members[task_id].size} bytes, over the {max_member_bytes}-byte "
                "cap (raise max_member_bytes / --max_member_bytes if the file is genuine)"
            )
    return [(f"{path}:{members[task_id].name}", data[task_id]) for task_id in task_ids]


@overload
def load_babi(
    path: str | Path,
    tasks: Iterable[int] = ...,
    split: str = ...,
    subset: str = ...,
    skip_bad_lines: bool = ...,
    return_skipped_line_count: Literal[False] = ...,
    *,
    max_line_bytes: int = ...,
    max_member_bytes: int = ...,
) -> Dataset: ...
@overload
def load_babi(
    path: str | Path,
    tasks: Iterable[int] = ...,
    split: str = ...,
    subset: str = ...,
    skip_bad_lines: bool = ...,
    *,
    return_skipped_line_count: Literal[True],
    max_line_bytes: int = ...,
    max_member_bytes: int = ...,
) -> tuple[Dataset, int]: ...
def load_babi(
    path: str | Path,
    tasks: Iterable[int] = (1,),
    split: str = "train",
    subset: str = "en-10k",
    skip_bad_lines: bool = False,
    return_skipped_line_count: bool = False,
    *,
    max_line_bytes: int = MAX_LINE_BYTES,
    max_member_bytes: int = MAX_MEMBER_BYTES,
) -> Dataset | tuple[Dataset, int]:
    """Load bAbI QA tasks as a `datasets.Dataset` with one row per question (columns: `QA_FEATURES`).

    Args:
        path: a folder holding `en/`, `en-10k/`, ... subfolders or directly the `qaN_*_{split}.txt` files,
            or the released `tasks_1-20_v1-2.tar.gz` archive (read in place, nothing is extracted; also .tar,
            .tar.bz2 and .tar.xz). The whole archive is read and its checksums verified on every call.
        tasks: task numbers in 1..20.
        split: "train" or "test" (any `qaN_*_{split}.txt` suffix works).
        subset: the subfolder to read, e.g. "en" (1k) or "en-10k"; ignored for a folder that holds the files.
        skip_bad_lines: skip malformed lines, and the rest of their story, instead of raising `BabiFormatError`;
            the number of skipped lines is logged as a warning.
        return_skipped_line_count: also return that number, as `(dataset, skipped_line_count)`.
        max_line_bytes: longest line accepted, in bytes.
        max_member_bytes: largest task file accepted in an archive, in bytes (it is held in memory).

    Raises:
        FileNotFoundError: a task file is missing (from an intact archive).
        tarfile.ReadError: `path` is a file but not a readable tar archive: truncated, corrupt (a checksum
            fails) or not an archive.
        BabiFormatError: a malformed line (unless `skip_bad_lines`), a line over `max_line_bytes`, or an empty file.
        ValueError: an archive member over `max_member_bytes`.
    """
    task_ids = list(dict.fromkeys(tasks))  # a repeated task would repeat its story ids
    for task_id in task_ids:
        if isinstance(task_id, bool) or not isinstance(task_id, int) or not 1 <= task_id <= 20:
            raise ValueError(f"bAbI tasks are integers 1..20, got {task_id!r}")
    if max_line_bytes < 1 or max_member_bytes < 1:
        raise ValueError(f"size caps must be positive, got {max_line_bytes=} and {max_member_bytes=}")
    path = Path(path)
    files: list[tuple[str, Callable[[], BinaryIO]]]
    if path.is_dir():
        found = [_find_in_folder(path, task_id, split, subset) for task_id in task_ids]
        files = [(str(file), partial(open, file, "rb")) for file in found]
    elif path.is_file():
        members = _read_from_archive(path, task_ids, split, subset, max_member_bytes)
        files = [(source, partial(io.BytesIO, data)) for source, data in members]
    else:
        raise FileNotFoundError(f"No bAbI folder or archive at {path}")

    columns: dict[str, list] = {name: [] for name in QA_FEATURES}
    skipped = 0
    for task_id, (source, open_file) in zip(task_ids, files, strict=True):
        with open_file() as f:
            skipped += _read_task_file(source, f, task_id, skip_bad_lines, max_line_bytes, columns)
    dataset = dataset_from_columns(columns, QA_FEATURES)
    return (dataset, skipped) if return_skipped_line_count else dataset


def answer_vocabulary(data: Dataset | Mapping[str, Dataset] | Iterable[Dataset]) -> list[str]:
    """The sorted distinct answers of one dataset, of a `DatasetDict`, or of several datasets."""
    if isinstance(data, Dataset):
        data = [data]
    elif isinstance(data, Mapping):
        data = data.values()
    return sorted(set().union(*(dataset.unique("answer") for dataset in data)))
