"""UserMemoryStore: incremental updates score exactly like the full history, many candidates per request,
save/load round trip, crash-safe saves, clear errors on truncated, corrupt or unreadable files and on ids that are
not integer ids."""

import json
import logging
import os
import stat
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from rm_hf import RehearsalMemoryForClickPrediction, file_utils
from rm_hf.file_utils import STALE_TEMPORARY_SECONDS
from rm_hf.memory_store import UNSIGNED_IDS_FORMAT, UserMemoryStore, _digest
from tests.conftest import tiny_config

ITEMS, CATEGORIES = 30, 6


def click_model():
    config = tiny_config(item_vocab_size=ITEMS, category_vocab_size=CATEGORIES, item_embedding_dim=8)
    return RehearsalMemoryForClickPrediction(config).eval()  # segment_length 8


def behaviours(length):
    return torch.randint(1, ITEMS, (length,)), torch.randint(1, CATEGORIES, (length,)), torch.randint(1, 5, (length,))


def full_history_logits(model, history, candidates, candidate_categories):
    # the reference: the model's forward pass over the whole history, once per candidate
    count = len(candidates)
    items, categories, kinds = (column[None].expand(count, -1) for column in history)
    with torch.no_grad():
        return model(
            history_items=items,
            history_categories=categories,
            history_behaviors=kinds,
            target_item=candidates,
            target_category=candidate_categories,
        ).logits


def fill(store, user, history, chunks):
    start = 0
    for size in chunks:
        store.update(user, *(column[start : start + size] for column in history))
        start += size


def test_uneven_updates_score_like_the_full_history():
    model = click_model()
    store = UserMemoryStore(model)
    history = behaviours(39)
    candidates, candidate_categories = torch.randint(1, ITEMS, (50,)), torch.randint(1, CATEGORIES, (50,))
    start = 0
    for size in (5, 13, 1, 20):  # segment_length 8: buffers of 5, 2, 3 and 7 pending behaviours
        store.update("alice", *(column[start : start + size] for column in history))
        start += size
        prefix = tuple(column[:start] for column in history)
        expected = full_history_logits(model, prefix, candidates, candidate_categories)
        got = store.logits("alice", candidates, candidate_categories)  # 50 candidates in one request
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
        torch.testing.assert_close(store.predict("alice", candidates, candidate_categories), torch.sigmoid(expected))


def test_users_are_independent_and_unknown_users_get_the_initial_memory():
    model = click_model()
    store = UserMemoryStore(model)
    alice, bob = behaviours(17), behaviours(24)
    fill(store, "alice", alice, [17])
    fill(store, 7, bob, [3, 21])  # ids are keyed by str(): 7 and "7" are one user
    candidates = torch.arange(1, ITEMS)
    for user, history in (("alice", alice), ("7", bob)):
        expected = full_history_logits(model, history, candidates, None)
        torch.testing.assert_close(store.logits(user, candidates), expected, atol=1e-5, rtol=0)
    initial = model.rehearsal_memory.init_memory(len(candidates))
    with torch.no_grad():
        torch.testing.assert_close(store.logits("carol", candidates), model.score(initial, candidates))
    assert len(store) == 2 and "carol" not in store and 7 in store


def test_save_and_load_give_identical_predictions(tmp_path):
    model = click_model()
    store = UserMemoryStore(model)
    for user, chunks in (("a", [8]), ("b", [3]), ("c", [10, 7])):  # no buffer, only a buffer, both
        fill(store, user, behaviours(sum(chunks)), chunks)
    candidates = torch.randint(1, ITEMS, (20,))
    path = store.save(tmp_path / "store.safetensors")
    loaded = UserMemoryStore.load(path, model)
    assert len(loaded) == 3
    for user in ("a", "b", "c", "unknown"):
        torch.testing.assert_close(loaded.predict(user, candidates), store.predict(user, candidates), atol=0, rtol=0)
    # updates continue from the saved buffers
    more = behaviours(6)
    for target in (store, loaded):
        target.update("c", *more)
    torch.testing.assert_close(loaded.logits("c", candidates), store.logits("c", candidates), atol=0, rtol=0)
    empty = UserMemoryStore.load(UserMemoryStore(model).save(tmp_path / "empty.safetensors"), model)
    assert len(empty) == 0


def test_interrupted_save_keeps_the_previous_store(tmp_path, monkeypatch):
    model = click_model()
    store = UserMemoryStore(model)
    fill(store, "alice", behaviours(11), [11])
    candidates = torch.randint(1, ITEMS, (5,))
    before = store.predict("alice", candidates)
    path = store.save(tmp_path / "store.safetensors")

    store.update("alice", *behaviours(9))
    store.update("bob", *behaviours(4))

    def crash(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        store.save(path)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store.safetensors"]  # no temporary file left behind
    reloaded = UserMemoryStore.load(path, model)
    assert "bob" not in reloaded
    torch.testing.assert_close(reloaded.predict("alice", candidates), before, atol=0, rtol=0)


@pytest.mark.parametrize("keep", [0, 5, 60, -10])
def test_truncated_file_raises_value_error_naming_it(tmp_path, keep):
    model = click_model()
    store = UserMemoryStore(model)
    fill(store, "alice", behaviours(13), [13])
    path = store.save(tmp_path / "store.safetensors")
    data = path.read_bytes()
    path.write_bytes(data[:keep])
    with pytest.raises(ValueError, match="store.safetensors"):
        UserMemoryStore.load(path, model)


@pytest.mark.parametrize("where", ["header", "tensors"])
def test_corrupt_file_raises_value_error_naming_it(tmp_path, where):
    model = click_model()
    store = UserMemoryStore(model)
    fill(store, "alice", behaviours(13), [13])
    path = store.save(tmp_path / "store.safetensors")
    data = bytearray(path.read_bytes())
    header_end = 8 + int.from_bytes(data[:8], "little")
    position = 20 if where == "header" else header_end + 100  # inside the JSON header, or inside the memories
    data[position] ^= 0xFF
    path.write_bytes(bytes(data))
    message = "truncated or corrupt" if where == "header" else "do not match the sha256 checksum"
    with pytest.raises(ValueError, match=rf"store\.safetensors.*{message}"):
        UserMemoryStore.load(path, model)


def test_store_for_another_model_shape_is_refused(tmp_path):
    store = UserMemoryStore(click_model())
    fill(store, "alice", behaviours(9), [9])
    path = store.save(tmp_path / "store.safetensors")
    other = RehearsalMemoryForClickPrediction(
        tiny_config(item_vocab_size=ITEMS, category_vocab_size=CATEGORIES, item_embedding_dim=8, num_memory_slots=5)
    )
    with pytest.raises(ValueError, match=r"store.safetensors.*memories of shape"):
        UserMemoryStore.load(path, other)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda s: s.update("u", [1, ITEMS]), r"`items` must lie in \[0, 30\)"),
        (lambda s: s.update("u", [1, 2], categories=[1]), "differ in length"),
        (lambda s: s.update("u", [1, 2], behaviors=[1, 9]), "`behaviors`"),
        (lambda s: s.update("u", [[1, 2]]), "1-D"),
        (lambda s: s.predict("u", [ITEMS]), r"`candidate_items` must lie in \[0, 30\)"),
    ],
)
def test_bad_ids_are_refused_before_they_enter_a_buffer(call, message):
    store = UserMemoryStore(click_model())
    with pytest.raises(ValueError, match=message):
        call(store)
    assert len(store) == 0


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda s: s.update("u", [1.9, 2.7]), "`items` must hold integer ids, got 1.9"),
        (lambda s: s.update("u", [1.0, float("nan")]), "`items` must hold integer ids, got nan"),
        (lambda s: s.update("u", [1, 1e30]), "`items` must hold integer ids, got 1e"),
        (lambda s: s.update("u", [True, False]), "`items` must hold integer ids, got a bool"),
        (lambda s: s.update("u", np.array([True, False])), "`items` must hold integer ids, got torch.bool"),
        (lambda s: s.update("u", [True, 5]), "`items` must hold integer ids, got a bool"),
        (lambda s: s.update("u", torch.tensor([True])), "`items` must hold integer ids, got torch.bool"),
        (lambda s: s.update("u", ["lamp"]), "`items` must be a 1-D sequence of integer ids"),
        (lambda s: s.update("u", [1, 2], categories=torch.tensor([1.0, 2.5])), "`categories` must hold integer"),
        (lambda s: s.update("u", [1, 2], categories=[1, CATEGORIES]), r"`categories` must lie in \[0, 6\)"),
        (lambda s: s.update("u", [1, 2], behaviors=np.array([1.5, 2.0])), "`behaviors` must hold integer ids"),
        (lambda s: s.predict("u", [1.5]), "`candidate_items` must hold integer ids, got 1.5"),
        (lambda s: s.predict("u", torch.tensor([1.0, 40.0])), r"`candidate_items` must lie in \[0, 30\)"),
        (lambda s: s.predict("u", [1, 2], [float("inf"), 1]), "`candidate_categories` must hold integer ids"),
    ],
)
def test_ids_that_are_not_integer_ids_are_refused_naming_the_argument(call, message):
    store = UserMemoryStore(click_model())
    with pytest.raises(ValueError, match=message):
        call(store)
    assert len(store) == 0


def test_integer_ids_of_any_integer_type_are_accepted():
    model = click_model()
    history = behaviours(11)
    candidates = torch.randint(1, ITEMS, (7,))
    reference = UserMemoryStore(model)
    reference.update("u", *history)
    expected = reference.logits("u", candidates)
    as_types = [
        lambda ids: ids.tolist(),
        lambda ids: ids.numpy().astype(np.int32),
        lambda ids: ids.numpy().astype(np.uint64),
        lambda ids: ids.to(torch.int32),
        lambda ids: ids.to(torch.float64),  # integer-valued floats are exact ids
    ]
    for as_type in as_types:
        store = UserMemoryStore(model)
        store.update("u", *(as_type(column) for column in history))
        torch.testing.assert_close(store.logits("u", as_type(candidates)), expected, atol=0, rtol=0)


def saved_store(tmp_path):
    # "alice" and "a1" are one bit from "amice" and "a0": a flip could rename a user or repeat one
    model = click_model()
    store = UserMemoryStore(model)
    for user, length in (("a0", 3), ("a1", 9), ("alice", 2)):
        fill(store, user, behaviours(length), [length])
    return model, store, store.save(tmp_path / "store.safetensors")


def same_users(store, other):
    return list(store._users) == list(other._users) and all(
        torch.equal(memory, other._users[user][0]) and torch.equal(rows, other._users[user][1])
        for user, (memory, rows) in store._users.items()
    )


def test_every_flipped_byte_is_refused_or_harmless(tmp_path):
    model, store, path = saved_store(tmp_path)
    original = path.read_bytes()
    header_end = 8 + int.from_bytes(original[:8], "little")
    damaged = tmp_path / "damaged.safetensors"
    refused = 0
    for position in range(len(original)):
        # each bit, and all 8, of the length prefix and the JSON header; one bit per byte of the tensors, in turn
        masks = [*(1 << bit for bit in range(8)), 0xFF] if position < header_end else [1 << position % 8]
        for mask in masks:
            data = bytearray(original)
            data[position] ^= mask
            damaged.write_bytes(data)
            try:
                loaded = UserMemoryStore.load(damaged, model)
            except ValueError as e:
                assert "damaged.safetensors" in str(e)
                refused += 1
            else:
                assert same_users(loaded, store), f"byte {position} ^ {mask:#04x} loaded a different store"
            damaged.unlink()  # a new file each time: overwriting one in place is 30 times slower on ext4
    assert refused > len(original)  # almost every flip is refused; harmless ones only rewrite JSON layout


def signed_file(path, tensors, metadata, file_format):
    # a snapshot whose checksum is valid: what `save` would write for this metadata (or the /1 format wrote)
    metadata = {**metadata, "format": file_format}
    signed = None if file_format == UNSIGNED_IDS_FORMAT else metadata
    save_file(tensors, path, metadata={**metadata, "sha256": _digest(tensors, signed)})


def read_snapshot(path):
    with safe_open(path, framework="pt") as f:
        return {name: f.get_tensor(name) for name in f.keys()}, {
            name: value for name, value in f.metadata().items() if name not in ("format", "sha256")
        }


@pytest.mark.parametrize("file_format", ["rm_hf.UserMemoryStore/2", UNSIGNED_IDS_FORMAT])
def test_duplicate_user_ids_are_refused_even_with_a_valid_checksum(tmp_path, file_format):
    model, _, path = saved_store(tmp_path)
    tensors, metadata = read_snapshot(path)
    signed_file(path, tensors, {**metadata, "user_ids": json.dumps(["a0", "a1", "a1"])}, file_format)
    with pytest.raises(ValueError, match=r"store\.safetensors.*\['a1'\] appear more than once"):
        UserMemoryStore.load(path, model)


def test_previous_format_loads_with_a_warning_and_saves_in_the_current_one(tmp_path, caplog):
    model, store, path = saved_store(tmp_path)
    signed_file(path, *read_snapshot(path), UNSIGNED_IDS_FORMAT)
    with caplog.at_level(logging.WARNING, logger="rm_hf.memory_store"):
        loaded = UserMemoryStore.load(path, model)
    assert same_users(loaded, store)
    assert "store.safetensors" in caplog.text and "unverified" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="rm_hf.memory_store"):
        assert same_users(UserMemoryStore.load(loaded.save(path), model), store)
    assert caplog.text == ""


@pytest.mark.parametrize(
    "kind, error, message",
    [
        ("directory", ValueError, "is a directory"),
        ("missing", FileNotFoundError, "no such file"),
        ("text", ValueError, "not a readable UserMemoryStore file"),
        ("other safetensors", ValueError, "format None"),
        ("truncated", ValueError, "not a readable UserMemoryStore file"),
    ],
)
def test_unreadable_paths_raise_errors_naming_them(tmp_path, kind, error, message):
    model, _, saved = saved_store(tmp_path)
    path = tmp_path / "snapshot"
    if kind == "directory":
        path.mkdir()
    elif kind == "text":
        path.write_text("user,item\nalice,3\n")
    elif kind == "other safetensors":
        save_file({"weight": torch.zeros(2, 2)}, path)
    elif kind == "truncated":
        path.write_bytes(saved.read_bytes()[:-100])
    with pytest.raises(error, match=rf"snapshot.*{message}"):
        UserMemoryStore.load(path, model)


KILLED_WRITER = """
import importlib.util, sys, time
spec = importlib.util.spec_from_file_location("file_utils", sys.argv[1])
file_utils = importlib.util.module_from_spec(spec)
spec.loader.exec_module(file_utils)
with file_utils.atomic_path(sys.argv[2]) as tmp:
    tmp.write_bytes(b"half a snapshot")
    print(tmp, flush=True)
    time.sleep(600)
"""


def age(path, seconds):
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_save_after_a_killed_save_removes_its_temporary(tmp_path):
    model, store, path = saved_store(tmp_path)
    # a save killed midway; the writer runs file_utils alone, which starts in a fraction of torch's import time
    with subprocess.Popen(
        [sys.executable, "-c", KILLED_WRITER, file_utils.__file__, str(path)], stdout=subprocess.PIPE, text=True
    ) as writer:
        temporary = tmp_path / os.path.basename(writer.stdout.readline().strip())
        writer.kill()  # SIGKILL on POSIX: no cleanup runs in the writer
    assert temporary.is_file() and temporary.name.startswith(".store.safetensors.")
    age(temporary, STALE_TEMPORARY_SECONDS + 60)
    store.save(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store.safetensors"]
    assert same_users(UserMemoryStore.load(path, model), store)


def test_only_stale_temporaries_of_the_same_file_are_removed(tmp_path):
    model, store, path = saved_store(tmp_path)
    stale = ".store.safetensors.k3j4h5g6.tmp"
    kept = [
        ".store.safetensors.live0001.tmp",  # being written now
        ".store.safetensors.bak.k3j4h5g6.tmp",  # a temporary of store.safetensors.bak
        ".other.safetensors.k3j4h5g6.tmp",
        "store.safetensors.k3j4h5g6.tmp",
    ]
    for name in [stale, *kept]:
        (tmp_path / name).write_bytes(b"half a snapshot")
        if name != kept[0]:
            age(tmp_path / name, STALE_TEMPORARY_SECONDS + 60)
    store.save(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*kept, "store.safetensors"])
    (tmp_path / stale).write_bytes(b"half a snapshot")  # loading cleans up too
    age(tmp_path / stale, STALE_TEMPORARY_SECONDS + 60)
    UserMemoryStore.load(path, model)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*kept, "store.safetensors"])


def test_save_fsyncs_the_directory_after_the_rename(tmp_path, monkeypatch):
    _, store, path = saved_store(tmp_path)
    events = []
    fsync, replace = os.fsync, os.replace
    monkeypatch.setattr(os, "replace", lambda *args: (events.append("replace"), replace(*args))[1])

    def recording_fsync(fd):
        events.append("fsync directory" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync file")
        fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    store.save(path)
    assert events == ["fsync file", "replace", "fsync directory"]
