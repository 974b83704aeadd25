"""Size caps on the inputs: a line over `max_line_bytes` (bAbI and CSV readers) or a bAbI archive member over
`max_member_bytes` fails, naming the file, the line, the cap and how to raise it, without being read whole."""

import tracemalloc
from contextlib import contextmanager

import pytest

from rm_hf.babi import BabiFormatError, load_babi
from rm_hf.ctr_data import BehaviorFormatError, load_behavior_log, load_movielens, load_taobao
from tests.conftest import COMPRESS, QA1_NAME, QA1_TEXT, QA8_NAME, example_main, tar_bytes, write

LONGEST_QA1_LINE = max(len(line) for line in QA1_TEXT.splitlines())


@contextmanager
def allocating_at_most(limit: int):
    """Fail unless what Python allocates within the block peaks below `limit` bytes."""
    tracemalloc.start()
    try:
        yield
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < limit, f"{peak} bytes allocated at the peak"


# ---------------------------------------------------------------------------------------------------------
# bAbI


def test_babi_line_over_the_cap_is_refused_naming_file_line_and_cap(tmp_path):
    write(tmp_path, QA1_NAME, QA1_TEXT)
    assert load_babi(tmp_path, max_line_bytes=LONGEST_QA1_LINE).num_rows == 4
    cap = LONGEST_QA1_LINE - 1
    for skip_bad_lines in (False, True):  # a cap to raise, never a line to skip
        with pytest.raises(BabiFormatError, match=rf"{QA1_NAME}, line 1: expected a line of at most {cap} bytes"):
            load_babi(tmp_path, max_line_bytes=cap, skip_bad_lines=skip_bad_lines)
    with pytest.raises(BabiFormatError, match="raise max_line_bytes / --max_line_bytes"):
        load_babi(tmp_path, max_line_bytes=cap)


def test_babi_oversized_line_is_not_read_whole(tmp_path):
    write(tmp_path, QA1_NAME, QA1_TEXT + "3 " + "x" * (16 << 20) + "\n")
    with allocating_at_most(4 << 20), pytest.raises(BabiFormatError, match="line 9: expected a line of at most 65536"):
        load_babi(tmp_path, max_line_bytes=1 << 16)


def test_babi_archive_member_over_the_cap_is_refused_before_it_is_read(tmp_path):
    big = QA1_TEXT * ((16 << 20) // len(QA1_TEXT))  # 16 MiB, a few kB compressed
    path = tmp_path / "tasks.tar.gz"
    path.write_bytes(COMPRESS["gz"](tar_bytes({f"en-10k/{QA8_NAME}": big, f"en-10k/{QA1_NAME}": QA1_TEXT})))
    assert load_babi(path, tasks=[1], max_member_bytes=len(QA1_TEXT)).num_rows == 4  # other members don't count
    expected = rf"{path}:en-10k/{QA8_NAME} is {len(big)} bytes, over the 1048576-byte cap \(raise max_member_bytes"
    with allocating_at_most(4 << 20), pytest.raises(ValueError, match=expected):
        load_babi(path, tasks=[8], max_member_bytes=1 << 20)


@pytest.mark.usefixtures("keep_transformers_verbosity")
def test_run_qa_raises_the_caps_with_flags(tmp_path):
    write(tmp_path / "en-10k", QA1_NAME, QA1_TEXT)
    archive = tmp_path / "tasks.tar.gz"
    archive.write_bytes(COMPRESS["gz"](tar_bytes({f"en-10k/{QA1_NAME}": QA1_TEXT})))
    run_qa = example_main("run_qa")
    args = ["--tasks", "1", "--output_dir", str(tmp_path / "out")]
    with pytest.raises(BabiFormatError, match="line 1: expected a line of at most 8 bytes"):
        run_qa(["--babi_dir", str(tmp_path), *args, "--max_line_bytes", "8"])
    with pytest.raises(ValueError, match="over the 8-byte cap"):
        run_qa(["--babi_dir", str(archive), *args, "--max_member_bytes", "8"])


# ---------------------------------------------------------------------------------------------------------
# CSV readers

VALID_CSV = {
    "taobao": "1,2,3,pv,100\n",
    "behavior_log": "user,item,category,timestamp\nu,i,c,1\n",
    "movielens": "userId,movieId,rating,timestamp\n1,1,4.0,100\n",
}


def load_csv(loader: str, path, **options):
    if loader == "movielens":
        movies = path.with_name("movies.csv")
        movies.write_text("movieId,title,genres\n1,Paper Lanterns (2031),Drama\n")
        return load_movielens(path, movies, **options)
    return {"taobao": load_taobao, "behavior_log": load_behavior_log}[loader](path, **options)


@pytest.mark.parametrize("loader", list(VALID_CSV))
@pytest.mark.parametrize("skip_bad_lines", [False, True])
def test_csv_line_over_the_cap_is_refused_naming_file_line_and_cap(tmp_path, loader, skip_bad_lines):
    path = tmp_path / "input.csv"
    path.write_text(VALID_CSV[loader] + "x" * 65 + "\n")
    line_number = VALID_CSV[loader].count("\n") + 1
    expected = rf"{path}, line {line_number}: expected a line of at most 64 bytes \(raise max_line_bytes / --max_line"
    with pytest.raises(BehaviorFormatError, match=expected):
        load_csv(loader, path, max_line_bytes=64, skip_bad_lines=skip_bad_lines)


def test_csv_line_at_the_cap_is_read(tmp_path):
    lines = [f"u{i % 5},item{i % 23},cat{i % 4},{i}" for i in range(60)] + ["u0,item" + "x" * 200 + ",cat0,60"]
    path = tmp_path / "log.csv"
    path.write_text("user,item,category,timestamp\n" + "".join(f"{line}\n" for line in lines))
    longest = max(len(line) for line in lines)
    _, vocab = load_behavior_log(path, max_line_bytes=longest)
    assert "item" + "x" * 200 in vocab.items
    with pytest.raises(BehaviorFormatError, match=f"line 62: expected a line of at most {longest - 1} bytes"):
        load_behavior_log(path, max_line_bytes=longest - 1)


def test_csv_oversized_line_is_not_read_whole(tmp_path):
    path = tmp_path / "UserBehavior.csv"
    path.write_text("1,2,3,pv,100\n" + "9" * (16 << 20) + "\n")
    with allocating_at_most(4 << 20), pytest.raises(BehaviorFormatError, match="line 2: expected a line of at most"):
        load_taobao(path, max_line_bytes=1 << 16)


@pytest.mark.usefixtures("keep_transformers_verbosity")
def test_run_ctr_raises_the_line_cap_with_a_flag(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text(VALID_CSV["behavior_log"])
    args = ["--data", "csv", "--behavior_csv", str(path), "--output_dir", str(tmp_path / "out"), "--max_line_bytes"]
    with pytest.raises(BehaviorFormatError, match="line 1: expected a line of at most 8 bytes"):
        example_main("run_ctr")([*args, "8"])
