"""RehearsalMemoryTrainer: every loss term logged, gradient accumulation does not double the loss,
and evaluation is unaffected by rehearsal."""

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
