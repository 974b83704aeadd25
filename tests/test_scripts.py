"""The command line the example scripts share (`rm_hf.script_utils`): `--help` opens with the script's description
and its own flags, choices and bad model flags fail at parse time (before any data is read), `--output_dir` is
required, neither `--do_train` nor `--do_eval` means both, and which launcher starts how many CPU processes:
`accelerate launch --multi_gpu --num_processes 2 ... --use_cpu` two (it is torchrun underneath), `accelerate launch
--cpu --num_processes 2` one, with a warning saying so."""

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, RUN_THEN_REPORT, assert_process_groups_closed, example_main

RUN_CTR = ROOT / "examples" / "run_ctr.py"
# A click run of a few seconds: the mean-pool baseline on a small synthetic task.
CTR_RUN = [
    "--data", "synthetic", "--num_users", "40", "--history_length", "24", "--num_items", "20", "--num_categories",
    "8", "--model", "mean_pool", "--hidden_size", "16", "--item_embedding_dim", "8", "--max_steps", "2",
    "--per_device_train_batch_size", "8", "--save_strategy", "no", "--use_cpu", "--report_to", "none",
    "--disable_tqdm", "true",
]  # fmt: skip
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}


def script_module(name: str) -> dict:
    """The globals of examples/<name>.py as `example_main` loads it, to replace a function for one test."""
    return example_main(name).__wrapped__.__globals__


def must_not_be_called(*args, **kwargs):
    raise AssertionError("data was read before the arguments were checked")


@pytest.mark.parametrize("name", ["run_qa", "run_ctr"])
def test_help_opens_with_the_description_and_the_scripts_own_flags(name, capsys):
    with pytest.raises(SystemExit) as exit_info:
        example_main(name)(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    assert lines[0].startswith(f"usage: {Path(sys.argv[0]).name} --output_dir DIR [--do_train] [--do_eval]")
    description = script_module(name)["__doc__"].strip().splitlines()[0]
    assert lines[2] == description  # the module docstring, laid out as written
    # the script's flags come first, in their groups, then Trainer's (all of them: a long list, but bounded)
    model, data, training = (text.index(f"\n{group}") for group in ("Model:\n", "Data:\n", "Training ("))
    assert model < data < training
    assert text.index("--model_name_or_path") < data and text.index("--max_eval_samples") < training
    assert text.index("--overwrite_output_dir") > training
    assert len(lines) < 750, len(lines)  # about 700: Trainer's alone are some 600, listed twice they would be 1,300


@pytest.mark.parametrize(
    "name, loader, flags, invalid",
    [
        ("run_qa", "load_raw_data", ["--memory_type", "slot"], "slot"),
        ("run_qa", "load_raw_data", ["--story_items", "words"], "words"),
        ("run_qa", "load_raw_data", ["--sampler_mode", "random"], "random"),
        ("run_ctr", "load_data", ["--data", "parquet"], "parquet"),
        ("run_ctr", "load_data", ["--memory_type", "lstm"], "lstm"),
        ("run_ctr", "load_data", ["--sampler_mode", "external"], "external"),
    ],
)
def test_choices_are_checked_when_parsing(name, loader, flags, invalid, monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(script_module(name), loader, must_not_be_called)
    with pytest.raises(SystemExit) as exit_info:
        example_main(name)(["--output_dir", str(tmp_path), *flags])
    assert exit_info.value.code == 2
    assert f"argument {flags[0]}" in (error := capsys.readouterr().err)
    assert f"invalid choice: '{invalid}' (choose from " in error


@pytest.mark.parametrize(
    "name, loader, flags, problem",
    [
        (
            "run_qa",
            "load_raw_data",
            ["--hidden_size", "30"],
            r"memory_dim \(30\) must be divisible by num_memory_heads",
        ),
        ("run_ctr", "load_data", ["--segment_length", "0"], "segment_length must be >= 1"),
        ("run_qa", "load_raw_data", ["--do_eval"], "--do_eval without --do_train would use an untrained model"),
    ],
)
@pytest.mark.usefixtures("keep_transformers_verbosity")
def test_bad_model_flags_fail_before_any_data_is_read(name, loader, flags, problem, monkeypatch, tmp_path):
    monkeypatch.setitem(script_module(name), loader, must_not_be_called)
    # a ValueError, or the config's validation error (huggingface_hub's StrictDataclassClassValidationError)
    with pytest.raises(Exception, match=problem):
        example_main(name)(["--output_dir", str(tmp_path), "--use_cpu", "--report_to", "none", *flags])


@pytest.mark.parametrize("name", ["run_qa", "run_ctr"])
def test_output_dir_is_required(name, capsys):
    with pytest.raises(SystemExit) as exit_info:
        example_main(name)(["--use_cpu"])
    assert exit_info.value.code == 2
    assert "the following arguments are required: --output_dir" in capsys.readouterr().err


@pytest.mark.usefixtures("keep_transformers_verbosity")
def test_neither_do_train_nor_do_eval_means_both(tmp_path, caplog):
    # the transformers examples then do nothing and exit 0; these scripts train, then evaluate
    caplog.set_level(logging.INFO, logger="rm_hf.script_utils")
    example_main("run_ctr")(["--output_dir", str(tmp_path / "both"), *CTR_RUN])
    assert "Neither --do_train nor --do_eval given: training, then evaluating." in caplog.text
    for stage in ("train", "eval"):
        assert (tmp_path / "both" / f"{stage}_results.json").exists(), stage
    results = json.loads((tmp_path / "both" / "all_results.json").read_text())
    assert results["train_loss"] > 0 and 0 <= results["eval_auc"] <= 1

    # one given: that one alone (an evaluation needs a trained checkpoint: see test_run_ctr.py)
    example_main("run_ctr")(["--output_dir", str(tmp_path / "train"), *CTR_RUN, "--do_train"])
    assert (tmp_path / "train" / "train_results.json").exists()
    assert not (tmp_path / "train" / "eval_results.json").exists()


def run(command: list[str], tmp_path: Path) -> str:
    result = subprocess.run(command, cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout + result.stderr


@pytest.mark.slow
def test_accelerate_multi_gpu_launcher_starts_two_cpu_processes(tmp_path):
    # `--multi_gpu` picks accelerate's torchrun launcher; with --use_cpu each process trains on CPU over gloo
    wrapper = tmp_path / "run_then_report.py"
    wrapper.write_text(RUN_THEN_REPORT)
    accelerate = [sys.executable, "-m", "accelerate.commands.launch"]
    launch = [*accelerate, "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--main_process_port", "0"]
    log = run([*launch, "--mixed_precision", "no", "--dynamo_backend", "no", str(wrapper), str(RUN_CTR),
               "--output_dir", str(tmp_path / "out"), *CTR_RUN, "--log_level", "info"], tmp_path)  # fmt: skip
    assert "Total train batch size (w. parallel, distributed & accumulation) = 16" in log  # 8 per process x 2
    assert_process_groups_closed(tmp_path)
    assert (tmp_path / "out" / "model.safetensors").exists()


@pytest.mark.slow
def test_accelerate_cpu_launcher_starts_one_process_and_the_script_says_so(tmp_path):
    # on CPU, accelerate starts several processes only through mpirun: `--cpu --num_processes 2` runs one
    accelerate = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2"]
    log = run([*accelerate, "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", str(RUN_CTR),
               "--output_dir", str(tmp_path / "out"), *CTR_RUN, "--log_level", "info"], tmp_path)  # fmt: skip
    assert "Total train batch size (w. parallel, distributed & accumulation) = 8" in log
    assert "`accelerate launch --cpu` started this script as ONE process" in log
