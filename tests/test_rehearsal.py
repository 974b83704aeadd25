"""Rehearsal model and history sampler: finite losses, own-memory pairing, no padding sampled, batch size 1,
rows without real items, gradients everywhere, bad fragment weights refused, and a familiarity loss that can
actually be learned."""

import pytest
import torch

from rm_hf import RehearsalMemoryForQuestionAnswering
from rm_hf.history_sampler import RehearsalMemoryHistorySampler, age_buckets, valid_starts, window_sums
from tests.conftest import tiny_config

LABELS = {i: f"answer{i}" for i in range(5)}


def qa_batch(batch=3, length=30):
    ids = torch.randint(0, 50, (batch, length))
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[-1, 5:] = 0  # one very short row
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "question_input_ids": torch.randint(0, 50, (batch, 6)),
        "labels": torch.randint(0, 5, (batch,)),
        "fragment_weights": torch.rand(batch, length),
    }


@pytest.mark.parametrize("mode", ["uniform", "external", "teacher"])
@pytest.mark.parametrize("batch", [1, 3])
def test_losses_finite_positive_and_every_parameter_learns(mode, batch):
    model = RehearsalMemoryForQuestionAnswering(tiny_config(sampler_mode=mode, id2label=LABELS, rehearsal_num_heads=2))
    out = model.train()(**qa_batch(batch))
    terms = [out.loss, out.recollection_loss, out.familiarity_loss] + ([out.sampler_loss] if mode == "teacher" else [])
    for term in terms:
        assert torch.isfinite(term) and term > 0
    assert (out.sampler_loss is None) == (mode != "teacher")
    sum(terms).backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []


@pytest.mark.parametrize("mode", ["uniform", "teacher"])
@pytest.mark.parametrize("empty_rows", [[1], [0, 1, 2]], ids=["one-empty-row", "all-rows-empty"])
def test_rows_without_real_items_rehearse_nothing(mode, empty_rows):
    # e.g. users without history: their items must not be drawn as donors, and an empty batch is not NaN
    model = RehearsalMemoryForQuestionAnswering(tiny_config(sampler_mode=mode, id2label=LABELS, rehearsal_num_heads=2))
    batch = qa_batch()
    batch["attention_mask"][empty_rows] = 0
    out = model.train()(**batch)
    terms = [out.loss, out.recollection_loss, out.familiarity_loss] + ([out.sampler_loss] if mode == "teacher" else [])
    assert all(torch.isfinite(term) for term in terms)
    if len(empty_rows) == 3:
        assert out.recollection_loss == 0 and out.familiarity_loss == 0
    else:
        assert out.recollection_loss > 0 and out.familiarity_loss > 0
    sum(terms).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize(
    "weights, message",
    [(torch.rand(3, 29), "shape"), (torch.full((3, 30), float("nan")), "finite"), (-torch.rand(3, 30), "negative")],
)
def test_bad_fragment_weights_are_refused(weights, message):
    model = RehearsalMemoryForQuestionAnswering(
        tiny_config(sampler_mode="external", id2label=LABELS, rehearsal_num_heads=2)
    )
    with pytest.raises(ValueError, match=f"`fragment_weights`.*{message}"):
        model.train()(**{**qa_batch(), "fragment_weights": weights})


def test_rehearsal_is_off_at_inference():
    model = RehearsalMemoryForQuestionAnswering(tiny_config(id2label=LABELS, rehearsal_num_heads=2)).eval()
    out = model(**qa_batch())
    assert out.recollection_loss is None and out.familiarity_loss is None and out.sampler_loss is None
    assert out.loss is not None


def test_fragments_rehearse_their_own_sequences_memory():
    head = RehearsalMemoryForQuestionAnswering(tiny_config(id2label=LABELS, rehearsal_num_heads=2)).train()
    model, objective = head.rehearsal_memory, head.rehearsal
    batch = qa_batch(batch=3)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    outputs = model(ids, attention_mask=mask, output_item_features=True)

    def per_fragment_familiarity(memory):
        # rerun the rehearser with the same random draws, keeping per-fragment [CLS] states
        torch.manual_seed(1)
        states = {}
        handle = objective.rehearser.familiarity_head.register_forward_hook(lambda m, i, o: states.setdefault("s", o))
        outputs.memory = memory
        objective(model, outputs, {"input_ids": ids, "attention_mask": mask})
        handle.remove()
        return states["s"].view(2, 3, -1)  # (positive/negative, B, J)

    base = per_fragment_familiarity(outputs.memory.detach().clone())
    perturbed_memory = outputs.memory.detach().clone()
    perturbed_memory[1] += 1.0  # change sequence 1's memory only
    perturbed = per_fragment_familiarity(perturbed_memory)
    changed = (base - perturbed).abs().amax(dim=(0, 2))  # per sequence
    assert changed[1] > 1e-4
    assert changed[0] == 0 and changed[2] == 0


def test_valid_starts_never_reach_padding():
    mask = torch.zeros(3, 20, dtype=torch.long)
    mask[0, :20], mask[1, :9], mask[2, :3] = 1, 1, 1
    ok = valid_starts(mask, fragment_length=8)
    assert ok.sum(1).tolist() == [13, 2, 1]  # starts 0..12, 0..1, and 0 for a row shorter than a fragment
    sampler = RehearsalMemoryHistorySampler(tiny_config(rehearsal_fragment_length=8, num_rehearsal_fragments=4))
    for _ in range(20):
        starts = sampler(mask)
        ends = starts + 8
        lengths = mask.sum(1, keepdim=True)
        assert ((ends <= lengths) | (starts == 0)).all()
        assert len(set(starts[0].tolist())) == 4  # distinct fragments where there is room


def test_external_sampler_follows_the_weights():
    mask = torch.ones(1, 100, dtype=torch.long)
    weights = torch.zeros(1, 100)
    weights[0, 60:64] = 1.0  # the only important items
    config = tiny_config(
        sampler_mode="external", rehearsal_fragment_length=4, num_rehearsal_fragments=1, sampler_uniform_floor=0.1
    )
    sampler = RehearsalMemoryHistorySampler(config)
    hits = sum(57 <= sampler(mask, fragment_weights=weights).item() <= 63 for _ in range(200))
    assert hits > 150  # uniform would give 7/97 of 200, about 14


def test_teacher_sampler_draws_where_the_teacher_attends():
    mask = torch.ones(1, 100, dtype=torch.long)
    attention = torch.full((1, 100), 0.2 / 99)
    attention[0, 30] = 0.8
    config = tiny_config(sampler_mode="teacher", rehearsal_fragment_length=4, num_rehearsal_fragments=1)
    sampler = RehearsalMemoryHistorySampler(config)
    hits = sum(sampler(mask, teacher_scores=attention.log()).item() == 30 for _ in range(200))
    assert hits > 120  # 0.9 * 0.8 / 0.994 + 0.1 / 97 of the mass on start 30; uniform would give about 2


def test_age_buckets_are_exact_near_the_end_then_two_per_doubling():
    mask = torch.zeros(1, 40, dtype=torch.long)
    mask[0, :33] = 1  # 33 real items: the first lies 32 back
    buckets = age_buckets(mask)[0]
    assert buckets[32:].tolist() == [0] * 8  # the last item and the padding after it
    assert buckets[25:32].tolist() == [7, 6, 5, 4, 3, 2, 1]
    # 8-11 back: bucket 8; 12-15: 9; 16-22: 10; 23-31: 11; 32: 12
    assert buckets[[24, 21, 20, 17, 16, 10, 9, 1, 0]].tolist() == [8, 8, 9, 9, 10, 10, 11, 11, 12]


def test_window_sums():
    values = torch.arange(1.0, 6.0).view(1, 5)
    assert window_sums(values, 2).tolist() == [[3.0, 5.0, 7.0, 9.0, 5.0]]


def test_familiarity_loss_falls_when_trained_alone():
    torch.manual_seed(0)
    head = RehearsalMemoryForQuestionAnswering(tiny_config(id2label=LABELS, rehearsal_num_heads=2, segment_length=16))
    model, objective = head.rehearsal_memory.train(), head.rehearsal.train()
    optimizer = torch.optim.Adam([*model.parameters(), *objective.parameters()], lr=1e-3)
    # two "worlds": each sequence draws its tokens from its own half of the vocabulary, so items replaced
    # from the other sequence are detectable
    ids = torch.cat([torch.randint(0, 25, (1, 32)), torch.randint(25, 50, (1, 32))])
    losses = []
    # 300 steps: over seeds 0-7 the last ten losses averaged 0.004-0.10 after 290 steps, but up to 0.36 after 240
    for _ in range(300):
        out = model(ids, output_item_features=True)
        loss = objective(model, out, {"input_ids": ids}).familiarity_loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert sum(losses[:10]) / 10 > 0.68  # chance: log 2
    assert sum(losses[-10:]) / 10 < 0.3


def test_familiarity_negatives_hold_only_items_their_sequence_lacks():
    """In long generated stories nearly every sentence of another story also occurs in the story itself: such a
    "negative" is the story's own content. Replacements come from the items the sequence does not hold."""
    head = RehearsalMemoryForQuestionAnswering(tiny_config(id2label=LABELS, rehearsal_num_heads=2))
    rehearser = head.rehearsal.rehearser
    ids = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8], [1, 2, 3, 4, 9, 9, 10, 1]])  # row 1 holds two items row 0 lacks
    mask = torch.ones_like(ids)
    rows, positions = torch.tensor([0]), torch.arange(4).view(1, 1, 4)
    for _ in range(20):
        items, usable = rehearser.donor_items(ids, mask, rows, positions)
        assert usable.all() and set(items.flatten().tolist()) <= {9, 10}
    # features: the same, by identity of the vectors
    table = torch.randn(11, 6)
    items, usable = rehearser.donor_items(table[ids], mask, rows, positions)
    assert usable.all() and all(any(torch.equal(item, table[i]) for i in (9, 10)) for item in items.view(-1, 6))
    # a partner with nothing foreign: the row's own items from outside the fragment (a negative of misplaced items)
    same = torch.stack([ids[0], ids[0].flip(0)])
    items, usable = rehearser.donor_items(same, mask, rows, positions)
    assert usable.all() and set(items.flatten().tolist()) <= {5, 6, 7, 8}


def test_recollection_is_in_units_of_chance_and_copies_of_the_target_are_not_negatives():
    # feature recollection (InfoNCE over the batch's masked items): four masked items, two of them the same sentence
    head = RehearsalMemoryForQuestionAnswering(tiny_config(id2label=LABELS, rehearsal_num_heads=2))
    rehearser = head.rehearsal.rehearser
    targets = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    # a perfect prediction scores 1 / temperature against its target and its copy; counted as a negative, the copy
    # would hold the loss at ln 2 for both copies
    loss = rehearser.info_nce(targets.clone(), targets)
    assert loss.item() < 1e-3
    wrong = rehearser.info_nce(targets[[2, 3, 0, 1]], targets)  # each predicts another item
    assert wrong.item() > 5.0
    # in units of chance: a prediction that prefers no candidate scores exactly 1, whatever the number of candidates
    torch.testing.assert_close(rehearser.info_nce(torch.zeros(4, 3), targets), torch.tensor(1.0))


@pytest.mark.parametrize("fraction, rows", [(1.0, 4), (0.5, 2), (0.1, 1)])
def test_batch_fraction_rehearses_that_share_of_the_sequences(fraction, rows):
    model = RehearsalMemoryForQuestionAnswering(
        tiny_config(id2label=LABELS, rehearsal_num_heads=2, rehearsal_batch_fraction=fraction)
    ).train()
    seen = []
    model.rehearsal.rehearser.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape[0]))
    out = model(**qa_batch(batch=4))
    assert seen == [rows]
    assert torch.isfinite(out.recollection_loss) and torch.isfinite(out.familiarity_loss)
