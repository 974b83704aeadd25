"""Interrupted training resumes exactly: examples/run_qa.py and run_ctr.py continue from a Trainer checkpoint with
the same weights and logged losses as a run that never stopped (rehearsal's random draws included), a run killed
mid-training continues from its newest complete checkpoint with `--resume_from_checkpoint last` (passing over one
with a file missing or cut short), and a finished run started again trains no further."""

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

from rm_hf.trainer import RehearsalTrainingArguments, checkpoint_to_resume
from tests.conftest import ROOT, example_main

COMMON = ["--logging_steps", "1", "--use_cpu", "--report_to", "none", "--disable_tqdm", "true", "--seed", "3"]
# 24 stories in batches of 8: three steps per epoch, so step 4 lies inside the second epoch.
QA_RUN = [
    "--num_train_stories", "24", "--num_eval_stories", "8", "--story_length", "8", "--hidden_size", "32",
    "--num_memory_slots", "4", "--segment_length", "16", "--per_device_train_batch_size", "8", *COMMON,
]  # fmt: skip
# About 38 training users in batches of 8: five steps per epoch. The teacher sampler adds its own loss term.
CTR_RUN = [
    "--data", "synthetic", "--num_users", "48", "--history_length", "40", "--num_items", "20",
    "--num_categories", "8", "--model", "rm", "--sampler_mode", "teacher", "--num_memory_slots", "4",
    "--segment_length", "8", "--item_embedding_dim", "8", "--hidden_size", "16", "--num_layers", "1",
    "--num_attention_heads", "2", "--do_train", "--per_device_train_batch_size", "8", *COMMON,
]  # fmt: skip
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}


def step_logs(checkpoint: Path) -> list[dict]:
    """The per-step entries of a checkpoint's log history (the end-of-training summary is not saved in one)."""
    return json.loads((checkpoint / "trainer_state.json").read_text())["log_history"]


def assert_same_weights(got: Path, expected: Path):
    got, expected = load_file(got), load_file(expected)
    assert got.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], atol=1e-6, rtol=1e-5, msg=name)


def damage(path: Path, how: str):
    """Delete `path`, or cut it to half its length as a crash while writing it would."""
    if how == "missing":
        path.unlink()
    else:
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.usefixtures("keep_transformers_verbosity")
@pytest.mark.parametrize("script, args", [("run_qa", QA_RUN), ("run_ctr", CTR_RUN)])
def test_resumed_run_repeats_the_uninterrupted_one(tmp_path, script, args):
    main = example_main(script)
    args = [*args, "--max_steps", "8", "--save_steps", "4"]
    main(["--output_dir", str(tmp_path / "straight"), *args])
    # The straight run's step-4 checkpoint is exactly what a run stopped after step 4 leaves behind.
    halfway = tmp_path / "straight" / "checkpoint-4"
    main(["--output_dir", str(tmp_path / "resumed"), *args, "--resume_from_checkpoint", str(halfway)])

    straight = step_logs(tmp_path / "straight" / "checkpoint-8")
    assert [entry["step"] for entry in straight] == list(range(1, 9))
    assert {"loss", "recollection_loss", "familiarity_loss"} <= straight[-1].keys()
    assert step_logs(tmp_path / "resumed" / "checkpoint-8") == straight
    assert_same_weights(tmp_path / "resumed" / "model.safetensors", tmp_path / "straight" / "model.safetensors")

    # Without its RNG state the same checkpoint draws other rehearsal fragments (and dropout masks): the
    # comparison above does see that randomness.
    blind = tmp_path / "without-rng"
    shutil.copytree(halfway, blind)
    (blind / "rng_state.pth").unlink()
    main(["--output_dir", str(tmp_path / "blind"), *args, "--resume_from_checkpoint", str(blind)])
    assert step_logs(tmp_path / "blind" / "checkpoint-8")[4:] != straight[4:]


# Runs an example with every training step slowed down, so the test can kill it between two checkpoints.
SLOW_RUN = """
import runpy, sys, time
from rm_hf.trainer import RehearsalMemoryTrainer

training_step = RehearsalMemoryTrainer.training_step

def slow_training_step(self, *args, **kwargs):
    time.sleep(0.5)
    return training_step(self, *args, **kwargs)

RehearsalMemoryTrainer.training_step = slow_training_step
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.mark.slow
def test_killed_run_continues_from_its_newest_complete_checkpoint(tmp_path):
    output = tmp_path / "qa"
    command = [
        "examples/run_qa.py", "--output_dir", str(output), *QA_RUN, "--max_steps", "6", "--save_steps", "2",
        "--resume_from_checkpoint", "last",  # nothing to resume yet: a fresh start
    ]  # fmt: skip
    with open(tmp_path / "killed.log", "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-c", SLOW_RUN, *command], cwd=ROOT, env=ENV, stdout=log, stderr=log
        )
        deadline = time.monotonic() + 300
        while not (output / "checkpoint-2" / "trainer_state.json").exists():
            assert process.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        assert process.wait() == -signal.SIGKILL
    assert not (output / "model.safetensors").exists()  # it died before the end of training
    complete = max(int(path.parent.name.split("-")[1]) for path in output.glob("checkpoint-*/trainer_state.json"))
    assert complete < 6
    # A later checkpoint that a crash cut short while saving: no trainer_state.json, half a weights file.
    (output / "checkpoint-5").mkdir()
    (output / "checkpoint-5" / "model.safetensors").write_bytes(b"\x00" * 10)

    result = subprocess.run(
        [sys.executable, *command], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Passing over" in result.stderr and "checkpoint-5" in result.stderr
    assert f"and global step {complete}" in result.stderr  # Trainer's "Resuming training from checkpoint with ..."
    assert [entry["step"] for entry in step_logs(output / "checkpoint-6")] == list(range(1, 7))
    assert json.loads((output / "all_results.json").read_text())["train_runtime"] > 0
    assert (output / "model.safetensors").exists()


@pytest.fixture(scope="module")
def straight_qa_run(tmp_path_factory) -> Path:
    """A 12-step run of run_qa.py with a checkpoint every 4 steps, for the tests that damage its checkpoints."""
    output = tmp_path_factory.mktemp("straight")
    verbosity = transformers.logging.get_verbosity()
    example_main("run_qa")(["--output_dir", str(output), *QA_RUN, "--max_steps", "12", "--save_steps", "4"])
    transformers.logging.set_verbosity(verbosity)
    return output


@pytest.mark.usefixtures("keep_transformers_verbosity")
@pytest.mark.parametrize(
    "name, how",
    [
        ("optimizer.pt", "missing"),
        ("scheduler.pt", "missing"),
        ("rng_state.pth", "missing"),
        ("model.safetensors", "truncated"),
        ("optimizer.pt", "truncated"),
    ],
)
def test_damaged_newest_checkpoint_is_passed_over(tmp_path, caplog, straight_qa_run, name, how):
    caplog.set_level(logging.INFO, logger="rm_hf.trainer")
    # A run stopped after step 8, whose last checkpoint lacks a file or has one cut short (as a crash while saving
    # or deleting it, a full disk or an unfinished copy leaves it; transformers writes every file in place).
    for step in (4, 8):
        shutil.copytree(straight_qa_run / f"checkpoint-{step}", tmp_path / f"checkpoint-{step}")
    damage(tmp_path / "checkpoint-8" / name, how)
    args = [*QA_RUN, "--max_steps", "12", "--save_steps", "4", "--resume_from_checkpoint", "last"]
    example_main("run_qa")(["--output_dir", str(tmp_path), *args])

    assert f"Passing over {tmp_path / 'checkpoint-8'}: {name} is" in caplog.text
    assert f"Resuming from {tmp_path / 'checkpoint-4'}" in caplog.text
    # steps 5 to 8 are trained again, exactly as the first time
    assert step_logs(tmp_path / "checkpoint-12") == step_logs(straight_qa_run / "checkpoint-12")
    assert_same_weights(tmp_path / "model.safetensors", straight_qa_run / "model.safetensors")


@pytest.mark.usefixtures("keep_transformers_verbosity")
def test_restarting_a_finished_run_trains_no_further(tmp_path):
    # 8 steps end inside the third epoch (three steps per epoch), where Trainer used to take a ninth step on
    # restart; at a constant learning rate that step would change the weights.
    args = [*QA_RUN, "--max_steps", "8", "--save_steps", "4", "--lr_scheduler_type", "constant"]
    command = ["--output_dir", str(tmp_path), *args, "--resume_from_checkpoint", "last"]
    main = example_main("run_qa")
    main(command)
    (tmp_path / "model.safetensors").rename(tmp_path / "finished.safetensors")
    main(command)  # a retried job

    assert sorted(path.name for path in tmp_path.glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-8"]
    assert_same_weights(tmp_path / "model.safetensors", tmp_path / "finished.safetensors")
    assert "for 8 steps" in (tmp_path / "README.md").read_text()  # the model card, written again


CHECKPOINT_FILES = ["trainer_state.json", "model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth"]


def fake_checkpoint(folder: Path, step: int, rng_files=("rng_state.pth",)) -> Path:
    """A folder holding the files Trainer writes into `checkpoint-{step}`, in their formats but tiny."""
    folder.mkdir()
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step, "log_history": []}))
    save_file({"weight": torch.zeros(64)}, folder / "model.safetensors")
    for name in ("optimizer.pt", "scheduler.pt", *rng_files):
        torch.save({"state": torch.zeros(64)}, folder / name)
    return folder


def resolve(output_dir: Path, value: str | None = "last", **kwargs) -> str | None:
    args = RehearsalTrainingArguments(output_dir=str(output_dir), resume_from_checkpoint=value, **kwargs)
    return checkpoint_to_resume(args)


@pytest.mark.parametrize("how", ["missing", "truncated"])
@pytest.mark.parametrize("name", CHECKPOINT_FILES)
def test_last_checkpoint_is_the_newest_complete_one(tmp_path, caplog, name, how):
    assert resolve(tmp_path) is None  # nothing saved yet: start from scratch
    assert "Passing over" not in caplog.text and "No complete" not in caplog.text
    fake_checkpoint(tmp_path / "checkpoint-2", 2)
    fake_checkpoint(tmp_path / "checkpoint-10", 10)
    damage(fake_checkpoint(tmp_path / "checkpoint-12", 12) / name, how)
    fake_checkpoint(tmp_path / "checkpoint-99.tmp", 99)  # not a checkpoint name

    assert resolve(tmp_path) == str(tmp_path / "checkpoint-10")
    problem = "missing" if how == "missing" else "damaged ("
    assert f"Passing over {tmp_path / 'checkpoint-12'}: {name} is {problem}" in caplog.text
    # A checkpoint named on the command line is used as it is, but with the same warning.
    assert resolve(tmp_path, str(tmp_path / "checkpoint-12")) == str(tmp_path / "checkpoint-12")
    assert f"Resuming from {tmp_path / 'checkpoint-12'} although {name} is {problem}" in caplog.text
    assert resolve(tmp_path, None) is None

    for step in (2, 10):
        damage(tmp_path / f"checkpoint-{step}" / name, how)
    assert resolve(tmp_path) is None
    assert f"No complete checkpoint in {tmp_path}: training starts from scratch." in caplog.text


def test_checkpoint_files_required_follow_the_run(tmp_path, caplog, monkeypatch):
    fake_checkpoint(tmp_path / "checkpoint-4", 4)
    (tmp_path / "checkpoint-4" / "trainer_state.json").write_text(json.dumps({"global_step": 3}))
    assert resolve(tmp_path) is None
    assert f"Passing over {tmp_path / 'checkpoint-4'}: its trainer_state.json is at step 3." in caplog.text

    # Under DDP every process saves its own RNG state, and each must find all of them to choose alike.
    fake_checkpoint(tmp_path / "checkpoint-8", 8, rng_files=("rng_state_0.pth", "rng_state_1.pth"))
    fake_checkpoint(tmp_path / "checkpoint-12", 12, rng_files=("rng_state_0.pth",))
    monkeypatch.setattr(RehearsalTrainingArguments, "world_size", property(lambda self: 2))
    assert resolve(tmp_path) == str(tmp_path / "checkpoint-8")
    assert f"Passing over {tmp_path / 'checkpoint-12'}: rng_state_1.pth is missing." in caplog.text

    # With --save_only_model, Trainer saves the weights and its state alone; fp16 adds a scaler.pt when there is one.
    monkeypatch.undo()
    for name in ("optimizer.pt", "scheduler.pt", "rng_state_0.pth", "rng_state_1.pth"):
        (tmp_path / "checkpoint-8" / name).unlink()
    assert resolve(tmp_path, save_only_model=True) == str(tmp_path / "checkpoint-12")
    (tmp_path / "checkpoint-12" / "scaler.pt").write_bytes(b"PK")
    assert resolve(tmp_path, save_only_model=True) == str(tmp_path / "checkpoint-8")
    assert "scaler.pt is damaged" in caplog.text
