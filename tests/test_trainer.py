"""RehearsalMemoryTrainer: every loss term logged, gradient accumulation does not double the loss,
and evaluation is unaffected by rehearsal."""

import torch
from datasets import Dataset

from rm_hf import RehearsalMemoryForQuestionAnswering
from rm_hf.trainer import RehearsalMemoryTrainer, RehearsalTrainingArguments
from tests.conftest import tiny_config

LABELS = {i: f"answer{i}" for i in range(4)}


def toy_dataset(rows=16, length=24):
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 50, (rows, length), generator=generator)
    return Dataset.from_dict(
        {
            "input_ids": ids.tolist(),
            "attention_mask": [[1] * length] * rows,
            "question_input_ids": torch.randint(1, 50, (rows, 5), generator=generator).tolist(),
            "labels": (ids[:, 0] % 4).tolist(),  # the answer is decided by the first token
        }
    )


def train(tmp_path, batch_size, accumulation, steps=4, model_config=None, **args):
    torch.manual_seed(0)
    model = RehearsalMemoryForQuestionAnswering(
        tiny_config(id2label=LABELS, rehearsal_num_heads=2, **(model_config or {}))
    )
    arguments = RehearsalTrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=accumulation,
        max_steps=steps,
        logging_steps=args.pop("logging_steps", steps),
        learning_rate=1e-3,
        use_cpu=True,
        save_strategy="no",
        report_to="none",
        seed=0,
        data_seed=0,
        disable_tqdm=True,
        **args,
    )
    data = toy_dataset()
    trainer = RehearsalMemoryTrainer(model=model, args=arguments, train_dataset=data, eval_dataset=data)
    trainer.train()
    return trainer


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
