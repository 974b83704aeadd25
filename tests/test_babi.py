"""Tests of the bAbI reader on invented fixtures, on a tarball, on malformed files, and on the real data if present."""

import itertools
import logging
import tarfile
import tempfile
from pathlib import Path

import pytest
from datasets import DatasetDict
from hypothesis import given, settings
from hypothesis import strategies as st

from rm_hf.babi import QA_FEATURES, BabiFormatError, answer_vocabulary, load_babi
from tests.conftest import COMPRESS, QA1_NAME, QA1_TEXT, QA8_NAME, QA8_TEXT, example_main, tar_bytes, write

# The real data lives beside the repository, never inside it; the tests that need it skip where it is absent.
BABI_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "babi"


def test_reads_questions_with_the_story_before_them(tmp_path):
    write(tmp_path / "en-10k", QA1_NAME, QA1_TEXT)
    dataset = load_babi(tmp_path)

    assert dataset.features == QA_FEATURES
    assert dataset.num_rows == 4
    second, third = dataset[1], dataset[2]
    assert second["story"] == [
        "Zoe walked into the pantry.",
        "Max hurried to the garage.",
        "Zoe strolled to the attic.",
    ]
    assert second["story_line_ids"] == [1, 2, 4]
    assert second["question"] == "Where is Zoe?"
    assert second["answer"] == "attic"
    assert second["supporting_ids"] == [4]
    assert second["supporting_positions"] == [2]
    assert third["story"] == second["story"]
    assert third["supporting_ids"] == [2]
    assert third["supporting_positions"] == [1]
    assert dataset["task_id"] == [1, 1, 1, 1]
    assert dataset["question_type"] == ["qa1"] * 4
    story_ids = dataset["story_id"]
    assert story_ids[0] == story_ids[1] == story_ids[2] != story_ids[3]
    assert dataset[3]["story"] == ["Max wandered to the porch."]


def test_list_answers_and_several_tasks(tmp_path):
    write(tmp_path / "en-10k", QA1_NAME, QA1_TEXT)
    write(tmp_path / "en-10k", QA8_NAME, QA8_TEXT)
    dataset = load_babi(tmp_path, tasks=[8, 1])

    assert dataset["task_id"] == [8, 1, 1, 1, 1]
    row = dataset[0]
    assert row["answer"] == "cup,hat"
    assert row["supporting_ids"] == [1, 3]
    assert row["supporting_positions"] == [0, 2]
    assert row["question_type"] == "qa8"
    assert len(set(dataset["story_id"])) == 3  # one qa8 story and two qa1 stories


def test_folder_layouts_splits_and_subsets(tmp_path):
    write(tmp_path / "flat", QA1_NAME.replace("train", "test"), QA8_TEXT.replace("1 3", "3"))
    write(tmp_path / "nested" / "en", QA1_NAME, QA8_TEXT)
    write(tmp_path / "nested" / "en-10k", QA1_NAME, QA1_TEXT)

    assert load_babi(tmp_path / "flat", split="test")["supporting_ids"] == [[3]]
    assert load_babi(tmp_path / "nested", subset="en")["answer"] == ["cup,hat"]
    assert load_babi(tmp_path / "nested").num_rows == 4


def test_missing_task_names_what_was_looked_for(tmp_path):
    # `qa1_` must not pick up task 10's file.
    write(tmp_path, "qa10_indefinite-knowledge_train.txt", QA1_TEXT)
    with pytest.raises(FileNotFoundError, match=r"qa1_\*_train\.txt"):
        load_babi(tmp_path, tasks=[1])
    with pytest.raises(FileNotFoundError):
        load_babi(tmp_path / "absent")
    with pytest.raises(ValueError, match="1..20"):
        load_babi(tmp_path, tasks=[21])


def test_reads_the_tarball_in_place(tmp_path):
    archive_path = tmp_path / "tasks_1-20_v1-2.tar.gz"
    sources = write(tmp_path / "sources", "en10k.txt", QA1_TEXT), write(tmp_path / "sources", "en.txt", QA8_TEXT)
    with tarfile.open(archive_path, "w:gz") as archive:
        archive.add(sources[0], arcname=f"tasks_1-20_v1-2/en-10k/{QA1_NAME}")
        archive.add(sources[1], arcname=f"tasks_1-20_v1-2/en/{QA1_NAME}")
    before = sorted(tmp_path.rglob("*"))

    assert load_babi(archive_path).num_rows == 4
    assert load_babi(archive_path, subset="en")["answer"] == ["cup,hat"]
    assert sorted(tmp_path.rglob("*")) == before  # nothing was extracted
    with pytest.raises(FileNotFoundError, match="qa2"):
        load_babi(archive_path, tasks=[2])


def babi_archive(tmp_path: Path, mode: str = "w:gz") -> bytes:
    """The bytes of a tarball laid out like the release, holding QA1_TEXT as en-10k's task 1 train file."""
    source = write(tmp_path / "sources", QA1_NAME, QA1_TEXT * 20)
    archive_path = tmp_path / "sources" / "archive.tar"
    with tarfile.open(archive_path, mode) as archive:
        archive.add(source, arcname=f"tasks_1-20_v1-2/en-10k/{QA1_NAME}")
    return archive_path.read_bytes()


@pytest.mark.parametrize("keep", [0, 10, 0.5, -20])
def test_truncated_or_foreign_archive_raises_read_error_naming_it(tmp_path, keep):
    data = babi_archive(tmp_path)
    path = tmp_path / "tasks_1-20_v1-2.tar.gz"
    path.write_bytes(data[: int(len(data) * keep) if isinstance(keep, float) else keep])
    with pytest.raises(tarfile.ReadError, match=rf"{path}: not a readable tar archive"):
        load_babi(path)
    path.write_text(QA1_TEXT)  # a task file given where the archive or folder was expected
    with pytest.raises(tarfile.ReadError, match=str(path)):
        load_babi(path)


RELEASE = {
    f"tasks_1-20_v1-2/en/{QA1_NAME}": QA8_TEXT,  # not read below, yet damage to it must be caught too
    f"tasks_1-20_v1-2/en-10k/{QA1_NAME}": QA1_TEXT,
    f"tasks_1-20_v1-2/en-10k/{QA8_NAME}": QA8_TEXT,
}


@pytest.mark.parametrize("compression", ["gz", "bz2", "xz"])
def test_every_flipped_bit_of_a_compressed_archive_is_refused_or_harmless(tmp_path, compression):
    data = COMPRESS[compression](tar_bytes(RELEASE))
    path = tmp_path / f"tasks_1-20_v1-2.tar.{compression}"
    path.write_bytes(data)
    original = load_babi(path, tasks=[1, 8]).to_dict()
    refused = 0
    with open(path, "r+b", buffering=0) as file:  # flipped in place: rewriting the whole file is far slower
        for position, bit in itertools.product(range(len(data)), range(8)):
            file.seek(position)
            file.write(bytes([data[position] ^ 1 << bit]))
            try:
                loaded = load_babi(path, tasks=[1, 8])
            except tarfile.ReadError as error:
                assert str(path) in str(error)
                refused += 1
            else:  # e.g. a flip in gzip's OS byte or in the padding bits after the last compressed block
                assert loaded.to_dict() == original, f"bit {bit} of byte {position} changed the data"
            file.seek(position)
            file.write(data[position : position + 1])
    assert refused > 4 * len(data)  # most bits are compressed data or checksums


def test_a_damaged_member_header_is_reported_as_damage_not_as_a_missing_task(tmp_path):
    # Uncompressed, so that the damage reaches tarfile as it is: tarfile ends its listing at a bad header.
    data = tar_bytes(RELEASE)
    header = data.index(f"tasks_1-20_v1-2/en-10k/{QA1_NAME}".encode())  # of the second member
    damaged = bytearray(data)
    damaged[header] ^= 1
    path = tmp_path / "tasks_1-20_v1-2.tar"
    for content in (bytes(damaged), data[:header]):  # a bad header, or a download cut right before one
        path.write_bytes(content)
        with pytest.raises(tarfile.ReadError, match=rf"{path}: not a readable tar archive"):
            load_babi(path)


@pytest.mark.usefixtures("keep_transformers_verbosity")
def test_run_qa_does_not_fall_back_to_en_on_a_damaged_archive(tmp_path):
    # run_qa.py reads a task missing from en-10k/ from en/ instead; a damaged archive must not pass for that.
    data = bytearray(tar_bytes(RELEASE))
    data[data.index(f"en-10k/{QA1_NAME}".encode())] ^= 1
    path = tmp_path / "tasks_1-20_v1-2.tar.gz"
    path.write_bytes(COMPRESS["gz"](bytes(data)))
    with pytest.raises(tarfile.ReadError, match=str(path)):
        example_main("run_qa")(["--babi_dir", str(path), "--tasks", "1", "--output_dir", str(tmp_path / "out")])


@settings(max_examples=60, deadline=None)
@given(
    mode=st.sampled_from(["w:gz", "w:bz2", "w:xz", "w"]),
    cut=st.floats(0, 1),
    flips=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), max_size=3),
)
def test_damaged_archive_parses_or_raises_a_documented_error(mode, cut, flips):
    with tempfile.TemporaryDirectory() as folder:
        data = bytearray(babi_archive(Path(folder), mode))
        for position, value in flips:
            data[int(position * len(data))] = value
        path = Path(folder) / "damaged.tar"
        path.write_bytes(bytes(data[: round(cut * len(data))]) if cut < 1 else bytes(data))
        try:
            dataset = load_babi(path)
        except (tarfile.ReadError, BabiFormatError, FileNotFoundError) as error:
            assert str(path) in str(error)
            return
    assert dataset.num_rows >= 1 and set(dataset["answer"]) <= {"pantry", "attic", "garage", "porch"}


@pytest.mark.parametrize(
    ("text", "line_number", "expected"),
    [
        ("1 Zoe ran.\nx Max ran.\n", 2, "integer id"),
        ("1 Zoe ran.\n3 Max ran.\n", 2, "id 2 or 1"),
        ("2 Zoe ran.\n", 1, "id 1 to start"),
        ("1 Zoe ran.\n2 Where is Zoe?\tyard\n", 2, "question<TAB>answer<TAB>supporting ids"),
        ("1 Zoe ran.\n2 Where is Zoe?\n", 2, "question<TAB>answer<TAB>supporting ids"),
        ("1 Zoe ran.\n2 Where is Zoe?\tyard\t \n", 2, "none empty"),
        ("1 Zoe ran.\n2 Where is Zoe?\tyard\tone\n", 2, "supporting ids"),
        ("1 Zoe ran.\n2 Where is Zoe?\tyard\t3\n", 2, "supporting ids"),  # a later line
        ("1 Zoe ran.\n2 Where?\tyard\t1\n3 Where?\tyard\t2\n", 3, "supporting ids"),  # a question line
        ("1 Zoe ran.\n2 Max ran.\n1 Ann ran.\n2 Where?\tyard\t2\n", 4, "supporting ids"),  # the story before
        ("", 1, "non-empty"),
        ("\n \n", 1, "non-empty"),
        (b"1 Zoe ran.\n2 Max \xff ran.\n", 2, "UTF-8"),
        ("1 Zoe ran.\n2 Max\x00 ran.\n", 2, "without control characters"),
        ("1 Zoe \x1b[1mran.\n", 1, "without control characters"),
        ("1 Zoe ran.\r\n2 Max\rran.\r\n", 2, "without control characters"),  # a CR only right before the LF
        ("1 Zoe ran.\x7f\n", 1, "without control characters"),
        ("1 Zoe ran.\n\ufeff2 Max ran.\n", 2, "integer id"),  # a byte-order mark only at the start of the file
    ],
)
def test_format_errors_name_file_line_and_expectation(tmp_path, text, line_number, expected):
    write(tmp_path, QA1_NAME, text)
    with pytest.raises(BabiFormatError) as caught:
        load_babi(tmp_path)
    error = caught.value
    assert error.line_number == line_number
    assert error.source.endswith(QA1_NAME)
    message = str(error)
    assert QA1_NAME in message
    assert f"line {line_number}:" in message
    assert expected in message


def test_byte_order_mark_and_crlf_line_ends_are_accepted(tmp_path):
    write(tmp_path / "plain", QA1_NAME, QA1_TEXT)
    write(tmp_path / "windows", QA1_NAME, b"\xef\xbb\xbf" + QA1_TEXT.replace("\n", "\r\n").encode())
    assert load_babi(tmp_path / "windows").to_dict() == load_babi(tmp_path / "plain").to_dict()


def test_skip_bad_lines_skips_a_line_with_a_nul_byte(tmp_path):
    write(tmp_path, QA1_NAME, "1 Zoe ran.\n2 Where is Zoe?\tya\x00rd\t1\n" + QA1_TEXT)
    dataset, skipped = load_babi(tmp_path, skip_bad_lines=True, return_skipped_line_count=True)
    assert skipped == 1 and dataset.num_rows == 4 and "\x00" not in "".join(dataset["answer"])


def test_skip_bad_lines_drops_the_rest_of_the_story_and_counts(tmp_path, caplog):
    bad_story = "1 Zoe ran.\n2 Where is Zoe?\tyard\t1\n3 Max ran\tbad\n4 Where is Max?\tyard\t3\n5 Ann ran.\n"
    write(tmp_path, QA1_NAME, bad_story + QA1_TEXT)
    with caplog.at_level(logging.WARNING, logger="rm_hf.babi"):
        dataset, skipped = load_babi(tmp_path, skip_bad_lines=True, return_skipped_line_count=True)

    assert skipped == 3  # line 3 and the two lines after it in its story
    assert "Skipped 3 lines" in caplog.text
    assert dataset.num_rows == 1 + 4  # the question before the bad line, then the clean stories
    assert dataset["answer"][0] == "yard"
    assert load_babi(tmp_path, skip_bad_lines=True).num_rows == 5
    write(tmp_path, QA1_NAME, QA1_TEXT)
    assert load_babi(tmp_path, return_skipped_line_count=True)[1] == 0


def test_answer_vocabulary(tmp_path):
    write(tmp_path, QA1_NAME, QA1_TEXT)
    write(tmp_path, QA8_NAME, QA8_TEXT)
    qa1, qa8 = load_babi(tmp_path, tasks=[1]), load_babi(tmp_path, tasks=[8])

    assert answer_vocabulary(qa1) == ["attic", "garage", "pantry", "porch"]
    assert answer_vocabulary([qa1, qa8]) == ["attic", "cup,hat", "garage", "pantry", "porch"]
    assert answer_vocabulary(DatasetDict(train=qa1, test=qa8)) == answer_vocabulary([qa8, qa1])


_word = st.sampled_from(["Zoe", "ran", "yard", "Where is Zoe?", "", " ", "\t", "1", "x"])
_id = st.integers(min_value=-1, max_value=5).map(str) | st.sampled_from(["", "01", "+1", "1.0", "٣"])
_supporting = st.lists(_id, max_size=3).map(" ".join)
_random_line = st.one_of(
    st.tuples(_id, _word).map(lambda parts: f"{parts[0]} {parts[1]}."),
    st.tuples(_id, _word, _word, _supporting).map(lambda parts: f"{parts[0]} {parts[1]}?\t{parts[2]}\t{parts[3]}"),
    st.text(max_size=15).map(lambda text: text.encode("utf-8", errors="surrogatepass")),
    st.binary(max_size=15),
)


@st.composite
def _mutated_babi_files(draw) -> bytes:
    """A valid file of up to three stories, then up to three lines replaced, inserted or deleted."""
    lines: list[str | bytes] = []
    for _ in range(draw(st.integers(0, 3))):
        sentence_ids: list[int] = []
        for line_id in range(1, draw(st.integers(1, 6)) + 1):
            if sentence_ids and draw(st.booleans()):
                supporting = draw(st.lists(st.sampled_from(sentence_ids), min_size=1, max_size=2))
                lines.append(f"{line_id} Where is Zoe?\tyard\t{' '.join(map(str, supporting))}")
            else:
                sentence_ids.append(line_id)
                lines.append(f"{line_id} Zoe ran to the yard.")
    for _ in range(draw(st.integers(0, 3))):
        position = draw(st.integers(0, len(lines)))
        action = draw(st.sampled_from(["replace", "insert", "delete"]))
        if action == "insert" or position == len(lines):
            lines.insert(position, draw(_random_line))
        elif action == "replace":
            lines[position] = draw(_random_line)
        else:
            del lines[position]
    return b"\n".join(line if isinstance(line, bytes) else line.encode() for line in lines)


@settings(max_examples=100, deadline=None)
@given(data=_mutated_babi_files(), skip_bad_lines=st.booleans())
def test_any_file_parses_or_raises_babi_format_error(data, skip_bad_lines):
    with tempfile.TemporaryDirectory() as folder:  # hypothesis reruns the body; tmp_path would be shared
        write(Path(folder), QA1_NAME, data)
        try:
            dataset = load_babi(folder, skip_bad_lines=skip_bad_lines)
        except BabiFormatError as error:
            # Skipping bad lines leaves only one error: a file without any line.
            assert not skip_bad_lines or error.expected == "a non-empty file"
            return
    for row in dataset:
        assert [row["story_line_ids"][p] for p in row["supporting_positions"]] == row["supporting_ids"]
        assert len(row["story"]) == len(row["story_line_ids"])


def test_real_tasks_from_a_compressed_archive(babi_dir, tmp_path):
    files = sorted((babi_dir / "en").glob("qa[12]_*.txt"))
    path = tmp_path / "tasks_1-20_v1-2.tar.gz"
    with tarfile.open(path, "w:gz", compresslevel=1) as archive:
        for file in files:
            archive.add(file, arcname=f"tasks_1-20_v1-2/en/{file.name}")
    for split in ("train", "test"):
        from_archive = load_babi(path, tasks=[1, 2], split=split, subset="en")
        assert from_archive.to_dict() == load_babi(babi_dir, tasks=[1, 2], split=split, subset="en").to_dict()


@pytest.mark.skipif(not BABI_DIR.is_dir(), reason=f"bAbI data not found at {BABI_DIR}")
def test_real_task_1():
    dataset = load_babi(BABI_DIR, tasks=[1], subset="en")

    assert dataset.num_rows == 1_000
    assert len(set(dataset["story_id"])) == 200  # five questions per story
    for row in dataset:
        assert len(row["supporting_positions"]) == 1
        sentence = row["story"][row["supporting_positions"][0]]
        assert row["answer"] in sentence.rstrip(".").split()
    assert answer_vocabulary(dataset) == ["bathroom", "bedroom", "garden", "hallway", "kitchen", "office"]
    with pytest.raises(FileNotFoundError):
        load_babi(BABI_DIR, tasks=[3], subset="en-10k")  # the release lacks it
