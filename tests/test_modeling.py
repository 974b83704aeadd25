"""The memory machine: config, save/load, streaming, padding, slot diversity, the write gate, gradients, input checks."""

import json

import pytest
import torch
from huggingface_hub.errors import StrictDataclassError
from transformers import AutoConfig, AutoModel, BertConfig, BertModel

from rm_hf import RehearsalMemoryConfig, RehearsalMemoryModel
from tests.conftest import TINY_ENCODER, tiny_config


def random_batch(batch=3, length=30, vocab=50):
    ids = torch.randint(0, vocab, (batch, length))
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[1, 13:] = 0  # a short row, padded on the right
    return ids, mask


def test_config_round_trip_keeps_nested_encoder(tmp_path):
    config = tiny_config(num_memory_slots=6, memory_dim=48, num_memory_heads=3, input_feature_dim=12)
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, RehearsalMemoryConfig)
    assert isinstance(loaded.encoder_config, BertConfig)
    assert loaded.encoder_config.hidden_size == 32 and loaded.encoder_config.vocab_size == 50
    assert (loaded.num_memory_slots, loaded.memory_dim, loaded.num_memory_heads) == (6, 48, 3)
    assert loaded.input_feature_dim == 12


def test_memory_dim_defaults_to_encoder_width():
    assert tiny_config().memory_dim == TINY_ENCODER["hidden_size"]


def test_old_config_without_newer_fields_loads(tmp_path):
    # a config.json written before fields existed must still load with the defaults
    (tmp_path / "config.json").write_text('{"model_type": "rehearsal_memory", "num_memory_slots": 3}')
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert loaded.num_memory_slots == 3 and loaded.segment_length == RehearsalMemoryConfig().segment_length
    assert loaded.slot_addressing == "content"  # the paper's addressing, what every model before the field used


@pytest.mark.parametrize("old, new", [("rehearsal", "slots"), ("kv", "key_value")])
def test_configs_with_earlier_names_load_under_todays(tmp_path, old, new):
    # before 0.2 "rehearsal" named the slot memory as well as the training objective, and kv_* the key-value fields
    (tmp_path / "config.json").write_text(
        f'{{"model_type": "rehearsal_memory", "memory_type": "{old}", "kv_top_k": 3, "kv_margin": 0.2}}'
    )
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert loaded.memory_type == new and (loaded.key_value_top_k, loaded.key_value_margin) == (3, 0.2)
    loaded.save_pretrained(tmp_path / "again")
    saved = (tmp_path / "again" / "config.json").read_text()
    assert f'"memory_type": "{new}"' in saved and '"key_value_top_k": 3' in saved and "kv_top_k" not in saved


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"num_memory_slots": 0}, "num_memory_slots"),
        ({"segment_length": 0}, "segment_length"),
        ({"memory_dim": 30, "num_memory_heads": 4}, "memory_dim"),
        ({"segment_length": 65}, "segment_length"),
        ({"input_feature_dim": 0}, "input_feature_dim"),
        ({"num_reasoning_hops": 0}, "num_reasoning_hops"),
        ({"rehearsal_mask_ratio": 1.5}, "rehearsal_mask_ratio"),
        ({"rehearsal_batch_fraction": 0.0}, "rehearsal_batch_fraction"),
        ({"expire_span_init_fraction": 1}, "expire_span_init_fraction"),
        ({"memory_type": "lstm"}, "memory_type"),
        ({"sampler_mode": "random"}, "sampler_mode"),
        ({"story_items": "words"}, "story_items"),
        ({"slot_write_threshold": 1.0}, "slot_write_threshold"),
        ({"slot_write_threshold": 0.2, "slot_write_gate": False}, "slot_write_threshold"),
    ],
)
def test_invalid_config_values_name_the_field(overrides, field):
    # huggingface_hub's strict dataclass errors: a field of the wrong type or choice, or a validator's ValueError
    with pytest.raises(StrictDataclassError, match=field):
        tiny_config(**overrides)


def test_a_value_assigned_later_is_checked_when_saving(tmp_path):
    config = tiny_config()
    config.num_memory_slots = 0
    with pytest.raises(StrictDataclassError, match="num_memory_slots"):
        config.save_pretrained(tmp_path)


def test_save_load_gives_identical_memory(tmp_path):
    model = RehearsalMemoryModel(tiny_config()).eval()
    ids, mask = random_batch()
    expected = model(ids, attention_mask=mask).memory
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    for loaded in (RehearsalMemoryModel.from_pretrained(tmp_path), AutoModel.from_pretrained(tmp_path)):
        assert type(loaded) is RehearsalMemoryModel
        torch.testing.assert_close(loaded.eval()(ids, attention_mask=mask).memory, expected)


def test_missing_weights_are_initialised_by_init_weights():
    # from_pretrained builds on the meta device: a parameter set only in __init__ would come back as garbage
    config = tiny_config()
    model = RehearsalMemoryModel.from_pretrained(None, config=config, state_dict={})
    memory = model.bank.initial_memory
    assert torch.isfinite(memory).all()
    assert 0.3 < memory.std().item() < 0.7  # initial_memory_std = 0.5
    assert model.bank.writer.gru.weight_hh.abs().max() <= config.memory_dim**-0.5 + 1e-6
    # memory attention projections use fan-in scaling, not the 0.02 default of other linear layers
    assert abs(model.bank.writer.attention.q_proj.weight.std().item() - config.memory_dim**-0.5) < 0.03


def test_checkpoint_saved_before_the_write_gate_computes_what_it_did(tmp_path):
    # a config.json written before `slot_write_gate` existed has no such field: such a model had no gate
    model = RehearsalMemoryModel(tiny_config(slot_write_gate=False)).eval()
    ids, mask = random_batch()
    expected = model(ids, attention_mask=mask).memory
    model.save_pretrained(tmp_path)
    config_file = tmp_path / "config.json"
    saved = json.loads(config_file.read_text())
    del saved["slot_write_gate"]
    config_file.write_text(json.dumps(saved))
    loaded, info = RehearsalMemoryModel.from_pretrained(tmp_path, output_loading_info=True)
    assert loaded.config.slot_write_gate is False and loaded.bank.writer.none_score is None
    assert not info["missing_keys"] and not info["unexpected_keys"]
    torch.testing.assert_close(loaded.eval()(ids, attention_mask=mask).memory, expected)
    assert RehearsalMemoryConfig().slot_write_gate is True  # new models have it


@pytest.mark.parametrize("none_score, change", [(-1e4, "as ungated"), (1e4, "none")])
def test_write_gate_moves_a_slot_by_its_relevance(none_score, change):
    # relevance = sigmoid(logsumexp(scores) - none_score): 1 when "none of these" scores far below every item (the
    # plain GRU update), 0 when far above (the slot keeps its value exactly)
    gated = RehearsalMemoryModel(tiny_config()).eval()
    plain = RehearsalMemoryModel(tiny_config(slot_write_gate=False)).eval()
    plain.load_state_dict(gated.state_dict(), strict=False)
    with torch.no_grad():
        gated.bank.writer.none_score.fill_(none_score)
    ids, mask = random_batch()
    memory = gated(ids, attention_mask=mask).memory
    if change == "none":
        torch.testing.assert_close(memory, gated.init_memory(ids.shape[0]))
    else:
        torch.testing.assert_close(memory, plain(ids, attention_mask=mask).memory)


def test_write_threshold_cuts_the_gate_below_it_and_rescales_the_rest(tmp_path):
    # a slot whose relevance is at or below tau keeps its value exactly; above it, (r - tau) / (1 - tau)
    model = RehearsalMemoryModel(tiny_config()).eval()
    writes = []
    model.bank.writer.register_forward_hook(lambda module, args, output: writes.append(args))
    ids, mask = random_batch()
    before = model(ids, attention_mask=mask).memory
    relevance = model.bank.writer.read(*writes[0])[1]  # (B, K) of the first segment
    tau = relevance.median().item()
    model.config.slot_write_threshold = tau  # set on a built model, as on a loaded one
    thresholded = model.bank.writer.read(*writes[0])[1]
    torch.testing.assert_close(thresholded, (relevance - tau).clamp(min=0) / (1 - tau))
    assert (thresholded == 0).any() and (thresholded > 0).any()
    assert not torch.allclose(model(ids, attention_mask=mask).memory, before)
    with torch.no_grad():
        model.bank.writer.none_score.fill_(3.0)  # every relevance well below 0.5
    model.config.slot_write_threshold = 0.5
    torch.testing.assert_close(model(ids, attention_mask=mask).memory, model.init_memory(ids.shape[0]))
    # it is saved, and can be set when loading a model trained without it
    model.save_pretrained(tmp_path)
    assert RehearsalMemoryModel.from_pretrained(tmp_path).config.slot_write_threshold == 0.5
    assert RehearsalMemoryModel.from_pretrained(tmp_path, slot_write_threshold=0.1).config.slot_write_threshold == 0.1
    assert RehearsalMemoryConfig().slot_write_threshold == 0  # off unless asked for


def test_key_addressing_writes_by_each_slot_fixed_key_not_by_its_state(tmp_path):
    # "key": the write attention asks with the slot's learned key, so how much a slot takes in of a segment is the
    # same whatever it holds; "content" (the default, and what configs saved without the field load as) asks with
    # the state itself
    keyed = RehearsalMemoryModel(tiny_config(slot_addressing="key")).eval()
    assert keyed.bank.writer.slot_keys.shape == (4, 32)
    items = torch.randn(3, 8, 32)
    item_mask = torch.ones(3, 8, dtype=torch.bool)
    state, other_state = keyed.init_memory(3), torch.randn(3, 4, 32)
    relevance = keyed.bank.writer.read(state, items, item_mask)[1]
    torch.testing.assert_close(keyed.bank.writer.read(other_state, items, item_mask)[1], relevance)
    content = RehearsalMemoryModel(tiny_config()).eval()
    assert content.config.slot_addressing == "content" and content.bank.writer.slot_keys is None
    read = content.bank.writer.read
    assert not torch.allclose(read(state, items, item_mask)[1], read(other_state, items, item_mask)[1])
    # the keys are saved and loaded; a missing one is initialised like the initial memory
    ids, mask = random_batch()
    keyed.save_pretrained(tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(loaded(ids, attention_mask=mask).memory, keyed(ids, attention_mask=mask).memory)
    fresh = RehearsalMemoryModel.from_pretrained(None, config=tiny_config(slot_addressing="key"), state_dict={})
    assert 0.3 < fresh.bank.writer.slot_keys.std().item() < 0.7  # initial_memory_std = 0.5
    with pytest.raises(StrictDataclassError):
        tiny_config(slot_addressing="position")


@pytest.mark.parametrize(
    "threshold, link, addressing", [(0.0, False, "content"), (0.5, False, "content"), (0.0, True, "content"),
                                    (0.0, False, "key")]
)  # fmt: skip
def test_streaming_equals_one_pass(threshold, link, addressing):
    config = tiny_config(slot_write_threshold=threshold, link_previous_item=link, slot_addressing=addressing)
    model = RehearsalMemoryModel(config).eval()
    if link:  # a learnt link (it starts at zero, adding nothing)
        torch.nn.init.normal_(model.previous_item_link.weight, std=0.3)
    ids, mask = random_batch(length=37)  # not a multiple of segment_length
    one_pass = model(ids, attention_mask=mask).memory
    memory = model.init_memory(ids.shape[0])
    for start in range(0, ids.shape[1], 16):  # chunks of two segments
        memory = model.write(memory, ids[:, start : start + 16], attention_mask=mask[:, start : start + 16])
    torch.testing.assert_close(memory, one_pass)


@pytest.mark.parametrize("gate", [True, False])
def test_keyed_slots_read_a_block_of_segments_at_once_as_one_by_one(gate, monkeypatch):
    # key addressing reads every segment of a block in one call (`read_segments`); the memory and every gradient
    # are those of reading each segment at its write, padded rows and empty segments included
    model = RehearsalMemoryModel(tiny_config(slot_addressing="key", slot_write_gate=gate)).train()
    ids, mask = random_batch(length=37)
    mask[0, 20:] = 0  # rows end in different segments
    reads = model.bank.read_segments(*model._encode_segments(ids, mask.bool()))  # 5 segments of 8 items
    assert reads["read"].shape == (3, 5, 4, 32) and set(reads) == ({"read", "relevance"} if gate else {"read"})
    assert (reads["read"][1, 2:] == 0).all() and (reads["read"][1, :2] != 0).any()  # row 1: 13 items, two segments
    results = []
    for batched in (True, False):
        if not batched:
            monkeypatch.setattr(model.bank, "read_segments", lambda items, item_mask: None)
        model.zero_grad()
        memory = model(ids, attention_mask=mask).memory
        memory.pow(2).sum().backward()
        results.append((memory, {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}))
    (memory, grads), (expected, expected_grads) = results
    torch.testing.assert_close(memory, expected)
    assert grads.keys() == expected_grads.keys() and "bank.writer.slot_keys" in grads
    for name, grad in grads.items():
        torch.testing.assert_close(grad, expected_grads[name], msg=name)
    content = RehearsalMemoryModel(tiny_config())
    assert content.bank.read_segments(*content._encode_segments(ids, mask.bool())) is None


def test_padded_row_matches_row_alone():
    model = RehearsalMemoryModel(tiny_config()).eval()
    ids, mask = random_batch()
    batched = model(ids, attention_mask=mask).memory
    alone = model(ids[1:2, :13]).memory
    torch.testing.assert_close(batched[1:2], alone, atol=1e-5, rtol=1e-5)


def test_all_padding_segment_keeps_memory():
    model = RehearsalMemoryModel(tiny_config()).eval()
    ids, mask = random_batch(length=16)
    mask[0, 8:] = 0
    first_segment = model(ids[:, :8], attention_mask=mask[:, :8]).memory
    both = model(ids, attention_mask=mask).memory
    torch.testing.assert_close(both[0], first_segment[0])
    assert not torch.allclose(both[2], first_segment[2])


def test_slots_differ_after_writing():
    model = RehearsalMemoryModel(tiny_config(num_memory_slots=6)).eval()
    ids, mask = random_batch(length=64)
    memory = model(ids, attention_mask=mask).memory  # (B, K, D)
    distances = torch.cdist(memory, memory)  # (B, K, K)
    off_diagonal = distances[:, ~torch.eye(6, dtype=torch.bool)]
    assert off_diagonal.min() > 1e-2, "memory slots collapsed into one vector"


def test_every_parameter_gets_a_gradient():
    # the rehearsal modules learn from rehearsal losses (tests/test_rehearsal.py), not from the memory alone
    configs = (tiny_config(use_rehearsal=False), tiny_config(use_rehearsal=False, slot_addressing="key"),
               tiny_config(use_rehearsal=False, input_feature_dim=7))  # fmt: skip
    for config in configs:
        model = RehearsalMemoryModel(config).train()
        if config.input_feature_dim:
            memory = model(input_features=torch.randn(2, 20, 7)).memory
            unused = {"encoder.embeddings.word_embeddings.weight"}  # features bypass the token table
        else:
            memory = model(torch.randint(0, 50, (2, 20))).memory
            unused = set()
        memory.pow(2).sum().backward()
        missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
        assert set(missing) == unused


def test_feature_inputs_stream_like_one_pass():
    model = RehearsalMemoryModel(tiny_config(input_feature_dim=7)).eval()
    features = torch.randn(2, 24, 7)
    memory = model.write(model.init_memory(2), input_features=features[:, :8])
    memory = model.write(memory, input_features=features[:, 8:])
    torch.testing.assert_close(memory, model(input_features=features).memory)


def test_item_features_on_request():
    model = RehearsalMemoryModel(tiny_config()).eval()
    ids, mask = random_batch(length=20)
    out = model(ids, attention_mask=mask, output_item_features=True)
    assert out.item_features.shape == (3, 20, 32)
    assert out.item_features[1, 13:].abs().sum() == 0  # the short row's padded tail
    assert model(ids, attention_mask=mask).item_features is None


def test_encoder_has_no_unused_pooler():
    assert RehearsalMemoryModel(tiny_config()).encoder.pooler is None


def test_from_encoder_pretrained_loads_the_saved_encoder(tmp_path):
    encoder = BertModel(BertConfig(**TINY_ENCODER))
    encoder.save_pretrained(tmp_path)
    model = RehearsalMemoryModel.from_encoder_pretrained(str(tmp_path), num_memory_slots=5, segment_length=8)
    assert model.config.num_memory_slots == 5
    saved = {k: v for k, v in encoder.state_dict().items() if not k.startswith("pooler.")}
    loaded = model.encoder.state_dict()
    assert saved.keys() == loaded.keys()
    for key, value in saved.items():
        torch.testing.assert_close(loaded[key], value, msg=key)
    assert torch.isfinite(model.bank.initial_memory).all() and model.bank.initial_memory.std() > 0.3


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda m: m(), "exactly one"),
        (lambda m: m(torch.zeros(2, 5, dtype=torch.long), input_features=torch.zeros(2, 5, 7)), "exactly one"),
        (lambda m: m(input_features=torch.zeros(2, 5, 7)), "configured for token ids"),
        (lambda m: m(torch.zeros(2, 5, dtype=torch.long), attention_mask=torch.ones(2, 6)), "attention_mask"),
        (lambda m: m.write(torch.zeros(2, 3, 32), torch.zeros(2, 5, dtype=torch.long)), "memory"),
        (lambda m: m(torch.full((2, 5), 50)), r"\[0, 50\)"),
        (lambda m: m(torch.zeros(2, 0, dtype=torch.long)), "empty"),
    ],
)
def test_bad_inputs_get_clear_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call(RehearsalMemoryModel(tiny_config()))


def test_bad_features_get_clear_errors():
    model = RehearsalMemoryModel(tiny_config(input_feature_dim=7))
    with pytest.raises(ValueError, match=r"\(batch, length, 7\)"):
        model(input_features=torch.zeros(2, 5, 6))
    with pytest.raises(ValueError, match="NaN or Inf"):
        model(input_features=torch.full((2, 5, 7), float("nan")))


def test_previous_item_link_adds_the_item_before_within_a_segment(tmp_path):
    assert RehearsalMemoryModel(tiny_config()).previous_item_link is None  # off unless asked for: no new weights
    model = RehearsalMemoryModel(tiny_config(link_previous_item=True)).eval()
    link = model.previous_item_link
    items = torch.randn(2, 4, link.weight.shape[0])  # 2 segments of 4 items
    # at the start it adds nothing: a new model writes what it would write without the link
    torch.testing.assert_close(link(items), items)
    ids, mask = random_batch()
    unlinked = RehearsalMemoryModel(tiny_config())
    unlinked.load_state_dict(model.state_dict(), strict=False)
    unlinked_memory = unlinked.eval()(ids, attention_mask=mask).memory
    torch.testing.assert_close(model(ids, attention_mask=mask).memory, unlinked_memory)
    # once learnt (here the identity), each item gets the one before it; a segment's first item is left as it is
    with torch.no_grad():
        link.weight.copy_(torch.eye(link.weight.shape[0]))
    linked = link(items)
    torch.testing.assert_close(linked[:, 0], items[:, 0])
    torch.testing.assert_close(linked[:, 1:], items[:, 1:] + items[:, :-1])
    # it changes what is written, and it is saved and loaded with the model
    assert not torch.allclose(model(ids, attention_mask=mask).memory, unlinked_memory)
    model.save_pretrained(tmp_path)
    loaded = RehearsalMemoryModel.from_pretrained(tmp_path).eval()
    assert loaded.config.link_previous_item
    torch.testing.assert_close(loaded(ids, attention_mask=mask).memory, model(ids, attention_mask=mask).memory)
