"""BABILong-style long-context questions (Kuratov et al., 2024, arXiv 2406.10149): bAbI facts hidden in book text.

A sample is one bAbI question. Its story sentences (those before the question, in order) are inserted at random
sentence boundaries of a run of consecutive background sentences taken from books, so that the story reaches a
target length in tokens; the question and answer are bAbI's. The rows have the columns of `rm_hf.babi.load_babi`
(`QA_FEATURES`; `supporting_positions` point at the facts' new places) plus `length_tokens` and `target_length`.

    books = split_books(load_books("path/to/books"))               # {"train": [...], "test": [...]}
    entities = task_entities(train_rows, test_rows)                # words no background sentence may contain
    background = BackgroundText(books["test"], entities)
    samples = generate_babilong(test_rows, background, target_length=16_000, num_samples=100, seed=0)

Tokens. Lengths count the pieces of the word-level tokenizer of `rm_hf.tokenization.build_word_tokenizer`: its
pre-tokenizer splits on whitespace and isolates every punctuation character ("Mary's book." -> Mary ' s book .),
and the tokenizer gives exactly one id per piece. Lengths therefore do not depend on a trained vocabulary, and do
not include the [SEP] that `encode_story` adds after each sentence. BABILong counts GPT-2 BPE tokens instead; how
many GPT-2 tokens one of ours makes on this text was not measured (no GPT-2 tokenizer offline).

Length. `length_tokens` is the exact count of the sample's story. For a target T > 0, whole background sentences
are added while the total stays <= T, so T - `length_tokens` is smaller than the next background sentence
(BABILong instead cuts the last sentence to land on T). T = 0 means the bAbI story alone. When the facts alone
exceed T, the sample keeps the facts only and records its real length (then `length_tokens` > T; a warning
says how many); BABILong instead leaves out questions with more than T // 8 facts.

Background. A book is stripped of Project Gutenberg's header and footer (outside the "*** START OF" and
"*** END OF" lines, when present), split into paragraphs at blank lines, its whitespace (and any control
character) collapsed to single spaces, and each paragraph split after ".", "!" or "?" followed by whitespace
(`split_sentences`). Sentences of fewer than `min_tokens` (default 5) tokens (speaker names, "Exit.", headings) and
questions (a line ending with "?" reads as a question in bAbI files, and would compete with the real one) are
dropped. The books of a split are read as one text, book after book; a sample's background starts at a random
sentence and wraps around at the end. Sentences naming any entity of the task are left out (`task_entities`).

Determinism. The same inputs and seed give the same samples. The questions drawn depend on the seed only, not on
the target length, so row i of every length of a split asks the same bAbI question.
"""

import hashlib
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
from datasets import Dataset, Value, concatenate_datasets, load_from_disk

from .babi import QA_FEATURES, dataset_from_columns
from .pipeline_rehearsal_memory import split_sentences
from .tokenization import build_word_tokenizer

logger = logging.getLogger(__name__)

BABILONG_FEATURES = QA_FEATURES.copy()
BABILONG_FEATURES["length_tokens"] = Value("int64")
BABILONG_FEATURES["target_length"] = Value("int64")

# BABILong's lengths (decimal: 1k = 1000 tokens).
BABILONG_LENGTHS = (0, 1_000, 2_000, 4_000, 8_000, 16_000, 32_000, 64_000, 128_000, 256_000, 512_000, 1_000_000)

MIN_SENTENCE_TOKENS = 5

# The words of bAbI's 20 tasks that name nothing a story is about: function words, verbs, question words, spatial
# relations, and the closed answer sets (yes/no/maybe, counts, compass directions and their letters). Every other
# word of a task counts as an entity: people, places and objects, and also colours, animal kinds, times of day and
# motivations; a word missing here errs on the safe side (more background sentences are left out, none leaks).
BABI_GRAMMAR_WORDS = frozenset({
    "a", "above", "afraid", "after", "afterwards", "and", "are", "back", "before", "below", "bigger", "carrying",
    "color", "did", "discarded", "do", "does", "down", "dropped", "either", "fit", "fits", "following", "from",
    "gave", "get", "give", "go", "got", "grabbed", "handed", "he", "how", "in", "inside", "is", "journeyed",
    "left", "longer", "many", "moved", "no", "none", "not", "nothing", "objects", "of", "or", "passed", "picked",
    "put", "received", "right", "she", "than", "that", "the", "then", "there", "they", "this", "to", "took",
    "travelled", "up", "was", "went", "what", "where", "who", "why", "will", "yes", "you", "maybe", "one", "two",
    "three", "north", "south", "east", "west", "n", "s", "e", "w",
})  # fmt: skip

_WORD = re.compile(r"[^\W_]+")  # a run of letters and digits
_GUTENBERG_START = re.compile(r"^\*\*\*\s*START OF.*$", re.MULTILINE)
_GUTENBERG_END = re.compile(r"^\*\*\*\s*END OF", re.MULTILINE)
_PARAGRAPH_BREAK = re.compile(r"\n[^\S\n]*\n")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


# ---------------------------------------------------------------------------------------------------------
# Tokens and lengths


@cache
def _pre_tokenizer():
    # The word-level tokenizer's own splitting rule: one piece per id it gives, whatever its vocabulary.
    return build_word_tokenizer([]).backend_tokenizer.pre_tokenizer


def count_tokens(text: str) -> int:
    """Words and punctuation characters of `text`: the number of ids `build_word_tokenizer`'s tokenizers give."""
    return len(_pre_tokenizer().pre_tokenize_str(text))


def length_name(tokens: int) -> str:
    """BABILong's name of a length: 0 -> "0k", 16_000 -> "16k", 1_000_000 -> "1M" (other values as digits)."""
    if tokens % 1_000_000 == 0 and tokens:
        return f"{tokens // 1_000_000}M"
    if tokens % 1_000 == 0:
        return f"{tokens // 1_000}k"
    return str(tokens)


def parse_length(text: str) -> int:
    """The inverse of `length_name`: "16k" -> 16_000, "1M" -> 1_000_000, "1500" -> 1500."""
    match = re.fullmatch(r"(\d+)([kKmM]?)", text.strip())
    if match is None:
        raise ValueError(f"A length is a number of tokens, optionally with k (1000) or M (1000000), got {text!r}")
    scale = {"": 1, "k": 1_000, "m": 1_000_000}[match[2].lower()]
    return int(match[1]) * scale


# ---------------------------------------------------------------------------------------------------------
# Books


@dataclass(frozen=True)
class Book:
    """A book's sentences, in order, with their token counts."""

    name: str
    sentences: list[str]
    token_counts: np.ndarray  # (num_sentences,) int64


def strip_gutenberg_boilerplate(text: str) -> str:
    """The text between Project Gutenberg's "*** START OF" and "*** END OF" lines; each is optional."""
    if start := _GUTENBERG_START.search(text):
        text = text[start.end() :]
    if end := _GUTENBERG_END.search(text):
        text = text[: end.start()]
    return text


def book_sentences(text: str, min_tokens: int = MIN_SENTENCE_TOKENS) -> list[str]:
    """The background sentences of a book's text (the rule is in the module docstring)."""
    text = strip_gutenberg_boilerplate(text.replace("\r\n", "\n").replace("\r", "\n"))
    sentences = []
    for paragraph in _PARAGRAPH_BREAK.split(text):
        paragraph = " ".join(_CONTROL.sub(" ", paragraph).split())
        sentences += [s for s in split_sentences(paragraph) if not s.endswith("?") and count_tokens(s) >= min_tokens]
    return sentences


def make_book(name: str, text: str, min_tokens: int = MIN_SENTENCE_TOKENS) -> Book:
    sentences = book_sentences(text, min_tokens)
    return Book(name, sentences, np.array([count_tokens(s) for s in sentences], dtype=np.int64))


def load_books(books_dir: str | Path, min_tokens: int = MIN_SENTENCE_TOKENS) -> list[Book]:
    """Every `*.txt` file under `books_dir` (searched recursively; UTF-8), named by its path relative to it.

    Files without a single usable sentence are skipped with a warning.
    """
    books_dir = Path(books_dir)
    if not books_dir.is_dir():
        raise FileNotFoundError(f"No books folder at {books_dir}")
    paths = sorted(books_dir.rglob("*.txt"))
    if not paths:
        raise FileNotFoundError(f"No *.txt books in {books_dir}")
    books = []
    for path in paths:
        try:
            text = path.read_text(encoding="utf-8-sig")
        except UnicodeDecodeError as error:
            raise ValueError(f"{path}: not UTF-8 text ({error})") from None
        book = make_book(path.relative_to(books_dir).as_posix(), text, min_tokens)
        if book.sentences:
            books.append(book)
        else:
            logger.warning("Skipped %s: no sentence of %d tokens or more.", path, min_tokens)
    if not books:
        raise ValueError(f"No book in {books_dir} has a sentence of {min_tokens} tokens or more")
    return books


def split_books(books: Sequence[Book], test_fraction: float = 0.5) -> dict[str, list[Book]]:
    """Books for training and for testing, never the same: ordered by the SHA-256 of their names, the first
    `round(test_fraction * len(books))` (at least one) are "test", the rest "train" (both in that order)."""
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be between 0 and 1, got {test_fraction}")
    names = [book.name for book in books]
    if len(set(names)) != len(names):
        raise ValueError("Book names must be unique")
    if len(books) < 2:
        raise ValueError(f"Train and test need different books: at least 2 are needed, got {len(books)}")
    ordered = sorted(books, key=lambda book: hashlib.sha256(book.name.encode()).hexdigest())
    num_test = min(max(1, round(test_fraction * len(books))), len(books) - 1)
    return {"train": ordered[num_test:], "test": ordered[:num_test]}


# ---------------------------------------------------------------------------------------------------------
# Entities and background text


def task_entities(*datasets: Dataset) -> frozenset[str]:
    """The lowercased words of the rows' stories, questions and answers that are not in `BABI_GRAMMAR_WORDS`."""
    words = set()
    for dataset in datasets:
        texts = [*(s for story in dataset["story"] for s in story), *dataset["question"], *dataset["answer"]]
        words.update(word.lower() for text in texts for word in _WORD.findall(text))
    return frozenset(words - BABI_GRAMMAR_WORDS)


def entity_pattern(entities: Iterable[str]) -> re.Pattern[str] | None:
    """A case-insensitive search for any of `entities` as a whole word (not inside a run of letters and digits)."""
    entities = sorted(set(entities))
    if not entities:
        return None
    alternatives = "|".join(re.escape(entity) for entity in entities)
    return re.compile(rf"(?<![^\W_])(?:{alternatives})(?![^\W_])", re.IGNORECASE)


class BackgroundText:
    """The sentences of `books`, book after book, without those that contain a word of `entities`.

    `take(start, budget)` reads consecutive sentences from `start`, wrapping around at the end, with a binary search
    in the cumulative token counts, so a sample of a million tokens costs no more than slicing out its sentences.
    """

    def __init__(self, books: Sequence[Book], entities: Iterable[str] = ()):
        self.entities = frozenset(entity.lower() for entity in entities)
        pattern = entity_pattern(self.entities)
        self.sentences: list[str] = []
        counts = []
        for book in books:
            kept = [i for i, s in enumerate(book.sentences) if pattern is None or not pattern.search(s)]
            self.sentences += [book.sentences[i] for i in kept]
            counts.append(book.token_counts[kept])
        self.num_dropped = sum(len(book.sentences) for book in books) - len(self.sentences)
        # cumulative[i] = tokens of sentences 0..i-1; (num_sentences + 1,)
        self.cumulative = np.concatenate([[0], np.cumsum(np.concatenate([np.zeros(0, np.int64), *counts]))])
        self.total_tokens = int(self.cumulative[-1])

    def check_room(self, target_length: int) -> None:
        """Raise unless samples of `target_length` tokens fit without reading a sentence twice."""
        if target_length and target_length >= self.total_tokens:
            raise ValueError(
                f"The background holds {self.total_tokens} tokens (after leaving out sentences naming the task's "
                f"entities), not enough for samples of {target_length}: add books or lower the length"
            )

    def take(self, start: int, budget: int) -> tuple[np.ndarray, int]:
        """Indices of the most consecutive sentences from `start` (wrapping around) whose tokens fit in `budget`,
        and their token count; `budget` must be below `total_tokens`, so no sentence is taken twice."""
        if not 0 <= budget < self.total_tokens:
            raise ValueError(f"budget must be in [0, {self.total_tokens}), got {budget}")
        cumulative, end_of_text = self.cumulative, len(self.sentences)
        to_end = int(cumulative[-1] - cumulative[start])
        if budget < to_end:
            stop = int(np.searchsorted(cumulative, cumulative[start] + budget, side="right")) - 1
            return np.arange(start, stop), int(cumulative[stop] - cumulative[start])
        # the rest of the text, then from its beginning; budget < total_tokens keeps `stop` at or before `start`
        stop = int(np.searchsorted(cumulative, budget - to_end, side="right")) - 1
        indices = np.concatenate([np.arange(start, end_of_text), np.arange(stop)])
        return indices, to_end + int(cumulative[stop])


# ---------------------------------------------------------------------------------------------------------
# Samples


def _hide_facts(facts: list[str], background: list[str], rng: np.random.Generator) -> tuple[list[str], np.ndarray]:
    """`facts` inserted, in order, at random boundaries of `background`; returns the story and each fact's index."""
    # slots[i]: how many background sentences precede fact i; equal slots put facts next to each other
    slots = np.sort(rng.integers(0, len(background) + 1, size=len(facts)))
    story, previous = [], 0
    for fact, slot in zip(facts, slots.tolist()):
        story += background[previous:slot]
        story.append(fact)
        previous = slot
    story += background[previous:]
    return story, slots + np.arange(len(facts))


def _sample(row: dict, background: BackgroundText, target_length: int, rng: np.random.Generator) -> dict:
    facts = row["story"]
    facts_tokens = sum(count_tokens(fact) for fact in facts)
    budget = target_length - facts_tokens if target_length > 0 else 0
    chosen, background_tokens = np.arange(0), 0
    if budget > 0:
        chosen, background_tokens = background.take(int(rng.integers(len(background.sentences))), budget)
    story, fact_positions = _hide_facts(facts, [background.sentences[i] for i in chosen.tolist()], rng)
    return {
        **row,
        "story": story,
        "story_line_ids": list(range(1, len(story) + 1)),
        "supporting_ids": [int(fact_positions[p]) + 1 for p in row["supporting_positions"]],
        "supporting_positions": [int(fact_positions[p]) for p in row["supporting_positions"]],
        "length_tokens": facts_tokens + background_tokens,
        "target_length": target_length,
    }


def generate_babilong(
    rows: Dataset,
    background: BackgroundText,
    target_length: int,
    num_samples: int | None = None,
    seed: int = 0,
) -> Dataset:
    """BABILong samples (columns: `BABILONG_FEATURES`) from bAbI question rows (`rm_hf.babi.load_babi`).

    Args:
        rows: one row per question, its story being the sentences before it.
        background: the books' sentences, filtered for (at least) the entities of these rows.
        target_length: tokens per story; 0 for the bAbI story alone. Must be below `background.total_tokens`.
        num_samples: how many questions to draw (without replacement, in row order); None for every row.
        seed: draws the questions (the same for every `target_length`) and, with `target_length`, the background
            starts and the facts' places.
    """
    if len(rows) == 0:
        raise ValueError("No bAbI rows to build samples from")
    missing = set(QA_FEATURES) - set(rows.column_names)
    if missing:
        raise ValueError(f"rows lack the bAbI columns {sorted(missing)}")
    if isinstance(target_length, bool) or not isinstance(target_length, int) or target_length < 0:
        raise ValueError(f"target_length must be a non-negative integer, got {target_length!r}")
    background.check_room(target_length)
    if num_samples is not None and not 1 <= num_samples <= len(rows):
        raise ValueError(f"num_samples must be in [1, {len(rows)}] (the rows given), got {num_samples}")
    if num_samples is not None:
        rows = rows.select(np.sort(np.random.default_rng(seed).choice(len(rows), num_samples, replace=False)))
    unfiltered = task_entities(rows) - background.entities
    if target_length and unfiltered:
        raise ValueError(f"The background was not filtered for these entities of the rows: {sorted(unfiltered)}")

    rng = np.random.default_rng([seed, target_length])
    columns: dict[str, list] = {name: [] for name in BABILONG_FEATURES}
    for row in rows.select_columns(list(QA_FEATURES)):
        for name, value in _sample(row, background, target_length, rng).items():
            columns[name].append(value)
    over = sum(length > target_length for length in columns["length_tokens"])
    if target_length and over:
        logger.warning(
            "%d of %d samples are facts only, longer than the %d-token target.", over, len(rows), target_length
        )
    return dataset_from_columns(columns, BABILONG_FEATURES)


# ---------------------------------------------------------------------------------------------------------
# Files


def babilong_folder(data_dir: str | Path, task_id: int, target_length: int) -> Path:
    """Where a task's samples of one length are saved (a `DatasetDict` with "train" and "test", or only "test"
    beyond the longest training length)."""
    return Path(data_dir) / f"qa{task_id}" / length_name(target_length)


def load_babilong(data_dir: str | Path, tasks: Iterable[int], target_length: int, split: str) -> Dataset:
    """One split of the saved samples of `tasks` at `target_length`, concatenated in task order."""
    parts = []
    for task_id in tasks:
        folder = babilong_folder(data_dir, task_id, target_length)
        if not folder.is_dir():
            raise FileNotFoundError(f"No BABILong samples of task {task_id} at length {target_length} in {folder}")
        saved = load_from_disk(str(folder))
        if split not in saved:
            raise ValueError(f"{folder} has no {split!r} split (it holds {sorted(saved)})")
        parts.append(saved[split])
    if not parts:
        raise ValueError("No tasks given")
    return concatenate_datasets(parts)


def write_babi_text(dataset: Dataset, folder: str | Path, split: str) -> list[Path]:
    """Write the samples in bAbI's text format, one file per task, `qa{task}_babilong-{length}_{split}.txt`, which
    `load_babi(folder, tasks, split)` and `run_qa.py --babi_dir folder` read back (story ids aside). Each sample is
    its own story: sentences 1..n, then the question with its answer and supporting ids."""
    lengths = set(dataset.unique("target_length"))
    if len(lengths) != 1:
        raise ValueError(f"One target length per file: the dataset has {sorted(lengths)}")
    name = length_name(lengths.pop())
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    task_ids = dataset["task_id"][:]
    for task_id in sorted(set(task_ids)):
        rows = dataset.select([i for i, task in enumerate(task_ids) if task == task_id])
        path = folder / f"qa{task_id}_babilong-{name}_{split}.txt"
        with open(path, "w", encoding="utf-8") as f:
            for row in rows:
                f.writelines(f"{number} {sentence}\n" for number, sentence in enumerate(row["story"], 1))
                supporting = " ".join(map(str, row["supporting_ids"]))
                f.write(f"{len(row['story']) + 1} {row['question']}\t{row['answer']}\t{supporting}\n")
        paths.append(path)
    return paths
