"""examples/run_ctr.py end to end on a tiny synthetic task: metrics written, model and vocabulary reload; the
Rehearsal Memory run uses two torchrun processes (DDP over gloo). Malformed lines of a behaviour CSV fail the
run or are skipped and counted."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rm_hf import RehearsalMemoryForClickPrediction
from rm_hf.ctr_baselines import TargetAttentionClickModel
from rm_hf.ctr_data import BehaviorFormatError, BehaviorVocab, ClickCollator, generate_behavior_histories
from tests.conftest import assert_process_groups_closed, example_main, torchrun

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "run_ctr.py"
DATA = {"num_users": 48, "history_length": 40, "num_items": 20, "num_categories": 8}


@pytest.mark.parametrize(
    "processes, model, model_class, extra",
    [
        (2, "rm", RehearsalMemoryForClickPrediction, ["--sampler_mode", "teacher"]),
        (1, "target_attention", TargetAttentionClickModel, []),
    ],
    ids=["rm-2-processes", "target_attention"],
)
def test_run_ctr_trains_evaluates_and_saves(tmp_path, processes, model, model_class, extra):
    output_dir = tmp_path / "out"
    launcher = torchrun(tmp_path, SCRIPT, processes) if processes > 1 else [sys.executable, str(SCRIPT)]
    command = [
        *launcher,
        "--data",
        "synthetic",
        "--model",
        model,
        *extra,
        *(f"--{name}={value}" for name, value in DATA.items()),
        "--num_memory_slots",
        "4",
        "--segment_length",
        "8",
        "--item_embedding_dim",
        "8",
        "--hidden_size",
        "16",
        "--num_layers",
        "1",
        "--num_attention_heads",
        "2",
        "--output_dir",
        str(output_dir),
        "--do_train",
        "--do_eval",
        "--max_steps",
        "3",
        "--per_device_train_batch_size",
        "8",
        "--save_strategy",
        "no",
        "--use_cpu",
        "--disable_tqdm",
        "true",
        "--log_level",
        "info",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}  # one thread per process on 2 cores
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"Total train batch size (w. parallel, distributed & accumulation) = {8 * processes}" in result.stderr

    results = json.loads((output_dir / "all_results.json").read_text())
    assert 0.0 <= results["eval_auc"] <= 1.0 and 0.0 <= results["eval_accuracy"] <= 1.0
    assert "task_loss" in results
    if processes > 1:
        assert_process_groups_closed(result.stdout, processes)

    reloaded = model_class.from_pretrained(output_dir).eval()
    vocab = BehaviorVocab.load(output_dir)
    data, expected_vocab = generate_behavior_histories(**DATA)
    assert vocab == expected_vocab
    with torch.no_grad():
        logits = reloaded(**ClickCollator()(list(data["test"]))).logits
    assert logits.shape == (len(data["test"]),) and torch.isfinite(logits).all()


@pytest.mark.usefixtures("keep_transformers_verbosity")
def test_run_ctr_fails_on_a_malformed_line_or_skips_and_counts_it(tmp_path):
    log = tmp_path / "log.csv"
    rows = [f"user{i % 6},item{i % 9},cat{i % 3},{i}" for i in range(60)]
    rows[10], rows[40] = "user1,item2,cat3", "user2,item2,cat1,noon"  # a missing column, a non-numeric timestamp
    log.write_text("user,item,category,timestamp\n" + "\n".join(rows) + "\n")
    args = [
        "--data", "csv", "--behavior_csv", str(log), "--model", "mean_pool", "--hidden_size", "16",
        "--item_embedding_dim", "8", "--do_train", "--max_steps", "1", "--per_device_train_batch_size", "4",
        "--use_cpu", "--report_to", "none", "--disable_tqdm", "true",
    ]  # fmt: skip
    main = example_main("run_ctr")
    with pytest.raises(BehaviorFormatError, match=r"log\.csv, line 12: expected 4 columns"):
        main(["--output_dir", str(tmp_path / "strict"), *args])

    main(["--output_dir", str(tmp_path / "lenient"), *args, "--skip_bad_lines"])
    results = json.loads((tmp_path / "lenient" / "all_results.json").read_text())
    assert results["skipped_bad_lines"] == 2 and results["train_loss"] > 0
