"""Interrupted training resumes exactly: examples/run_qa.py and run_ctr.py continue from a Trainer checkpoint with
the same weights and logged losses as a run that never stopped (rehearsal's random draws included), and a run
killed mid-training continues from its newest complete checkpoint with `--resume_from_checkpoint last`."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

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
    expected = load_file(tmp_path / "straight" / "model.safetensors")
    got = load_file(tmp_path / "resumed" / "model.safetensors")
    assert got.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], atol=1e-6, rtol=1e-5, msg=name)

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


def test_last_checkpoint_is_the_newest_complete_one(tmp_path):
    def resolve(value):
        return checkpoint_to_resume(RehearsalTrainingArguments(output_dir=str(tmp_path), resume_from_checkpoint=value))

    assert resolve("last") is None  # nothing saved yet: start from scratch
    for step, state in ((2, "{}"), (10, "{}"), (12, '{"log_history": ['), (30, None)):
        (tmp_path / f"checkpoint-{step}").mkdir()
        if state is not None:
            (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text(state)
    (tmp_path / "checkpoint-99.tmp").mkdir()  # not a checkpoint name
    assert resolve("last") == str(tmp_path / "checkpoint-10")  # 30 has no state, 12 a truncated one
    assert resolve("some/where") == "some/where" and resolve(None) is None
