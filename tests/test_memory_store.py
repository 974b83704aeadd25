"""UserMemoryStore: incremental updates score exactly like the full history, many candidates per request,
save/load round trip, crash-safe saves and clear errors on truncated or corrupt files."""

import os

import pytest
import torch

from rm_hf import RehearsalMemoryForClickPrediction
from rm_hf.memory_store import UserMemoryStore
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
            history_items=items, history_categories=categories, history_behaviors=kinds,
            target_item=candidates, target_category=candidate_categories,
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
        (lambda s: s.predict("u", [ITEMS]), "target_item"),
    ],
)
def test_bad_ids_are_refused_before_they_enter_a_buffer(call, message):
    store = UserMemoryStore(click_model())
    with pytest.raises(ValueError, match=message):
        call(store)
    assert len(store) == 0
