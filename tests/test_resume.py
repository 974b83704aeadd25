"""Interrupted training resumes exactly: examples/run_qa.py and run_ctr.py continue from a Trainer checkpoint with
the same weights and logged losses as a run that never stopped (rehearsal's random draws included), a run killed
mid-training continues from its newest complete checkpoint with `--resume_from_checkpoint last` (passing over one
with a file missing or cut short), and a finished run started again trains no further and keeps its training
metrics. A run is its arguments (`rm_hf.run_record`): the scripts refuse an output folder holding another run (or
anything else) unless `--overwrite_output_dir` is given, and `last` passes over the checkpoints of another run."""

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

from rm_hf.run_record import RUN_ARGUMENTS_NAME, run_arguments
from rm_hf.script_utils import train_metrics
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
        while not (output / "checkpoint-2" / RUN_ARGUMENTS_NAME).exists():
            assert process.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        assert process.wait() == -signal.SIGKILL
    assert not (output / "model.safetensors").exists()  # it died before the end of training
    complete = max(int(path.parent.name.split("-")[1]) for path in output.glob(f"checkpoint-*/{RUN_ARGUMENTS_NAME}"))
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
    shutil.copy(straight_qa_run / RUN_ARGUMENTS_NAME, tmp_path)  # what the run wrote when it started
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
    finished = json.loads((tmp_path / "all_results.json").read_text())
    main(command)  # a retried job

    assert sorted(path.name for path in tmp_path.glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-8"]
    assert_same_weights(tmp_path / "model.safetensors", tmp_path / "finished.safetensors")
    # it reports the finished run's training, not a loss of 0 after ~0 s
    retried = json.loads((tmp_path / "all_results.json").read_text())
    training = ("train_loss", "train_runtime", "train_samples", "epoch")
    assert finished["train_loss"] > 0 and {name: retried[name] for name in training} == {
        name: finished[name] for name in training
    }
    card = (tmp_path / "README.md").read_text()  # the model card, written again
    assert "for 8 steps" in card and f"{finished['train_runtime']:.0f} s of training" in card


def test_a_retried_finished_run_reports_no_wrong_training_metrics(tmp_path):
    checkpoint = fake_checkpoint(tmp_path / "checkpoint-8", 8)
    args = RehearsalTrainingArguments(output_dir=str(tmp_path))
    nothing_trained = {"train_loss": 0.0, "train_runtime": 0.01, "total_flos": 0.0, "epoch": 3.0}
    # resumed from step 4 and trained to 8: Trainer's metrics stand
    assert train_metrics(args, dict(nothing_trained), str(tmp_path / "checkpoint-4"), 8) == nothing_trained
    fake_checkpoint(tmp_path / "checkpoint-4", 4)
    assert train_metrics(args, dict(nothing_trained), str(tmp_path / "checkpoint-4"), 8) == nothing_trained
    # resumed at step 8 of 8 after the run died before writing its metrics: none to keep, none reported wrong
    assert train_metrics(args, dict(nothing_trained), str(checkpoint), 8) == {"epoch": 3.0}
    (tmp_path / "train_results.json").write_text(json.dumps({"train_loss": 1.25, "train_runtime": 30.0}))
    assert train_metrics(args, dict(nothing_trained), str(checkpoint), 8) == {
        "train_loss": 1.25,
        "train_runtime": 30.0,
    }


@pytest.mark.usefixtures("keep_transformers_verbosity")
def test_an_output_dir_holding_another_run_is_refused_and_last_resumes_only_this_run(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="rm_hf.trainer")
    main = example_main("run_qa")
    first = [*QA_RUN, "--max_steps", "2", "--save_steps", "2", "--resume_from_checkpoint", "last"]
    main(["--output_dir", str(tmp_path), *first])
    assert json.loads((tmp_path / "checkpoint-2" / RUN_ARGUMENTS_NAME).read_text())["hidden_size"] == 32
    # the same command without --resume_from_checkpoint would train it again over itself
    with pytest.raises(ValueError, match="already holds this run. Pass --resume_from_checkpoint last to continue"):
        main(["--output_dir", str(tmp_path), *first[:-2]])

    # Another run (a wider model) into the same folder: refused. With --overwrite_output_dir it trains from scratch,
    # and `last` passes over the first run's checkpoint (loading it was a size-mismatch crash).
    other = [*first, "--hidden_size", "48", "--learning_rate", "2e-3"]
    difference = "--hidden_size 32 there, 48 here; --learning_rate 0.001 there, 0.002 here"
    with pytest.raises(ValueError, match=f"holds another run \\({difference}\\)"):
        main(["--output_dir", str(tmp_path), *other])
    results = json.loads((tmp_path / "all_results.json").read_text())
    (tmp_path / "all_results.json").write_text(json.dumps({**results, "eval_qa9_accuracy": 1.0}))
    main(["--output_dir", str(tmp_path), *other, "--overwrite_output_dir"])
    assert f"Passing over {tmp_path / 'checkpoint-2'}: it belongs to another run ({difference})." in caplog.text
    assert "training starts from scratch" in caplog.text
    assert json.loads((tmp_path / RUN_ARGUMENTS_NAME).read_text())["hidden_size"] == 48
    assert json.loads((tmp_path / "checkpoint-2" / RUN_ARGUMENTS_NAME).read_text())["hidden_size"] == 48
    assert "eval_qa9_accuracy" not in json.loads((tmp_path / "all_results.json").read_text())  # none of the old run's

    # a folder holding anything else is refused before any data is read
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=f"--output_dir {folder} is not empty \\(notes.txt\\) and records no run"):
        main(["--output_dir", str(folder), *QA_RUN, "--num_train_stories", "-1"])


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


def test_last_resumes_only_a_checkpoint_of_this_run(tmp_path, caplog):
    run = {"hidden_size": 32, "learning_rate": 0.001, "seed": 3}
    for step, recorded in ((4, run), (8, {**run, "hidden_size": 64, "seed": 4}), (12, None)):
        folder = fake_checkpoint(tmp_path / f"checkpoint-{step}", step)
        if recorded is not None:
            (folder / RUN_ARGUMENTS_NAME).write_text(json.dumps(recorded))
    args = RehearsalTrainingArguments(output_dir=str(tmp_path), resume_from_checkpoint="last")
    assert checkpoint_to_resume(args, run) == str(tmp_path / "checkpoint-4")
    assert (
        f"Passing over {tmp_path / 'checkpoint-12'}: it records no run arguments ({RUN_ARGUMENTS_NAME} is missing"
        in caplog.text
    )
    other = "it belongs to another run (--hidden_size 64 there, 32 here; --seed 4 there, 3 here)"
    assert f"Passing over {tmp_path / 'checkpoint-8'}: {other}." in caplog.text
    assert checkpoint_to_resume(args) == str(tmp_path / "checkpoint-12")  # without a run to compare: files only
    # named explicitly, a checkpoint of another run is used, with the same warning
    args.resume_from_checkpoint = str(tmp_path / "checkpoint-8")
    assert checkpoint_to_resume(args, run) == str(tmp_path / "checkpoint-8")
    assert f"Resuming from {tmp_path / 'checkpoint-8'} although {other}." in caplog.text


def test_run_arguments_leave_out_what_a_restart_may_change(tmp_path):
    def arguments(**changes):
        values = {"output_dir": str(tmp_path), "max_steps": 8, "logging_steps": 1, "save_steps": 4, **changes}
        return run_arguments(RehearsalTrainingArguments(**values))

    first = arguments()
    restart = {"output_dir": str(tmp_path / "moved"), "max_steps": 16, "logging_steps": 5, "save_steps": 2,
               "resume_from_checkpoint": "last", "per_device_eval_batch_size": 3, "dataloader_num_workers": 1,
               "report_to": "none", "disable_tqdm": True, "overwrite_output_dir": True, "do_eval": True}  # fmt: skip
    assert arguments(**restart) == first
    assert arguments(learning_rate=1e-3) != first and arguments(seed=1) != first
    assert arguments(per_device_train_batch_size=4) != first and arguments(recollection_weight=0.5) != first
    assert json.loads(json.dumps(first)) == first  # what run_arguments.json holds


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
