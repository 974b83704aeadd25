"""Every memory type behind the one interface (`config.memory_type`): streaming equals one pass, save/load gives
identical outputs in both heads, memory size stays within its documented bound, gradients reach every parameter
(rehearsal on), the Trainer logs the memory's own loss, and each type's own rule on hand-made examples."""

import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from rm_hf import (
    RehearsalMemoryForClickPrediction,
    RehearsalMemoryForQuestionAnswering,
    RehearsalMemoryModel,
)
from rm_hf.configuration_rehearsal_memory import MEMORY_TYPES
from rm_hf.ctr_baselines import TargetAttentionClickModel
from rm_hf.memory_interface import detach_memory, reorder_memory
from tests.conftest import HISTORY, click_batch, click_config, tiny_config, train

LABELS = {i: f"answer{i}" for i in range(4)}
NEW_TYPES = [t for t in MEMORY_TYPES if t != "slots"]


def memory_config(memory_type, **overrides):
    return tiny_config(**{"memory_type": memory_type, "memory_capacity": 6, "rehearsal_num_heads": 2, **overrides})


def assert_same_memory(a, b):
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for name in a:
            torch.testing.assert_close(a[name], b[name], msg=name)
    else:
        torch.testing.assert_close(a, b)


def story(batch=3, length=37):
    ids = torch.randint(1, 50, (batch, length))
    mask = torch.ones_like(ids)
    mask[1, 13:] = 0  # a short row, padded on the right
    return ids, mask


@pytest.mark.parametrize("memory_type", MEMORY_TYPES)
def test_streaming_equals_one_pass(memory_type):
    model = RehearsalMemoryModel(memory_config(memory_type)).eval()
    ids, mask = story()
    one_pass = model(ids, attention_mask=mask).memory
    memory = model.init_memory(ids.shape[0])
    for start in range(0, ids.shape[1], 16):  # chunks of two segments
        memory = model.write(memory, ids[:, start : start + 16], attention_mask=mask[:, start : start + 16])
    assert_same_memory(memory, one_pass)


@pytest.mark.parametrize("memory_type", MEMORY_TYPES)
def test_question_answering_save_load_and_answer_from_a_stored_memory(memory_type, tmp_path):
    model = RehearsalMemoryForQuestionAnswering(memory_config(memory_type, id2label=LABELS)).eval()
    ids, mask = story()
    questions = torch.randint(1, 50, (3, 5))
    expected = model(input_ids=ids, attention_mask=mask, question_input_ids=questions).logits
    model.save_pretrained(tmp_path)
    loaded = RehearsalMemoryForQuestionAnswering.from_pretrained(tmp_path).eval()
    assert loaded.config.memory_type == memory_type
    torch.testing.assert_close(
        loaded(input_ids=ids, attention_mask=mask, question_input_ids=questions).logits, expected
    )
    # the story is read once; two questions about row 0 are answered from copies of its memory
    with torch.no_grad():
        memory = loaded.write(None, ids, mask)
        copies = reorder_memory(memory, torch.tensor([0, 0]))
        answers = loaded.answer(copies, torch.stack([questions[0], questions[0]]))
    torch.testing.assert_close(answers, expected[[0, 0]])


@pytest.mark.parametrize("memory_type", MEMORY_TYPES)
def test_click_prediction_save_load_and_score_from_a_stored_memory(memory_type, tmp_path):
    model = RehearsalMemoryForClickPrediction(click_config(memory_type=memory_type, memory_capacity=6)).eval()
    batch = click_batch()
    expected = model(**batch).logits
    model.save_pretrained(tmp_path)
    loaded = RehearsalMemoryForClickPrediction.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(loaded(**batch).logits, expected)
    with torch.no_grad():
        memory = loaded.write(None, *(batch[name] for name in HISTORY))
        scores = loaded.score(memory, batch["target_item"], batch["target_category"])
    torch.testing.assert_close(scores, expected)


@pytest.mark.parametrize("memory_type", NEW_TYPES)
@pytest.mark.parametrize("head", ["qa", "click"])
def test_every_parameter_gets_a_gradient_with_rehearsal_on(memory_type, head):
    if head == "qa":
        model = RehearsalMemoryForQuestionAnswering(memory_config(memory_type, id2label=LABELS)).train()
        ids, mask = story()
        outputs = model(
            input_ids=ids, attention_mask=mask, question_input_ids=ids[:, :5], labels=torch.tensor([0, 1, 2])
        )
    else:
        model = RehearsalMemoryForClickPrediction(click_config(memory_type=memory_type, memory_capacity=6)).train()
        outputs = model(**click_batch())
    terms = [
        outputs.loss,
        outputs.recollection_loss,
        outputs.familiarity_loss,
        outputs.sampler_loss,
        outputs.memory_loss,
    ]
    sum(term for term in terms if term is not None).backward()
    ignored = {"rehearsal_memory.encoder.embeddings.word_embeddings.weight"} if head == "click" else set()
    silent = [
        name for name, p in model.named_parameters() if name not in ignored and (p.grad is None or not p.grad.any())
    ]
    assert not silent


@pytest.mark.parametrize("memory_type", ["expire_span", "key_value"])
def test_trainer_logs_the_memory_loss(memory_type, tmp_path):
    trainer = train(tmp_path, 4, 1, model_config={"memory_type": memory_type, "memory_capacity": 6})
    log = next(entry for entry in trainer.state.log_history if "task_loss" in entry)
    assert math.isfinite(log["memory_loss"]) and log["memory_loss"] >= 0
    if memory_type == "expire_span":  # mean(span / L) starts at the init fraction, times the coefficient
        assert 0.0 < log["memory_loss"] < 0.01 * 0.2


@pytest.mark.parametrize("memory_type", MEMORY_TYPES)
def test_detached_memory_keeps_its_values_without_the_graph(memory_type):
    model = RehearsalMemoryModel(memory_config(memory_type)).train()
    memory = model(story()[0]).memory
    detached = detach_memory(memory)
    tensors = detached.values() if isinstance(detached, dict) else [detached]
    assert not any(tensor.requires_grad for tensor in tensors)
    assert_same_memory(detached, memory)


@pytest.mark.parametrize("memory_type", MEMORY_TYPES)
def test_truncated_backprop_cuts_gradients_to_early_segments_only(memory_type):
    # segments of 8 items: with backprop_segments=2 the final memory's gradient reaches the last block of two
    # segments (items 16-31) and the partial one after it, never segments 0-1; the memory's values do not change
    early, late = torch.randint(1, 25, (3, 16)), torch.randint(25, 50, (3, 21))  # disjoint token ids
    ids = torch.cat([early, late], dim=1)
    # room for every item, so the item-keeping types still hold the early ones when the story ends
    full = RehearsalMemoryModel(memory_config(memory_type, memory_capacity=64)).train()
    truncated = RehearsalMemoryModel(memory_config(memory_type, memory_capacity=64, backprop_segments=2)).train()
    truncated.load_state_dict(full.state_dict())

    def token_gradients(model):
        memory = model(input_ids=ids).memory
        tensors = memory.values() if isinstance(memory, dict) else [memory]
        total = sum(tensor.sum() for tensor in tensors if tensor.requires_grad)
        return memory, torch.autograd.grad(total, model.get_input_embeddings().weight)[0]

    full_memory, full_grad = token_gradients(full)
    truncated_memory, truncated_grad = token_gradients(truncated)
    assert_same_memory(truncated_memory, full_memory)
    assert full_grad[early.unique()].abs().sum() > 0
    assert truncated_grad[early.unique()].abs().sum() == 0
    assert truncated_grad[late.unique()].abs().sum() > 0


def test_a_state_of_another_memory_type_is_refused():
    expire = RehearsalMemoryModel(memory_config("expire_span"))
    kv = RehearsalMemoryModel(memory_config("key_value"))
    ids, _ = story()
    with pytest.raises(ValueError, match="memory"):
        kv(ids, memory=expire.init_memory(ids.shape[0]))
    with pytest.raises(ValueError, match="memory_values"):
        kv(input_ids=ids, memory_values=ids[:, :5])


def wrong_memories(model, batch):
    """Memories that must not be read: from a config with other K / D / capacity, with a dimension dropped, of
    another dtype, for another batch size, or not a memory at all."""
    memory_type = model.config.memory_type
    bad = [
        RehearsalMemoryModel(memory_config(memory_type, num_memory_slots=7, memory_capacity=7)).init_memory(batch),
        RehearsalMemoryModel(memory_config(memory_type, memory_dim=16)).init_memory(batch),
        model.rehearsal_memory.init_memory(batch + 1),
        "memory",
    ]
    good = model.rehearsal_memory.init_memory(batch)
    if isinstance(good, torch.Tensor):
        bad += [good[0], good.double(), good.flatten(1)]
    else:
        name = next(iter(good))
        bad += [
            {**good, name: good[name][0]},
            {**good, name: good[name].double()},
            {k: good[k] for k in list(good)[1:]},
        ]
    return bad


@pytest.mark.parametrize("memory_type", MEMORY_TYPES)
def test_answer_and_score_refuse_a_memory_that_is_not_theirs(memory_type):
    qa = RehearsalMemoryForQuestionAnswering(memory_config(memory_type, id2label=LABELS)).eval()
    questions = torch.randint(1, 50, (3, 5))
    for memory in wrong_memories(qa, 3):
        with pytest.raises(ValueError, match="`memory"):
            qa.answer(memory, questions)
    click = RehearsalMemoryForClickPrediction(click_config(memory_type=memory_type, memory_capacity=6)).eval()
    targets = torch.randint(1, 30, (3, 2))
    for memory in wrong_memories(click, 3):
        with pytest.raises(ValueError, match="`memory"):
            click.score(memory, targets)


# --- Expire-Span -------------------------------------------------------------------------------------------------


def expire_span_model(**overrides):
    values = {"memory_capacity": 64, "expire_span_max_span": 16, "expire_span_ramp": 4, **overrides}
    return RehearsalMemoryModel(tiny_config(memory_type="expire_span", **values)).eval()


def test_expire_span_memory_shrinks_with_short_spans():
    ids = torch.randint(1, 50, (2, 120))
    sizes = {}
    for fraction in (0.05, 0.9):  # initial spans 0.8 and 14.4 items (L = 16, ramp 4)
        memory = expire_span_model(expire_span_init_fraction=fraction)(ids).memory
        sizes[fraction] = memory["valid"].sum(1)
        # an entry lives at most span + ramp items after it was written
        assert (sizes[fraction] <= math.ceil(16 * fraction + 4)).all()
        assert (memory["entries"][~memory["valid"]] == 0).all()  # deleted entries hold nothing
    assert (sizes[0.05] < sizes[0.9]).all()


def test_expire_span_soft_mask_and_capacity():
    model = expire_span_model(memory_capacity=5, expire_span_init_fraction=0.9)  # spans 14.4 > capacity
    memory = model(torch.randint(1, 50, (1, 40))).memory
    assert memory["valid"].sum() == 5 and memory["clock"].item() == 40
    _, weights = model.view_memory(memory)
    remaining = memory["span"] - (40 - memory["position"])
    torch.testing.assert_close(weights, (1 + remaining / 4).clamp(0, 1))
    # overflow removes the entries with the least remaining span: with equal spans, the newest five stay
    assert sorted(memory["position"][0].tolist()) == [35, 36, 37, 38, 39]


# --- LaMemo ------------------------------------------------------------------------------------------------------


def test_lamemo_keeps_the_last_items_and_merges_attention_exactly():
    model = RehearsalMemoryModel(tiny_config(memory_type="lamemo", memory_capacity=12, segment_length=4)).eval()
    lamemo = model.bank
    ids = torch.randint(1, 50, (1, 8))
    memory = model(ids).memory
    assert sorted(memory["position"][0, memory["valid"][0]].tolist()) == list(range(8))
    # an item of the first segment attended to segment 1 when written and looked ahead at segment 2: its cached
    # result must equal one attention over both segments' inputs
    with torch.no_grad():
        features = [
            model.encoder(inputs_embeds=model.embed_items(ids[:, s : s + 4])).last_hidden_state for s in (0, 4)
        ]
        inputs = torch.cat([lamemo.item_projection(f) for f in features], dim=1)  # (1, 8, D)
        direct, direct_norm = lamemo.attend(inputs[:, :1], inputs, torch.ones(1, 8, dtype=torch.bool))
    first = ((memory["position"][0] == 0) & memory["valid"][0]).nonzero().item()
    torch.testing.assert_close(memory["context"][0, first], direct[0, 0])
    torch.testing.assert_close(memory["log_norm"][0, first], direct_norm[0, 0])
    # a longer input keeps only the newest 12 items
    memory = model(torch.randint(1, 50, (1, 30))).memory
    assert sorted(memory["position"][0].tolist()) == list(range(18, 30))


# --- key-value memory ----------------------------------------------------------------------------------------------


def key_value_memory(capacity):
    model = RehearsalMemoryModel(tiny_config(memory_type="key_value", memory_capacity=capacity, key_value_margin=0.1))
    memory = model.bank
    with torch.no_grad():  # keys are the items themselves, so the example controls the cosines
        memory.key_projection.weight.copy_(torch.eye(32))
        memory.key_projection.bias.zero_()
    return memory


def unit(*values):
    vector = torch.zeros(32)
    vector[: len(values)] = torch.tensor(values)
    return F.normalize(vector, dim=0)


def test_key_value_update_rule_on_a_hand_made_example():
    memory = key_value_memory(capacity=2)
    a, b, a_near, c = unit(1, 0), unit(0, 1), unit(1, 0.2), unit(-1, 0)
    items = torch.stack([a, b, a_near, c])[None]  # (1, 4, 32)
    values = torch.tensor([[7, 8, 7, 9]])
    state, loss_sum = memory.write(memory.init_state(1), items, torch.ones(1, 4, dtype=torch.bool), values)
    # a and b fill the two empty entries; a_near's nearest key is a with the same value: the key moves to
    # normalize(a + a_near) and its age resets; c (value 9) then replaces the oldest entry, b
    assert state["values"].tolist() == [[7, 9]]
    torch.testing.assert_close(state["keys"][0, 0], F.normalize(a + a_near, dim=0))
    torch.testing.assert_close(state["keys"][0, 1], c)
    assert state["age"].tolist() == [[1.0, 0.0]]
    # margin loss: only a_near meets both a same-value key (a) and another (b): relu(b.q - a.q + 0.1) = 0 here;
    # c meets no key with its value
    expected = F.relu(b @ a_near - a @ a_near + 0.1)
    torch.testing.assert_close(loss_sum, expected)


def test_key_value_margin_loss_when_the_wrong_key_is_nearer():
    memory = key_value_memory(capacity=4)
    a, b, query = unit(1, 0), unit(0, 1), unit(0.2, 1)  # the query lies next to b but carries a's value
    items = torch.stack([a, b, query])[None]
    state, loss_sum = memory.write(
        memory.init_state(1), items, torch.ones(1, 3, dtype=torch.bool), torch.tensor([[1, 2, 1]])
    )
    torch.testing.assert_close(loss_sum, b @ query - a @ query + 0.1)
    assert state["values"].tolist() == [[1, 2, 1, -1]]  # a miss writes into an empty entry
    # padding items are not written and do not age the memory
    padded, _ = memory.write(state, items[:, :1], torch.zeros(1, 1, dtype=torch.bool), torch.tensor([[5]]))
    assert padded["values"].tolist() == state["values"].tolist() and torch.equal(padded["age"], state["age"])


def test_key_value_read_retrieves_the_top_k_nearest_keys():
    model = RehearsalMemoryModel(tiny_config(memory_type="key_value", memory_capacity=8, key_value_top_k=2)).eval()
    memory = model(torch.randint(1, 50, (2, 20))).memory
    query = torch.randn(2, 3, 32)  # three queries per memory
    entries, weights = model.view_memory(memory, query)
    assert entries.shape == (2, 8, 32) and weights.shape == (2, 3, 8)
    assert ((weights > 0).sum(-1) == 2).all()
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 3))


# today's weight names -> those of earlier checkpoints
BEFORE_MEMORY_TYPES = [("rehearsal_memory.bank.initial_memory", "rehearsal_memory.initial_memory"),
                       ("rehearsal_memory.bank.writer.", "rehearsal_memory.writer.")]  # fmt: skip
BEFORE_OBJECTIVE = [
    ("rehearsal_memory.bank.", "rehearsal_memory.memory."),
    ("rehearsal.rehearser.", "rehearsal_memory.rehearser."),
    ("rehearsal.teacher.query_projection.", "rehearsal_memory.history_sampler.teacher_query."),
    ("rehearsal.teacher.head.", "teacher_head."),
    ("embeddings.item_embeddings.", "item_embeddings."),
    ("embeddings.category_embeddings.", "category_embeddings."),
    ("embeddings.behavior_embeddings.", "behavior_embeddings."),
]


@pytest.mark.parametrize(
    "make, renames",
    [
        (lambda: RehearsalMemoryForQuestionAnswering(tiny_config(id2label=LABELS, use_rehearsal=False)), BEFORE_MEMORY_TYPES),
        (lambda: RehearsalMemoryForQuestionAnswering(memory_config("slots", id2label=LABELS, sampler_mode="teacher")),
         BEFORE_OBJECTIVE),
        (lambda: RehearsalMemoryForClickPrediction(click_config(sampler_mode="teacher")), BEFORE_OBJECTIVE),
        (lambda: TargetAttentionClickModel(click_config()), BEFORE_OBJECTIVE),
    ],
    ids=["qa-before-memory-types", "qa-before-0.2", "click-before-0.2", "baseline-before-0.2"],
)  # fmt: skip
def test_checkpoints_with_earlier_weight_names_load_with_their_weights(tmp_path, make, renames):
    model = make().eval()
    model.save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")

    def old_name(name):
        return next((old + name[len(new) :] for new, old in renames if name.startswith(new)), name)

    old_weights = {old_name(name): weight for name, weight in weights.items()}
    assert len(set(old_weights) - set(weights)) >= 2  # the test renames something
    save_file(old_weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    loaded = type(model).from_pretrained(tmp_path)
    assert loaded.state_dict().keys() == weights.keys()
    for name, weight in weights.items():
        torch.testing.assert_close(loaded.state_dict()[name], weight, msg=name)
    loaded.save_pretrained(tmp_path / "again")  # saved again under today's names
    assert load_file(tmp_path / "again" / "model.safetensors").keys() == weights.keys()


def test_a_checkpoint_with_the_teacher_samplers_former_scorer_loads_without_it(tmp_path):
    model = RehearsalMemoryForQuestionAnswering(memory_config("slots", id2label=LABELS, sampler_mode="teacher"))
    model.save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    scorers = {
        f"{prefix}.scorer.0.weight": torch.zeros(32, 32)
        for prefix in ("rehearsal.sampler", "rehearsal_memory.history_sampler")
    }
    save_file(weights | scorers, tmp_path / "model.safetensors", metadata={"format": "pt"})
    loaded = RehearsalMemoryForQuestionAnswering.from_pretrained(tmp_path)
    assert loaded.state_dict().keys() == weights.keys()
    torch.testing.assert_close(
        loaded.rehearsal.teacher.age_embeddings.weight, weights["rehearsal.teacher.age_embeddings.weight"]
    )


def test_a_base_model_checkpoint_with_its_earlier_training_modules_loads_without_them(tmp_path):
    # before 0.2 the base model built the rehearser and history sampler; `AutoModel` checkpoints carried them
    model = RehearsalMemoryModel(memory_config("slots")).eval()
    model.save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    old = {name.replace("bank.", "memory.", 1): w for name, w in weights.items()}
    old |= {"rehearser.mask_embedding": torch.zeros(32), "history_sampler.scorer.0.weight": torch.zeros(32, 32)}
    save_file(old, tmp_path / "model.safetensors", metadata={"format": "pt"})
    loaded = RehearsalMemoryModel.from_pretrained(tmp_path)
    assert loaded.state_dict().keys() == weights.keys()
    torch.testing.assert_close(loaded.bank.initial_memory, weights["bank.initial_memory"])
