"""RehearsalMemoryTrainer: every loss term logged, gradient accumulation does not double the loss,
evaluation is unaffected by rehearsal, the rehearsal weights' warm-up and decay, and the reader's linear start."""

import pytest
from transformers import TrainingArguments

from rm_hf.modeling_rehearsal_memory import RehearsalMemoryReader
from rm_hf.trainer import RehearsalTrainingArguments, rehearsal_scale
from tests.conftest import train


def test_every_term_is_logged_and_adds_up(tmp_path):
    trainer = train(tmp_path, batch_size=4, accumulation=1, recollection_weight=1.0, familiarity_weight=0.5)
    log = next(entry for entry in trainer.state.log_history if "task_loss" in entry)
    for name in ("recollection_loss", "familiarity_loss"):
        assert log[name] > 0
    total = log["task_loss"] + log["recollection_loss"] + 0.5 * log["familiarity_loss"]
    assert abs(log["loss"] - total) < 0.02 * total


def test_gradient_accumulation_does_not_scale_the_logged_loss(tmp_path):
    # equal effective batch: 8 x 1 and 4 x 2; the rehearsal draws differ, so compare within a tolerance
    single = train(tmp_path / "a", batch_size=8, accumulation=1, steps=1, logging_steps=1)
    accumulated = train(tmp_path / "b", batch_size=4, accumulation=2, steps=1, logging_steps=1)
    loss_single = single.state.log_history[0]["loss"]
    loss_accumulated = accumulated.state.log_history[0]["loss"]
    assert abs(loss_accumulated - loss_single) < 0.02 * loss_single  # the trap doubles it


def test_evaluation_has_no_rehearsal_terms(tmp_path):
    trainer = train(tmp_path, batch_size=4, accumulation=1, steps=2)
    metrics = trainer.evaluate()
    assert "eval_task_loss" in metrics and "eval_recollection_loss" not in metrics
    assert abs(metrics["eval_loss"] - metrics["eval_task_loss"]) < 1e-4


def test_rehearsal_scale_warms_up_then_decays(tmp_path):
    def scales(**schedule):
        args = RehearsalTrainingArguments(output_dir=str(tmp_path), use_cpu=True, **schedule)
        return [rehearsal_scale(args, step) for step in (0, 50, 100, 150, 200, 250, 300)]

    assert scales() == [1.0] * 7
    assert scales(rehearsal_warmup_steps=100) == [0.0, 0.5, 1.0, 1.0, 1.0, 1.0, 1.0]
    # full until step 100, then down to 0.2 over 100 steps, and kept there
    assert scales(rehearsal_decay_start=100, rehearsal_decay_steps=100, rehearsal_final_ratio=0.2) == pytest.approx(
        [1.0, 1.0, 1.0, 0.6, 0.2, 0.2, 0.2]
    )
    assert scales(rehearsal_decay_start=150) == [1.0, 1.0, 1.0, 0.25, 0.25, 0.25, 0.25]  # a step down
    # both: the warm-up's rise times the decay's fall
    both = scales(rehearsal_warmup_steps=100, rehearsal_decay_start=50, rehearsal_decay_steps=100)
    assert both == pytest.approx([0.0, 0.5, 0.625, 0.25, 0.25, 0.25, 0.25])
    assert rehearsal_scale(TrainingArguments(output_dir=str(tmp_path), use_cpu=True), 10) == 1.0


@pytest.mark.parametrize(
    "schedule, named",
    [
        ({"rehearsal_decay_start": -1}, "rehearsal_decay_start"),
        ({"rehearsal_decay_steps": -5}, "rehearsal_decay_steps"),
        ({"rehearsal_final_ratio": 1.5}, "rehearsal_final_ratio"),
    ],
)
def test_a_bad_rehearsal_schedule_is_refused(tmp_path, schedule, named):
    with pytest.raises(ValueError, match=named):
        RehearsalTrainingArguments(output_dir=str(tmp_path), use_cpu=True, **schedule)


def test_a_decay_to_zero_leaves_the_task_loss(tmp_path):
    # the rehearsal terms are still computed and logged, but weigh nothing in the loss from step 0
    trainer = train(tmp_path, batch_size=4, accumulation=1, rehearsal_decay_start=0, rehearsal_final_ratio=0.0)
    log = next(entry for entry in trainer.state.log_history if "task_loss" in entry)
    assert log["recollection_loss"] > 0 and log["familiarity_loss"] > 0
    assert log["loss"] == pytest.approx(log["task_loss"], rel=1e-5)


def test_linear_start_reads_without_the_softmax_for_its_steps_in_training_only(tmp_path, monkeypatch):
    seen = []  # (training?, linear?) at each read
    forward = RehearsalMemoryReader.forward

    def spy(self, *args, **kwargs):
        seen.append((self.training, self.linear_reading))
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(RehearsalMemoryReader, "forward", spy)
    trainer = train(tmp_path / "a", batch_size=4, accumulation=1, steps=4, linear_start_steps=2)
    in_training = [linear for training, linear in seen if training]
    assert len(in_training) % 4 == 0  # the same reads every step
    per_step = len(in_training) // 4
    assert in_training == [True] * (2 * per_step) + [False] * (2 * per_step)
    assert trainer.model.reader.linear_reading is False
    seen.clear()
    trainer.evaluate()  # evaluation reads as the saved model will, with the softmax
    assert seen and not any(linear for _, linear in seen)
    # a run that ends inside its linear start still leaves a model that reads with the softmax
    trainer = train(tmp_path / "b", batch_size=4, accumulation=1, steps=2, linear_start_steps=10)
    assert trainer.model.reader.linear_reading is False
    with pytest.raises(ValueError, match="linear_start_steps"):
        RehearsalTrainingArguments(output_dir=str(tmp_path), use_cpu=True, linear_start_steps=-1)
