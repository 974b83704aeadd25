"""Tests of the click-prediction data: readers, synthetic long-history task, collator and vocabulary.

Fixtures are invented rows written to tmp_path; the real Taobao sample is used by path when present.
"""

import json
import logging
import random
import time
from collections import defaultdict
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import TrainerControl, TrainerState

from rm_hf import ctr_data
from rm_hf.ctr_baselines import MeanPoolClickModel
from rm_hf.ctr_data import (
    BehaviorFormatError,
    BehaviorVocab,
    ClickCollator,
    EmptySplitError,
    generate_behavior_histories,
    load_behavior_log,
    load_movielens,
    load_taobao,
)
from tests.conftest import example_main

TAOBAO_SAMPLE = (
    Path(__file__).resolve().parents[1].parent / "shared" / "data" / "taobao-sample" / "UserBehavior_head.csv"
)
BEHAVIORS = ("pv", "cart", "fav", "buy")


def rows(dataset_dict):
    return [row for split in ("train", "test") for row in dataset_dict[split]]


def raw_ids(mapping: dict[str, int]) -> dict[int, str]:
    return {v: k for k, v in mapping.items()}


def reference_histories(events, min_history, max_history, last_only=False):
    """Naive reference: events are (user, time, tiebreak, payload); yields (user, target, history payloads)."""
    by_user = defaultdict(list)
    for event in events:
        by_user[event[0]].append(event)
    for user, user_events in by_user.items():
        user_events.sort(key=lambda e: (e[1], e[2]))
        targets = user_events[-1:] if last_only else user_events
        for target in targets:
            earlier = [e for e in user_events if e[1] < target[1]]
            if len(earlier) >= min_history:
                yield user, target[3], tuple(e[3] for e in earlier[-max_history:])


# ---------------------------------------------------------------------------------------------------------
# MovieLens

MOVIES = """movieId,title,genres
1,Paper Lanterns (2031),Drama|Romance
2,"Glass Orchard, The (2029)",Comedy|Drama
3,Rust Meridian (2030),Action|Sci-Fi|Thriller
4,"Nine Winters, Part Two (2033)",Animation|Children
5,Quiet Harbour (2028),Documentary
6,Salt and Static (2032),Comedy
7,The Long Ledger (2030),Crime|Drama
8,Velvet Tide (2034),Romance
"""


def movielens_events(num_users=10, seed=3):
    """(user, timestamp, movie, rating) sorted by user then movie with shuffled timestamps and some ties."""
    rng = random.Random(seed)
    events = []
    for user in range(1, num_users + 1):
        movies = sorted(rng.sample(range(1, 9), rng.randint(4, 8)))
        times = rng.sample(range(1_000, 1_050), len(movies))
        times[-1] = times[0]  # a tie inside the user's history
        events += [(user, t, movie, rng.choice([1.0, 2.5, 3.5, 4.0, 4.5, 5.0])) for movie, t in zip(movies, times)]
    return events


def write_movielens(tmp_path, events):
    ratings = tmp_path / "ratings.csv"
    ratings.write_text("userId,movieId,rating,timestamp\n" + "".join(f"{u},{m},{r},{t}\n" for u, t, m, r in events))
    movies = tmp_path / "movies.csv"
    movies.write_text(MOVIES)
    return ratings, movies


def test_movielens_matches_reference_histories(tmp_path):
    events = movielens_events()
    ratings, movies = write_movielens(tmp_path, events)
    data, vocab = load_movielens(ratings, movies, min_history=2, max_history=4)

    movie_of = raw_ids(vocab.items)
    got = sorted(
        (
            int(row["user_id"]),
            int(movie_of[row["target_item"]]),
            tuple(int(movie_of[i]) for i in row["history_items"]),
            row["label"],
        )
        for row in rows(data)
    )
    rating = {(u, m): r for u, _, m, r in events}
    expected = sorted(
        (user, movie, history, int(rating[user, movie] >= 4))
        for user, movie, history in reference_histories(
            [(u, t, m, m) for u, t, m, _ in events], min_history=2, max_history=4
        )
    )
    assert got == expected
    assert {r for _, _, _, r in events} >= {3.5, 4.0}  # both sides of the label threshold occur
    for row in rows(data):
        assert row["history_behaviors"] == [1] * len(row["history_items"])


def test_movielens_categories_from_first_genre_and_quoted_titles(tmp_path):
    ratings, movies = write_movielens(tmp_path, movielens_events())
    data, vocab = load_movielens(ratings, movies, min_history=1)
    genre_of = raw_ids(vocab.categories)
    assert genre_of[vocab.item_categories[vocab.items["2"]]] == "Comedy"  # title "Glass Orchard, The (2029)"
    assert genre_of[vocab.item_categories[vocab.items["4"]]] == "Animation"
    assert vocab.item_vocab_size == 9 and vocab.behavior_vocab_size == 5
    for row in rows(data):
        assert row["target_category"] == vocab.item_categories[row["target_item"]]


def test_movielens_min_history_counts_and_history_time_order(tmp_path):
    events = movielens_events()
    ratings, movies = write_movielens(tmp_path, events)
    data, vocab = load_movielens(ratings, movies, min_history=3, max_history=200)
    time_of = {(str(u), vocab.items[str(m)]): t for u, t, m, _ in events}
    expected_count = sum(1 for u, t, _, _ in events if sum(1 for v, s, _, _ in events if v == u and s < t) >= 3)
    assert sum(len(data[split]) for split in data) == expected_count
    for row in rows(data):
        times = [time_of[row["user_id"], item] for item in row["history_items"]]
        assert len(times) >= 3
        assert times == sorted(times)
        assert max(times) < time_of[row["user_id"], row["target_item"]]


def test_movielens_split_by_user_is_deterministic(tmp_path):
    ratings, movies = write_movielens(tmp_path, movielens_events())
    first, _ = load_movielens(ratings, movies, min_history=1, seed=7)
    again, _ = load_movielens(ratings, movies, min_history=1, seed=7)
    other, _ = load_movielens(ratings, movies, min_history=1, seed=8)
    train_users, test_users = set(first["train"]["user_id"]), set(first["test"]["user_id"])
    assert not train_users & test_users
    assert len(test_users) == 2  # 20% of 10 users
    assert first["train"].to_list() == again["train"].to_list()
    assert first["test"].to_list() == again["test"].to_list()
    assert set(other["test"]["user_id"]) != test_users


# ---------------------------------------------------------------------------------------------------------
# Taobao

# Invented rows, not in time order, with a tie at user 7's last second.
TAOBAO_ROWS = """7,501,90,pv,1600000300
7,502,91,cart,1600000100
7,503,90,pv,1600000200
7,504,92,buy,1600000400
7,505,92,pv,1600000400
8,506,93,pv,1600000050
8,501,90,fav,1600000010
9,507,94,pv,1600000500
10,508,95,pv,1600000600
10,509,95,pv,1600000700
10,510,96,buy,1600000650
"""


def taobao_log(num_users, seed=0):
    """Invented Taobao-format rows: (user, item, category, behaviour, timestamp)."""
    rng = random.Random(seed)
    lines = []
    for user in range(1, num_users + 1):
        for _ in range(rng.randint(2, 12)):
            item = rng.randint(1, 300)
            lines.append((user, item, 1000 + item % 17, rng.choice(BEHAVIORS), 1_600_000_000 + rng.randint(0, 10**6)))
    rng.shuffle(lines)
    return lines


def check_taobao_against_raw(data, vocab, raw_rows, max_history):
    """Every sample's history is the user's strictly earlier behaviours; positives target the last one."""
    item_of, category_of = raw_ids(vocab.items), raw_ids(vocab.categories)
    events = [(u, int(t), line, (str(int(i)), str(int(c)), b)) for line, (u, i, c, b, t) in enumerate(raw_rows)]
    time_of = defaultdict(dict)
    for u, t, _, (item, _, _) in events:
        time_of[str(u)].setdefault(item, []).append(t)
    reference = {str(u): (target, history) for u, target, history in reference_histories(events, 1, max_history, True)}
    samples = rows(data)
    assert {row["user_id"] for row in samples} == set(reference)
    assert len(samples) == len(reference)
    for row in samples:
        target, history = reference[row["user_id"]]
        got = tuple(
            (item_of[i], category_of[c], BEHAVIORS[b - 1])
            for i, c, b in zip(row["history_items"], row["history_categories"], row["history_behaviors"])
        )
        assert got == history
        target_time = max(max(ts) for ts in time_of[row["user_id"]].values())
        assert all(min(time_of[row["user_id"]][item]) < target_time for item, _, _ in got)
        if row["label"] == 1:
            assert (item_of[row["target_item"]], category_of[row["target_category"]]) == target[:2]
        else:
            assert item_of[row["target_item"]] != target[0]
            assert row["target_category"] == vocab.item_categories[row["target_item"]]


def test_taobao_fixture_builds_one_sample_per_user(tmp_path):
    path = tmp_path / "behavior.csv"
    path.write_text(TAOBAO_ROWS)
    data, vocab = load_taobao(path, max_history=3)
    raw_rows = [line.split(",") for line in TAOBAO_ROWS.split()]
    check_taobao_against_raw(data, vocab, raw_rows, max_history=3)
    # user 9 has no earlier behaviour; user 7's two last-second behaviours are not each other's history
    assert {r["user_id"] for r in rows(data)} == {"7", "8", "10"}
    user7 = next(r for r in rows(data) if r["user_id"] == "7")
    assert len(user7["history_items"]) == 3


def test_taobao_negatives_and_time_split_on_larger_log(tmp_path):
    lines = taobao_log(600)
    path = tmp_path / "behavior.csv"
    path.write_text("".join(",".join(map(str, line)) + "\n" for line in lines))
    data, vocab = load_taobao(path, max_history=5, seed=1)
    check_taobao_against_raw(data, vocab, [tuple(map(str, line)) for line in lines], max_history=5)
    labels = [row["label"] for row in rows(data)]
    assert 0.4 < labels.count(0) / len(labels) < 0.6

    last_time = defaultdict(int)
    for user, _, _, _, t in lines:
        last_time[str(user)] = max(last_time[str(user)], t)
    train_times = [last_time[u] for u in data["train"]["user_id"]]
    test_times = [last_time[u] for u in data["test"]["user_id"]]
    assert max(train_times) < min(test_times)
    assert 0.65 < len(train_times) / (len(train_times) + len(test_times)) < 0.75

    again, _ = load_taobao(path, max_history=5, seed=1)
    assert again["train"].to_list() == data["train"].to_list()


def test_taobao_negative_is_never_the_real_item(tmp_path):
    path = tmp_path / "behavior.csv"
    # last behaviours at distinct times, so the time split has a test side
    path.write_text("".join(f"{u},{1 + u % 2},5,pv,{t}\n" for u in range(40) for t in (2 * u, 2 * u + 1)))
    data, _ = load_taobao(path)
    negatives = [row for row in rows(data) if row["label"] == 0]
    assert negatives
    for row in negatives:  # with two items the only other item is the one the user did not see
        assert row["target_item"] != row["history_items"][-1]


@pytest.mark.skipif(not TAOBAO_SAMPLE.exists(), reason="Taobao sample not present beside the project")
def test_taobao_real_sample():
    data, vocab = load_taobao(TAOBAO_SAMPLE, max_history=50)
    assert len(data["train"]) + len(data["test"]) == 43
    assert set(data["train"]["user_id"]).isdisjoint(data["test"]["user_id"])
    with open(TAOBAO_SAMPLE) as f:
        raw_rows = [line.strip().split(",") for line in f]
    check_taobao_against_raw(data, vocab, raw_rows, max_history=50)
    assert vocab.bad_lines == 0


# Timestamps in nanoseconds near 2017: float64 steps by 256 here, so every offset below collapses into one float.
NANOSECOND_TIME = 1_511_544_070_000_000_000


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    offsets=st.lists(
        st.lists(st.integers(0, 5), min_size=2, max_size=8).filter(lambda o: len(set(o)) > 1), min_size=2, max_size=5
    ),
    seed=st.integers(0, 1000),
)
def test_taobao_nanosecond_timestamps_keep_their_order(tmp_path, offsets, seed):
    """User u's behaviours lie u microseconds after NANOSECOND_TIME, a few nanoseconds apart (ties included)."""
    raw_rows = [
        (str(user), str(1000 * user + k), str(90 + k % 3), BEHAVIORS[k % 4], str(NANOSECOND_TIME + 1000 * user + t))
        for user, user_offsets in enumerate(offsets, start=1)
        for k, t in enumerate(user_offsets)
    ]
    random.Random(seed).shuffle(raw_rows)
    path = tmp_path / "behavior.csv"
    path.write_text("".join(",".join(row) + "\n" for row in raw_rows))
    data, vocab = load_taobao(path, max_history=5)
    check_taobao_against_raw(data, vocab, raw_rows, max_history=5)


# ---------------------------------------------------------------------------------------------------------
# Generic behaviour log


def test_behavior_log_with_label_and_behavior_columns(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text(
        "timestamp,user,item,category,behavior,label\n"
        "3,alice,lamp,home,pv,0\n"
        "1,alice,kettle,home,cart,1\n"
        "2,alice,sofa-x,furniture,buy,1\n"
        "5,bob,lamp,home,fav,1\n"
        "4,bob,kettle,home,pv,0\n"
    )
    data, vocab = load_behavior_log(path, min_history=1, test_fraction=0.5)
    by_target = {(r["user_id"], r["target_item"]): r for r in rows(data)}
    lamp, kettle, sofa = vocab.items["lamp"], vocab.items["kettle"], vocab.items["sofa-x"]
    assert set(by_target) == {("alice", sofa), ("alice", lamp), ("bob", lamp)}
    assert by_target["alice", lamp]["history_items"] == [kettle, sofa]
    assert by_target["alice", lamp]["history_behaviors"] == [2, 4]
    assert by_target["alice", lamp]["label"] == 0
    assert by_target["bob", lamp]["label"] == 1
    assert by_target["alice", lamp]["target_category"] == vocab.categories["home"]
    assert len(data["test"]) in (1, 2) and set(data["train"]["user_id"]).isdisjoint(data["test"]["user_id"])


def test_behavior_log_without_label_samples_one_negative_per_positive(tmp_path):
    path = tmp_path / "log.csv"
    lines = [f"u{i % 5},item{(i * 7) % 23},cat{(i * 7) % 23 % 4},{i}" for i in range(60)]
    path.write_text("user,item,category,timestamp\n" + "\n".join(lines) + "\n")
    data, vocab = load_behavior_log(path, min_history=2, max_history=3, seed=4)
    samples = rows(data)
    positives = [r for r in samples if r["label"] == 1]
    negatives = [r for r in samples if r["label"] == 0]
    assert len(positives) == len(negatives) == 5 * (12 - 2)

    def histories(group):
        return sorted((r["user_id"], tuple(r["history_items"])) for r in group)

    assert histories(positives) == histories(negatives)
    real = {(r["user_id"], tuple(r["history_items"])): r["target_item"] for r in positives}
    for r in negatives:
        assert r["target_item"] != real[r["user_id"], tuple(r["history_items"])]
        assert r["target_category"] == vocab.item_categories[r["target_item"]]
    assert all(len(r["history_items"]) <= 3 for r in samples)


def decimal_seconds(nanoseconds: int) -> str:
    """`-1250000000` as `-1.25`, `3000000000` as `3`: the shortest decimal of a time in nanoseconds."""
    whole, fraction = divmod(abs(nanoseconds), 10**9)
    return f"{'-' if nanoseconds < 0 else ''}{whole}.{fraction:09d}".rstrip("0").rstrip(".")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    base=st.sampled_from([0, NANOSECOND_TIME, -NANOSECOND_TIME]),
    offsets=st.lists(
        st.lists(st.integers(-5, 5), min_size=2, max_size=6).filter(lambda o: len(set(o)) > 1), min_size=2, max_size=4
    ),
)
def test_behavior_log_decimal_timestamps_are_exact(tmp_path, base, offsets):
    """Decimal seconds with nanosecond digits (`1511544070.000000003`, `-0.000000002`) order exactly."""
    times = [(user, k, base + t) for user, user_offsets in enumerate(offsets) for k, t in enumerate(user_offsets)]
    events = [(f"u{user}", time, line, f"i{user}-{k}") for line, (user, k, time) in enumerate(times)]
    path = tmp_path / "log.csv"
    path.write_text(
        "user,item,category,timestamp,label\n"
        + "".join(f"{user},{item},c,{decimal_seconds(time)},1\n" for user, time, _, item in events)
    )
    data, vocab = load_behavior_log(path, test_fraction=0.5)
    item_of = raw_ids(vocab.items)
    got = sorted(
        (r["user_id"], item_of[r["target_item"]], tuple(item_of[i] for i in r["history_items"])) for r in rows(data)
    )
    assert got == sorted(reference_histories(events, min_history=1, max_history=200))


# ---------------------------------------------------------------------------------------------------------
# Reading in blocks: lines in the plain form are read together, the others one at a time, alike

# Invented rows: plain lines (read together) between a BOM, a quoted padded id with an upper-case behaviour, a
# leading zero, a line that is not UTF-8, a blank line, CRLF and a last line without newline (read one at a time).
MIXED_TAOBAO = (
    "\ufeff1,10,100,pv,1000\n".encode()
    + b"1,11,101,cart,1001\n"
    + b"\xff\xfe,2\n"
    + b'1," 10",100,PV,1002\n'
    + b"2,012,100,buy,1000\n"
    + b"\n"
    + b"2,13,102,fav,1003\r\n"
    + b"2,10,100,pv,1004"
)


@pytest.mark.parametrize("block_bytes", [None, 7], ids=["one-block", "7-byte-blocks"])
def test_taobao_lines_of_every_form_read_as_checked_by_hand(tmp_path, monkeypatch, block_bytes):
    """Items 10, 11, 012 = 12, 13 get ids 1-4 and categories 100, 101, 102 ids 1-3, as first seen; each user's
    last behaviour (item 10 for both) is the target, the earlier ones its history; user 2's last is later than the
    0.7 quantile of last times (1002, 1004), so user 2 is the test split. Blocks of 7 bytes cut every line."""
    if block_bytes:
        monkeypatch.setattr(ctr_data, "_BLOCK_BYTES", block_bytes)
    path = tmp_path / "UserBehavior.csv"
    path.write_bytes(MIXED_TAOBAO)
    with pytest.raises(BehaviorFormatError, match=r"line 3: expected UTF-8 text"):
        load_taobao(path)
    data, vocab = load_taobao(path, negative_ratio=0.0, skip_bad_lines=True)
    assert vocab.items == {"10": 1, "11": 2, "12": 3, "13": 4} and vocab.item_categories == [0, 1, 2, 1, 3]
    assert vocab.categories == {"100": 1, "101": 2, "102": 3} and vocab.bad_lines == 1
    sample = {"target_item": 1, "target_category": 1, "label": 1}
    assert data["train"].to_list() == [
        {"user_id": "1", "history_items": [1, 2], "history_categories": [1, 2], "history_behaviors": [1, 2], **sample}
    ]
    assert data["test"].to_list() == [
        {"user_id": "2", "history_items": [3, 4], "history_categories": [1, 3], "history_behaviors": [4, 3], **sample}
    ]


MIXED_LOG = """user,item,category,timestamp,label
alice,lamp,home,1.5,1
alice,café,home,2,0
bob, sofa ,furniture,-0.25,1
bob,lamp,home,-1,1
alice,"kettle, red",home,1.5,1
"""


@pytest.mark.parametrize("block_bytes", [None, 5], ids=["one-block", "5-byte-blocks"])
def test_behavior_log_lines_of_every_form_read_as_checked_by_hand(tmp_path, monkeypatch, block_bytes):
    """Ids lamp, café, sofa (padded), "kettle, red" (quoted) get ids 1-4; negative decimal times order bob's events
    (-1 before -0.25); alice's lamp and kettle share 1.5 s, so neither is the other's history."""
    if block_bytes:
        monkeypatch.setattr(ctr_data, "_BLOCK_BYTES", block_bytes)
    path = tmp_path / "log.csv"
    path.write_text(MIXED_LOG)
    data, vocab = load_behavior_log(path, test_fraction=0.5)
    assert vocab.items == {"lamp": 1, "café": 2, "sofa": 3, "kettle, red": 4}
    assert vocab.categories == {"home": 1, "furniture": 2} and vocab.item_categories == [0, 1, 1, 2, 1]
    assert sorted(rows(data), key=lambda row: row["user_id"]) == [
        {"user_id": "alice", "history_items": [1, 4], "history_categories": [1, 1], "history_behaviors": [1, 1],
         "target_item": 2, "target_category": 1, "label": 0},
        {"user_id": "bob", "history_items": [1], "history_categories": [1], "history_behaviors": [1],
         "target_item": 3, "target_category": 2, "label": 1},
    ]  # fmt: skip


# Layouts of every column kind the readers read together (the readers build theirs the same way from a header).
LAYOUTS = {
    "taobao": ctr_data._TAOBAO_LAYOUT,
    "behavior_log": ctr_data._Layout(
        ("label", "user", "timestamp", "item", "category", "behavior"),
        {
            0: ctr_data._LABEL_COLUMN,
            1: ctr_data._string_id_column("user", "user"),
            2: ctr_data._timestamp_column(decimals=True),
            3: ctr_data._string_id_column("item", "item"),
            4: ctr_data._string_id_column("category", "category"),
            5: ctr_data._BEHAVIOR_COLUMN,
        },
    ),
    "movielens": ctr_data._Layout(
        ("movieId", "title", "genres", "rating"),
        {2: ctr_data._GENRES_COLUMN, 0: ctr_data._integer_id_column("item", "movieId"), 3: ctr_data._RATING_COLUMN},
    ),
}
PLAIN_LINES = {  # lines in the plain form, to mutate
    "taobao": ["1,2268318,2520377,pv,1511544070", "0,7,42,buy,-3"],
    "behavior_log": ["1,alice,1.5,lamp,home,cart", "0,café au lait,1511544070.000000003,x,y z,fav"],
    "movielens": ["1,Paper Lanterns (2031),Drama|Romance,4.0", "42,x,(no genres listed),3"],
}
PIECES = ["0", "1", "7", "007", "-3", "+3", "1.5", "2.", ".5", "1e3", "9" * 19, "pv", "PV", "buy", "a", "é", "a b",
          "|", " ", "\t", "\xa0", "\u3000", "\x1c", "\ufeff", '"', "\r"]  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(data=st.data(), name=st.sampled_from(sorted(LAYOUTS)))
def test_lines_read_together_are_read_as_the_exact_parser_reads_them(data, name):
    """Whatever line a layout's pattern matches, the exact path (csv, then the value parsers) accepts too and reads
    into the same values: the fast path never takes a line the exact path would refuse or read otherwise. Lines
    are plain ones with up to two fields replaced by odd pieces."""
    layout = LAYOUTS[name]
    fields = data.draw(st.sampled_from(PLAIN_LINES[name])).split(",")
    for _ in range(data.draw(st.integers(0, 2))):
        position = data.draw(st.integers(0, len(fields) - 1))
        fields[position] = "".join(data.draw(st.lists(st.sampled_from([*PIECES, fields[position]]), max_size=3)))
    line = ",".join(fields) + data.draw(st.sampled_from(["\n", "\r\n", ""]))
    matched = pc.extract_regex(pa.array([line]), layout.pattern)
    if matched.is_valid()[0].as_py():
        values = layout.value_types.items()
        fast = tuple(ctr_data._fast_values(n, matched.field(n), t)[0].as_py() for n, t in values)
        assert fast == layout.parse(ctr_data._csv_fields(line.encode()))


def test_block_size_does_not_change_what_is_read(tmp_path, monkeypatch):
    """The generated Taobao log and MovieLens files read in 64-byte blocks give what one block gives."""
    taobao = tmp_path / "behavior.csv"
    taobao.write_text("".join(",".join(map(str, line)) + "\n" for line in taobao_log(200)))
    ratings, movies = write_movielens(tmp_path, movielens_events())
    expected = [load_taobao(taobao, seed=3), load_movielens(ratings, movies, min_history=1)]
    monkeypatch.setattr(ctr_data, "_BLOCK_BYTES", 64)
    got = [load_taobao(taobao, seed=3), load_movielens(ratings, movies, min_history=1)]
    for (data, vocab), (expected_data, expected_vocab) in zip(got, expected):
        assert vocab == expected_vocab
        assert rows(data) == rows(expected_data)


# ---------------------------------------------------------------------------------------------------------
# Malformed input


@pytest.mark.parametrize(
    ("loader", "content", "line_number", "expected"),
    [
        ("taobao", "1,2,3,pv,100\n1,2,3,pv\n", 2, "5 columns"),
        ("taobao", "1,2,3,pv,100\n\n1,2,3,pv,soon\n", 3, "numeric timestamp"),
        ("taobao", "1,2,3,pv,100\n1,x2,3,pv,101\n", 2, "integer item_id"),
        ("taobao", "1,2,3,pv,100\n1,2,3,pv,101\n1,2,3,click,102\n", 3, "behaviour type"),
        ("taobao", "1,2,3,pv,100\n1,2,3,pv,100.5\n", 2, "numeric timestamp (an integer,"),
        ("taobao", "1,2,3,pv,9223372036854775807\n1,2,3,pv,9223372036854775808\n", 2, "within 64 bits"),
        ("taobao", "1,2,3,pv,1e9\n", 1, "numeric timestamp"),
        ("taobao", "", 1, "empty"),
        ("taobao", "1,2,3,pv,100\n\xff\xfe,2\n", 2, "UTF-8"),
        ("behavior_log", "user,item,timestamp\nu,i,1\n", 1, "category"),
        ("behavior_log", "user,item,category,timestamp,label\nu,i,c,1,yes\n", 2, "label of 0 or 1"),
        ("behavior_log", "user,item,category,timestamp\nu,i,c,1\nu,i,c\n", 3, "4 columns"),
        ("behavior_log", "user,item,category,timestamp\nu,i,c,1,9\n", 2, "4 columns"),
        ("behavior_log", "user,item,category,timestamp\nu,i,c,soon\n", 2, "numeric timestamp"),
        ("behavior_log", "user,item,category,timestamp\nu,i,c,1.5\nu,i,c,1.0000000001\n", 3, "at most 9 decimals"),
        ("behavior_log", "user,item,category,timestamp\nu,i,c,1.5e9\n", 2, "numeric timestamp"),
        ("behavior_log", "user,item,category,timestamp\nu,i,c,nan\n", 2, "numeric timestamp"),
        ("behavior_log", "user,item,category,timestamp,behavior\nu,i,c,1,click\n", 2, "behaviour type"),
        ("behavior_log", "", 1, "empty"),
        ("behavior_log", "user,item,category,timestamp\n\n", 3, "at least one valid record"),
        ("movielens", "1,1,4.0,100\n", 1, "header"),
        ("movielens", "", 1, "empty"),
        ("movielens", "userId,movieId,rating,timestamp\n1,1,4.0\n", 2, "4 columns"),
        ("movielens", "userId,movieId,rating,timestamp\n1,1,4.0,yesterday\n", 2, "numeric timestamp"),
        ("movielens", "userId,movieId,rating,timestamp\n1,1,4.0,100.5\n", 2, "numeric timestamp (an integer,"),
        ("movielens", "userId,movieId,rating,timestamp\n1,1,4.0,100\n1,99,3.0,101\n", 3, "movieId listed"),
        ("movielens", "userId,movieId,rating,timestamp\n1,1,good,100\n", 2, "numeric rating"),
    ],
)
def test_format_errors_name_file_and_line(tmp_path, loader, content, line_number, expected):
    path = tmp_path / "input.csv"
    path.write_bytes(content.encode("latin-1"))
    with pytest.raises(BehaviorFormatError) as info:
        if loader == "movielens":
            (tmp_path / "movies.csv").write_text(MOVIES)
            load_movielens(path, tmp_path / "movies.csv", min_history=0)
        else:
            {"taobao": load_taobao, "behavior_log": load_behavior_log}[loader](path)
    message = str(info.value)
    assert str(path) in message and f"line {line_number}:" in message and expected in message
    assert info.value.line_number == line_number


@pytest.mark.parametrize(
    ("movies", "line_number", "expected"),
    [("", 1, "empty"), ("movieId,title,genres\n1,Paper Lanterns\n", 2, "3 columns"), ("movieId,genres\n", 1, "title")],
)
def test_movielens_movies_file_errors_name_it(tmp_path, movies, line_number, expected):
    ratings, movies_csv = write_movielens(tmp_path, [(1, 100, 1, 4.0)])
    movies_csv.write_text(movies)
    with pytest.raises(BehaviorFormatError) as info:
        load_movielens(ratings, movies_csv, min_history=0)
    assert info.value.path == str(movies_csv) and info.value.line_number == line_number
    assert f"movies.csv, line {line_number}: expected" in str(info.value) and expected in str(info.value)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    columns=st.permutations(["user", "item", "category", "timestamp", "label", "behavior"]),
    repeated=st.integers(0, 5),
    position=st.integers(0, 6),
    padding=st.sampled_from(["", " ", "\t"]),
)
def test_behavior_log_refuses_a_repeated_header_name(tmp_path, columns, repeated, position, padding):
    """A repeated column name (`user,item,category,timestamp,user`) fails at the header: either copy could be
    the one meant, and taking the last one silently merged users."""
    name = columns[repeated]
    header = list(columns)
    header.insert(position, padding + name + padding)  # names are matched after strip, so this is a repeat
    values = {"user": "u", "item": "i", "category": "c", "timestamp": "1", "label": "1", "behavior": "pv"}
    path = tmp_path / "log.csv"
    path.write_text(",".join(header) + "\n" + ",".join(values[column.strip()] for column in header) + "\n")
    with pytest.raises(BehaviorFormatError) as info:
        load_behavior_log(path)
    assert info.value.path == str(path) and info.value.line_number == 1
    assert f"{name!r} twice" in str(info.value)


@pytest.mark.parametrize(("damaged", "name"), [("ratings.csv", "timestamp"), ("movies.csv", "movieId")])
def test_movielens_refuses_a_repeated_header_name(tmp_path, damaged, name):
    """A repeated column fails at the header, naming its file: a second `timestamp` column of zeros used to win,
    leaving no sample and no error."""
    write_movielens(tmp_path, movielens_events())
    path = tmp_path / damaged
    header, *lines = path.read_text().splitlines()
    path.write_text(f"{header}, {name}\n" + "".join(f"{line},0\n" for line in lines))
    with pytest.raises(BehaviorFormatError) as info:
        load_movielens(tmp_path / "ratings.csv", tmp_path / "movies.csv", min_history=1)
    assert info.value.path == str(path) and info.value.line_number == 1
    assert f"{name!r} twice" in str(info.value)


def test_format_error_shortens_long_lines(tmp_path):
    path = tmp_path / "behavior.csv"
    path.write_text("1,2,3,pv," + "9" * 500 + "x\n")
    with pytest.raises(BehaviorFormatError) as info:
        load_taobao(path)
    assert len(str(info.value)) < 300 and "..." in str(info.value)


def test_skip_bad_lines_counts_and_logs(tmp_path, caplog):
    clean = tmp_path / "clean.csv"
    clean.write_text(TAOBAO_ROWS)
    dirty = tmp_path / "dirty.csv"
    good = TAOBAO_ROWS.splitlines(keepends=True)
    dirty.write_text("".join(good[:2] + ["7,1,2,pv\n"] + good[2:6] + ["8,1,2,like,5\n", "x,1,2,pv,5\n"] + good[6:]))
    with pytest.raises(BehaviorFormatError):
        load_taobao(dirty)
    with caplog.at_level(logging.WARNING, logger="rm_hf.ctr_data"):
        data, vocab = load_taobao(dirty, skip_bad_lines=True)
    expected, clean_vocab = load_taobao(clean)
    assert vocab.bad_lines == 3 and clean_vocab.bad_lines == 0
    assert "Skipped 3 malformed lines" in caplog.text
    assert data["train"].to_list() == expected["train"].to_list()
    assert data["test"].to_list() == expected["test"].to_list()


LINE_PIECES = st.sampled_from(["1", "22", "0", "-3", "1.5", "", " ", "pv", "buy", "cart", "fav", "x", '"', "\x00"])
VALID_LINE = st.builds(
    lambda u, i, c, b, t: f"{u},{i},{c},{b},{t}",
    st.integers(0, 5),
    st.integers(0, 30),
    st.integers(0, 4),
    st.sampled_from(BEHAVIORS),
    st.integers(0, 10**10),
)


def valid_or_mutated(valid: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """A valid line (half the time), the same line cut after some columns and extended with odd pieces, or any
    text."""
    mutated = st.builds(
        lambda line, pieces, cut: ",".join(line.split(",")[:cut] + pieces),
        valid,
        st.lists(LINE_PIECES, max_size=4),
        st.integers(0, 6),
    )
    return st.one_of(valid, st.one_of(mutated, st.text(max_size=30)))


def sometimes_mutated(valid: str) -> st.SearchStrategy[str]:
    """A header or other fixed line, mutated one time in four: a broken header fails every later line."""
    return st.one_of(st.just(valid), st.just(valid), st.just(valid), valid_or_mutated(st.just(valid)))


ANY_LINE = valid_or_mutated(VALID_LINE)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(ANY_LINE, max_size=12), skip=st.booleans())
def test_taobao_reader_parses_or_raises_format_error(tmp_path, lines, skip):
    path = tmp_path / "fuzz.csv"
    path.write_text("\n".join(lines), encoding="utf-8", errors="surrogatepass")
    try:
        data, vocab = load_taobao(path, skip_bad_lines=skip)
    except (BehaviorFormatError, EmptySplitError) as e:
        assert str(path) in str(e)
        return
    for row in rows(data):
        assert 0 < row["target_item"] < vocab.item_vocab_size
        assert all(0 < i < vocab.item_vocab_size for i in row["history_items"])


RATINGS_LINE = st.builds(
    lambda u, m, r, t: f"{u},{m},{r},{t}",
    st.integers(1, 4),
    st.integers(1, 9),  # movie 9 is not in MOVIES
    st.sampled_from(["1.0", "3.5", "4", "5.0"]),
    st.integers(0, 50),
)
MOVIES_LINES = MOVIES.splitlines()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    header=sometimes_mutated("userId,movieId,rating,timestamp"),
    lines=st.lists(valid_or_mutated(RATINGS_LINE), max_size=10),
    movie_line=st.integers(0, len(MOVIES_LINES) - 1).flatmap(
        lambda i: st.tuples(st.just(i), sometimes_mutated(MOVIES_LINES[i]))
    ),
    skip=st.booleans(),
)
def test_movielens_reader_parses_or_raises_format_error(tmp_path, header, lines, movie_line, skip):
    ratings, movies = tmp_path / "ratings.csv", tmp_path / "movies.csv"
    ratings.write_text("\n".join([header, *lines]), encoding="utf-8", errors="surrogatepass")
    position, replacement = movie_line
    movies.write_text(
        "\n".join(MOVIES_LINES[:position] + [replacement] + MOVIES_LINES[position + 1 :]),
        encoding="utf-8",
        errors="surrogatepass",
    )
    try:
        data, vocab = load_movielens(ratings, movies, min_history=0, skip_bad_lines=skip)
    except (BehaviorFormatError, EmptySplitError) as e:
        assert e.path in (str(ratings), str(movies)) and e.path in str(e)
        return
    for row in rows(data):
        assert 0 < row["target_item"] < vocab.item_vocab_size and row["label"] in (0, 1)
        assert all(0 < i < vocab.item_vocab_size for i in row["history_items"])


@st.composite
def behavior_logs(draw) -> list[str]:
    """A header naming the columns in any order (label and behavior optional), then valid or mutated rows."""
    columns = draw(st.permutations(["user", "item", "category", "timestamp", "label", "behavior"]))
    columns = [c for c in columns if c not in ("label", "behavior") or draw(st.booleans())]
    values = {
        "user": st.sampled_from(["alice", "bob", "7"]),
        "item": st.sampled_from(["lamp", "kettle", "sofa"]),
        "category": st.sampled_from(["home", "garden"]),
        "timestamp": st.integers(0, 20).map(str),
        "label": st.sampled_from(["0", "1"]),
        "behavior": st.sampled_from(BEHAVIORS),
    }
    row = st.tuples(*(values[c] for c in columns)).map(",".join)
    header = draw(sometimes_mutated(",".join(columns)))
    return [header, *draw(st.lists(valid_or_mutated(row), max_size=10))]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=behavior_logs(), skip=st.booleans())
def test_behavior_log_reader_parses_or_raises_format_error(tmp_path, lines, skip):
    path = tmp_path / "log.csv"
    path.write_text("\n".join(lines), encoding="utf-8", errors="surrogatepass")
    try:
        data, vocab = load_behavior_log(path, min_history=0, skip_bad_lines=skip)
    except (BehaviorFormatError, EmptySplitError) as e:
        assert e.path == str(path) and str(path) in str(e)
        return
    for row in rows(data):
        assert 0 < row["target_item"] < vocab.item_vocab_size and row["label"] in (0, 1)
        assert all(0 < b < vocab.behavior_vocab_size for b in row["history_behaviors"])


# ---------------------------------------------------------------------------------------------------------
# Empty results

LOG_HEADER = "user,item,category,timestamp\n"


@pytest.mark.parametrize(
    ("loader", "content", "options", "expected"),
    [
        (  # every behaviour of a user in one second: none has an earlier one
            "taobao", "1,11,90,pv,5\n1,12,90,cart,5\n2,13,91,buy,6\n", {},
            "no behaviour has at least min_history=1 strictly earlier behaviours of its user (3 behaviours of 2 users",
        ),
        (  # only user 1 has a sample, so no last behaviour is later than the quantile
            "taobao", "1,11,90,pv,5\n1,12,90,cart,6\n2,13,91,buy,6\n", {},
            "the test split would be empty: no user's last behaviour is later than the split_quantile=0.7 quantile",
        ),
        (
            "movielens", "userId,movieId,rating,timestamp\n1,1,4.0,100\n1,2,3.0,101\n2,3,5.0,100\n", {},
            "no rating has at least min_history=5 strictly earlier ratings of its user (3 ratings of 2 users",
        ),
        (
            "behavior_log", LOG_HEADER + "a,x,c,1\na,y,c,2\nb,x,c,1\nb,z,c,3\n", {},
            "the test split would be empty: test_fraction=0.2 holds out 0 of 2 users with samples",
        ),
        (
            "behavior_log", LOG_HEADER + "a,x,c,1\na,y,c,2\nb,x,c,1\nb,z,c,3\n", {"test_fraction": 1.0},
            "the train split would be empty: test_fraction=1.0 holds out 2 of 2 users with samples",
        ),
        (
            "behavior_log", LOG_HEADER + "a,x,c,1\na,y,c,2\n", {"min_history": 2},
            "no event has at least min_history=2 strictly earlier events of its user (2 events of 1 user read)",
        ),
    ],
    ids=["taobao-one-second", "taobao-one-user", "movielens", "log-none-held-out", "log-all-held-out", "log-one-user"],
)  # fmt: skip
def test_empty_split_says_why(tmp_path, loader, content, options, expected):
    """A file that yields no train or no test sample fails while reading, saying why, not later inside torch."""
    path = tmp_path / "input.csv"
    path.write_text(content)
    with pytest.raises(EmptySplitError) as info:
        if loader == "movielens":
            (tmp_path / "movies.csv").write_text(MOVIES)
            load_movielens(path, tmp_path / "movies.csv", **options)
        else:
            {"taobao": load_taobao, "behavior_log": load_behavior_log}[loader](path, **options)
    assert info.value.path == str(path) and str(info.value).startswith(f"{path}: {expected}")


@pytest.mark.usefixtures("keep_transformers_verbosity")
def test_run_ctr_fails_on_an_empty_split_before_building_the_model(tmp_path, monkeypatch):
    log = tmp_path / "log.csv"
    log.write_text(LOG_HEADER + "".join(f"user{i % 3},item{i},cat,1511544070\n" for i in range(9)))
    monkeypatch.setattr(MeanPoolClickModel, "__init__", lambda self, config: pytest.fail("model built first"))
    args = ["--data", "csv", "--behavior_csv", str(log), "--model", "mean_pool", "--output_dir", str(tmp_path / "out")]
    with pytest.raises(EmptySplitError, match=r"log\.csv: no event has at least min_history=1 strictly earlier"):
        example_main("run_ctr")([*args, "--do_train", "--use_cpu", "--report_to", "none"])


# ---------------------------------------------------------------------------------------------------------
# Synthetic long-history task


def early_and_late(row, num_events):
    categories = row["history_categories"]
    return set(categories[:num_events]), set(categories[num_events:])


def test_generator_is_deterministic_balanced_and_consistent():
    data, vocab = generate_behavior_histories(num_users=200, history_length=100, seed=5)
    again, _ = generate_behavior_histories(num_users=200, history_length=100, seed=5)
    other, _ = generate_behavior_histories(num_users=200, history_length=100, seed=6)
    assert data["train"].to_list() == again["train"].to_list()
    assert data["test"].to_list() == again["test"].to_list()
    assert data["train"]["history_items"] != other["train"]["history_items"]
    assert (len(data["train"]), len(data["test"])) == (160, 40)
    labels = [row["label"] for row in rows(data)]
    assert labels.count(1) == labels.count(0) == 100
    assert (vocab.item_vocab_size, vocab.category_vocab_size) == (501, 21)
    for row in rows(data):
        assert len(row["history_items"]) == 100
        items = row["history_items"] + [row["target_item"]]
        categories = row["history_categories"] + [row["target_category"]]
        assert all(vocab.item_categories[i] == c for i, c in zip(items, categories))
        assert all(0 < i < vocab.item_vocab_size for i in items)


def test_generator_interests_only_early_and_oracles():
    data, _ = generate_behavior_histories(num_users=400, history_length=200, num_interests=3, seed=2)
    samples = rows(data)
    early_correct = late_correct = 0
    for row in samples:
        early, late = early_and_late(row, 20)  # the first 10%
        assert len(early) == 3 and not early & late
        early_correct += (row["target_category"] in early) == bool(row["label"])
        late_correct += (row["target_category"] in set(row["history_categories"][100:])) == bool(row["label"])
    assert early_correct / len(samples) == 1.0
    assert abs(late_correct / len(samples) - 0.5) < 0.1


def test_generator_default_size_is_fast():
    start = time.perf_counter()
    data, _ = generate_behavior_histories()
    assert time.perf_counter() - start < 15
    assert len(data["train"]) + len(data["test"]) == 2000
    assert len(data["test"][0]["history_items"]) == 1000


# ---------------------------------------------------------------------------------------------------------
# Collator and vocabulary


def test_collator_pads_right_and_truncates_oldest():
    features = [
        {"history_items": [1, 2, 3], "history_categories": [4, 5, 6], "history_behaviors": [1, 1, 2],
         "target_item": 7, "target_category": 8, "label": 1},
        {"history_items": [9], "history_categories": [10], "history_behaviors": [4],
         "target_item": 11, "target_category": 12, "label": 0},
    ]  # fmt: skip
    batch = ClickCollator(pad_to_multiple_of=4)(features)
    assert batch["history_items"].tolist() == [[1, 2, 3, 0], [9, 0, 0, 0]]
    assert batch["history_behaviors"].tolist() == [[1, 1, 2, 0], [4, 0, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 0, 0, 0]]
    assert batch["target_item"].tolist() == [7, 11] and batch["target_category"].tolist() == [8, 12]
    assert batch["labels"].dtype == torch.float32 and batch["labels"].tolist() == [1.0, 0.0]
    assert all(batch[k].dtype == torch.long for k in ("history_items", "history_categories", "attention_mask"))

    truncated = ClickCollator(max_history=2)(features)
    assert truncated["history_categories"].tolist() == [[5, 6], [10, 0]]
    assert truncated["attention_mask"].tolist() == [[1, 1], [1, 0]]
    prefix = ClickCollator(history_prefix=2)(features)  # the oldest two: a curriculum's early stage
    assert prefix["history_categories"].tolist() == [[4, 5], [10, 0]]
    assert ClickCollator(history_prefix=2, max_history=1)(features)["history_items"].tolist() == [[2], [9]]


def test_history_curriculum_stages_and_whole_histories_for_evaluation():
    assert ctr_data.parse_history_curriculum("1000:0.4") == [(1000, 0.4)]
    assert ctr_data.parse_history_curriculum("100:0.2,1000:0.5") == [(100, 0.2), (1000, 0.5)]
    for bad in ("1000", "1000:1.0", "0:0.5", "100:0.5,1000:0.2", "a:b"):
        with pytest.raises(ValueError, match="curriculum"):
            ctr_data.parse_history_curriculum(bad)

    collator = ClickCollator()
    curriculum = ctr_data.HistoryPrefixCurriculum(collator, [(100, 0.2), (1000, 0.5)])
    state, control = TrainerState(max_steps=10), TrainerControl()
    curriculum.on_train_begin(None, state, control)
    assert collator.history_prefix == 100
    state.global_step = 3
    curriculum.on_step_end(None, state, control)
    assert collator.history_prefix == 1000
    control.should_evaluate = True  # the flow callback has scheduled an evaluation after this step
    curriculum.on_step_end(None, state, control)
    assert collator.history_prefix is None
    curriculum.on_evaluate(None, state, control)
    assert collator.history_prefix == 1000
    state.global_step, control.should_evaluate = 5, False
    curriculum.on_step_end(None, state, control)
    assert collator.history_prefix is None
    curriculum.on_train_end(None, state, control)
    assert collator.history_prefix is None


def test_collator_on_generated_dataset():
    data, _ = generate_behavior_histories(num_users=8, history_length=30, seed=1)
    batch = ClickCollator(max_history=16)([data["train"][i] for i in range(4)])
    assert batch["history_items"].shape == batch["attention_mask"].shape == (4, 16)
    assert batch["labels"].shape == (4,)


def test_vocab_save_load_round_trip(tmp_path):
    vocab = BehaviorVocab()
    vocab.add("sofa", "furniture")
    vocab.add("42", "home")
    vocab.add("lamp", "home")
    vocab.bad_lines = 2
    written = vocab.save(tmp_path)
    assert written == tmp_path / "behavior_vocab.json"
    assert [p.name for p in tmp_path.iterdir()] == ["behavior_vocab.json"]  # no temporary file left
    loaded = BehaviorVocab.load(tmp_path)
    assert loaded == vocab and loaded.bad_lines == 0
    assert (loaded.item_vocab_size, loaded.category_vocab_size, loaded.behavior_vocab_size) == (4, 3, 5)
    assert loaded.item_categories == [0, 1, 2, 2]
    assert BehaviorVocab.load(vocab.save(tmp_path / "other.json")) == vocab


def saved_vocab(tmp_path) -> Path:
    vocab = BehaviorVocab()
    for item, category in [("sofa", "furniture"), ("42", "home"), ("lamp", "home"), ("café", "food")]:
        vocab.add(item, category)
    return vocab.save(tmp_path)


def assert_usable(vocab: BehaviorVocab) -> None:
    """The ids a model sizes its embeddings by are contiguous and in range."""
    assert sorted(vocab.items.values()) == list(range(1, vocab.item_vocab_size))
    assert sorted(vocab.categories.values()) == list(range(1, vocab.category_vocab_size))
    assert len(vocab.item_categories) == vocab.item_vocab_size and vocab.item_categories[0] == 0
    assert all(0 < c < vocab.category_vocab_size for c in vocab.item_categories[1:])
    assert vocab.behavior_vocab_size > 1


def test_vocab_file_cut_or_changed_anywhere_fails_naming_it_or_loads_usable(tmp_path):
    """Cut short at any byte, the file fails with a ValueError naming it; with any one byte changed, it fails so
    or loads a vocabulary a model can use: never a bare JSONDecodeError or TypeError, never ids out of range."""
    path = saved_vocab(tmp_path)
    data = path.read_bytes()
    for cut in range(len(data)):
        path.write_bytes(data[:cut])
        with pytest.raises(ValueError, match="not JSON") as info:
            BehaviorVocab.load(path)
        assert str(info.value).startswith(f"{path}: cannot load the behaviour vocabulary")
    for position in range(len(data)):
        for byte in b'0-9x"}]\xff':
            path.write_bytes(data[:position] + bytes([byte]) + data[position + 1 :])
            try:
                assert_usable(BehaviorVocab.load(path))
            except ValueError as e:
                assert str(e).startswith(f"{path}: cannot load the behaviour vocabulary: ")


def replaced(**changes):
    return lambda state: {**state, **changes}


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (lambda state: [state], "expected a JSON object with keys items, categories, item_categories, behaviors"),
        (lambda state: {k: v for k, v in state.items() if k != "behaviors"}, "found keys ['items', 'categories',"),
        (replaced(bad_lines=3), "expected a JSON object with keys"),
        (replaced(items=["sofa", "42", "lamp", "café"]), "items must map names to integer ids"),
        (replaced(items={"sofa": "1", "42": 2, "lamp": 3, "café": 4}), "items must map names to integer ids"),
        (replaced(categories={"furniture": True, "home": 2, "food": 3}), "categories must map names to integer"),
        (replaced(behaviors={"pv": 1.0}), "behaviors must map names to integer ids"),
        (replaced(items={"sofa": 1, "42": 2, "lamp": 3, "café": 7}), "items must number its 4 names 1, 2, ..."),
        (replaced(items={"sofa": 1, "42": 2, "lamp": 2, "café": 4}), "items must number its 4 names"),
        (replaced(categories={"furniture": 0, "home": 1, "food": 2}), "categories must number its 3 names"),
        (replaced(item_categories=[0, 1, 2, 2]), "item_categories must be 0 (padding), then a category id"),
        (replaced(item_categories=[1, 1, 2, 2, 3]), "from 1 to 3 for each of the 4 items"),
        (replaced(item_categories=[0, 1, 2, 4, 3]), "item_categories"),
        (replaced(item_categories=[0, 1, 2, None, 3]), "item_categories"),
        (replaced(behaviors={}), "behaviors must map at least one behaviour type to a positive id"),
        (replaced(behaviors={"pv": 0}), "behaviors must map at least one behaviour type to a positive id"),
    ],
    ids=[
        "list", "key-missing", "key-unknown", "items-list", "id-string", "id-bool", "id-float", "id-gap", "id-repeat",
        "id-zero", "item-categories-short", "padding-not-0", "category-unknown", "category-null", "no-behaviours",
        "behaviour-0",
    ],
)  # fmt: skip
def test_inconsistent_vocab_file_says_what_is_wrong(tmp_path, damage, expected):
    """Wrong keys or types, ids with gaps or repeats, item categories that do not fit: each is named, none loads
    (it would size the embeddings wrongly or index past them later)."""
    path = saved_vocab(tmp_path)
    path.write_text(json.dumps(damage(json.loads(path.read_text()))))
    with pytest.raises(ValueError) as info:
        BehaviorVocab.load(tmp_path)
    assert str(info.value).startswith(f"{path}: cannot load the behaviour vocabulary: ")
    assert expected in str(info.value)


def test_vocab_file_that_is_not_utf8_is_named(tmp_path):
    path = saved_vocab(tmp_path)
    path.write_bytes(b"\xff\xfe" + path.read_bytes())
    with pytest.raises(ValueError, match="cannot load the behaviour vocabulary: not UTF-8 text") as info:
        BehaviorVocab.load(path)
    assert str(path) in str(info.value)


# ---------------------------------------------------------------------------------------------------------
# Synthetic task options: early noise and interest drift


def test_generator_options_off_give_the_data_of_before():
    import hashlib

    # digest of this call's output recorded with the generator before early_noise / interest_drift existed
    data, _ = generate_behavior_histories(num_users=20, history_length=50, seed=3)
    again, _ = generate_behavior_histories(num_users=20, history_length=50, seed=3, early_noise=0, interest_drift=0)
    text = json.dumps({split: data[split].to_dict() for split in ("train", "test")}, sort_keys=True)
    assert hashlib.sha256(text.encode()).hexdigest() == (
        "24581a381d8cf1a58e1cb6fb8989f63aed2d786196122e859fb7fd7bd9272e0a"
    )
    assert all(data[split].to_list() == again[split].to_list() for split in ("train", "test"))


def test_generator_early_noise_and_interest_drift_do_what_they_claim():
    # 1 interest, 1 held-out and 1 drift category per user, 4 noise categories; 100 early and 900 late events
    options = {"num_users": 200, "history_length": 1000, "num_items": 70, "num_categories": 7, "num_interests": 1}
    data, _ = generate_behavior_histories(seed=4, early_noise=0.3, interest_drift=0.5, **options)
    again, _ = generate_behavior_histories(seed=4, early_noise=0.3, interest_drift=0.5, **options)
    assert data["train"].to_list() == again["train"].to_list()  # deterministic under the seed
    for row in rows(data):
        categories = row["history_categories"]
        early, late = categories[:100], categories[100:]
        drift = max(set(late), key=late.count)  # 450 drift events against about 112 of each noise category
        assert late.count(drift) == 450 and drift not in early  # interest_drift: a share of the late events
        noise = set(late) - {drift}
        assert sum(c in noise for c in early) == 30  # early_noise: a share of the early events
        assert len(set(early) - noise) == 1  # the other early events all show the one interest
        # the target (an interest or a held-out category, never a drift one) never occurs late: the label is
        # told by the early events alone, and a held-out target nowhere
        assert row["target_category"] not in late
        assert (row["target_category"] in early) == bool(row["label"])


def test_generator_options_are_checked():
    with pytest.raises(ValueError, match="num_categories"):  # no noise category would be left
        generate_behavior_histories(num_users=4, history_length=20, num_categories=3, num_interests=1,
                                    num_items=30, interest_drift=0.5)  # fmt: skip
    with pytest.raises(ValueError, match="early_noise and interest_drift must be in"):
        generate_behavior_histories(num_users=4, history_length=20, early_noise=1.5)
