"""Reader for the bAbI QA tasks (Weston et al., 2015, arXiv:1502.05698): one dataset row per question.

A bAbI file is a sequence of stories. Every line starts with an id; id 1 starts a new story. A story sentence
is `<id> <text>`, a question is `<id> <question>\t<answer>\t<supporting ids>`, where the supporting ids are
the ids of earlier story sentences (ids count question lines too).
"""

import gzip
import logging
import lzma
import re
import tarfile
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, overload

import pyarrow as pa
from datasets import Dataset, Features, List, Value

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

# What a damaged archive raises while it is decompressed and read (BadGzipFile is an OSError, caught by name
# so that a missing task file, also an OSError, is not taken for a damaged archive).
_ARCHIVE_ERRORS = (tarfile.TarError, EOFError, gzip.BadGzipFile, zlib.error, lzma.LZMAError)

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
        line = raw.decode("utf-8").rstrip()
    except UnicodeDecodeError:
        raise BabiFormatError(source, number, raw.decode("utf-8", errors="replace"), "UTF-8 text") from None
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


def _read_task_file(source: str, data: bytes, task_id: int, skip_bad_lines: bool, columns: dict[str, list]) -> int:
    """Append one row per question of a task file to `columns`; returns the number of skipped lines.

    With `skip_bad_lines`, a malformed line and the rest of its story (up to the next line with id 1) are
    skipped: the ids of the following lines can no longer be trusted to point at the right sentences.
    """
    story: _Story | None = None
    story_count = 0
    skipped = malformed = 0
    skipping = False
    any_line = False
    for number, raw in enumerate(data.split(b"\n"), start=1):
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


def _read_from_folder(folder: Path, task_id: int, split: str, subset: str) -> tuple[str, bytes]:
    directory = folder / subset if (folder / subset).is_dir() else folder
    pattern = _task_pattern(task_id, split)
    matches = sorted(p for p in directory.iterdir() if pattern.fullmatch(p.name))
    if not matches:
        raise FileNotFoundError(f"No bAbI file qa{task_id}_*_{split}.txt in {directory}")
    return str(matches[0]), matches[0].read_bytes()


def _read_from_archive(
    archive: tarfile.TarFile, path: Path, task_id: int, split: str, subset: str
) -> tuple[str, bytes]:
    pattern = re.compile(rf"(?:.*/)?{re.escape(subset)}/{_task_pattern(task_id, split).pattern}")
    for member in archive.getmembers():
        if member.isfile() and pattern.fullmatch(member.name):
            return f"{path}:{member.name}", archive.extractfile(member).read()
    raise FileNotFoundError(f"No member {subset}/qa{task_id}_*_{split}.txt in {path}")


@overload
def load_babi(
    path: str | Path,
    tasks: Iterable[int] = ...,
    split: str = ...,
    subset: str = ...,
    skip_bad_lines: bool = ...,
    return_skipped_line_count: Literal[False] = ...,
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
) -> tuple[Dataset, int]: ...
def load_babi(
    path: str | Path,
    tasks: Iterable[int] = (1,),
    split: str = "train",
    subset: str = "en-10k",
    skip_bad_lines: bool = False,
    return_skipped_line_count: bool = False,
) -> Dataset | tuple[Dataset, int]:
    """Load bAbI QA tasks as a `datasets.Dataset` with one row per question (columns: `QA_FEATURES`).

    Args:
        path: a folder holding `en/`, `en-10k/`, ... subfolders or directly the `qaN_*_{split}.txt` files,
            or the released `tasks_1-20_v1-2.tar.gz` archive (read in place, nothing is extracted).
        tasks: task numbers in 1..20.
        split: "train" or "test" (any `qaN_*_{split}.txt` suffix works).
        subset: the subfolder to read, e.g. "en" (1k) or "en-10k"; ignored for a folder that holds the files.
        skip_bad_lines: skip malformed lines, and the rest of their story, instead of raising `BabiFormatError`;
            the number of skipped lines is logged as a warning.
        return_skipped_line_count: also return that number, as `(dataset, skipped_line_count)`.

    Raises:
        FileNotFoundError: a task file is missing.
        tarfile.ReadError: `path` is a file but not a readable tar archive (for example a truncated download).
        BabiFormatError: a malformed line (unless `skip_bad_lines`), or an empty file.
    """
    task_ids = list(dict.fromkeys(tasks))  # a repeated task would repeat its story ids
    for task_id in task_ids:
        if isinstance(task_id, bool) or not isinstance(task_id, int) or not 1 <= task_id <= 20:
            raise ValueError(f"bAbI tasks are integers 1..20, got {task_id!r}")
    path = Path(path)
    if path.is_dir():
        files = [_read_from_folder(path, task_id, split, subset) for task_id in task_ids]
    elif path.is_file():
        try:
            with tarfile.open(path, "r:*") as archive:
                files = [_read_from_archive(archive, path, task_id, split, subset) for task_id in task_ids]
        except _ARCHIVE_ERRORS as error:
            # A cut download fails inside the decompressor (EOFError, ...), which names neither the file nor the cause.
            raise tarfile.ReadError(f"{path}: not a readable tar archive (truncated or corrupt?): {error}") from error
    else:
        raise FileNotFoundError(f"No bAbI folder or archive at {path}")

    columns: dict[str, list] = {name: [] for name in QA_FEATURES}
    skipped = sum(
        _read_task_file(source, data, task_id, skip_bad_lines, columns)
        for task_id, (source, data) in zip(task_ids, files, strict=True)
    )
    dataset = dataset_from_columns(columns, QA_FEATURES)
    return (dataset, skipped) if return_skipped_line_count else dataset


def answer_vocabulary(data: Dataset | Mapping[str, Dataset] | Iterable[Dataset]) -> list[str]:
    """The sorted distinct answers of one dataset, of a `DatasetDict`, or of several datasets."""
    if isinstance(data, Dataset):
        data = [data]
    elif isinstance(data, Mapping):
        data = data.values()
    return sorted(set().union(*(dataset.unique("answer") for dataset in data)))
