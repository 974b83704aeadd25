"""Smoke run of bench/bench_babi_curves.py on a tiny bAbI folder of our own sentences: the numbers mean nothing; the
JSON's layout, the curves' value ranges, the CPU budget stop, resuming, and the refusal to mix settings are
checked."""

import json

import pytest

from tests.conftest import QA1_NAME, QA1_TEXT, write
from tests.test_bench import run_bench

pytestmark = pytest.mark.slow


def test_bench_babi_curves_smoke_and_resume(tmp_path):
    babi_dir, output_dir = tmp_path / "babi", tmp_path / "results"
    write(babi_dir, QA1_NAME, QA1_TEXT)
    write(babi_dir, QA1_NAME.replace("_train", "_test"), QA1_TEXT)
    # a budget of 0.2 CPU seconds stops each run after a few steps (a step takes 5 to 50 CPU ms here), well before
    # --max_steps; CPU seconds do not depend on what else the machine runs
    tiny = ["--babi_dir", str(babi_dir), "--tasks", "1", "--cpu_budget", "0.2", "--max_steps", "1000",
            "--eval_every", "2", "--eval_questions", "3", "--batch_size", "2", "--output_dir", str(output_dir),
            "--systems", "memn2n", "--extra", "rm_cheap=--model rm --story_items sentences --segment_length 2 "
            "--num_rehearsal_fragments 1"]  # fmt: skip
    run_bench("bench_babi_curves.py", *tiny)
    results = json.loads((output_dir / "babi_curves.json").read_text())
    assert {"machine", "command", "arguments", "settings", "runs"} <= set(results)
    assert results["command"].startswith("python bench/bench_babi_curves.py --babi_dir")
    quoted = "'rm_cheap=--model rm --story_items sentences --segment_length 2 --num_rehearsal_fragments 1'"
    assert quoted in results["command"]  # the command runs again as given
    assert results["settings"]["cpu_budget"] == 0.2 and results["settings"]["learning_rate"] is None
    assert set(results["runs"]) == {"memn2n/1/0", "rm_cheap/1/0"}
    assert results["runs"]["rm_cheap/1/0"]["flags"][-2:] == ["--num_rehearsal_fragments", "1"]
    for run in results["runs"].values():
        curve, summary = run["curve"], run["summary"]
        steps = [point["step"] for point in curve]
        cpu = [point["train_cpu_seconds"] for point in curve]
        # every 2 steps, then once more at the step that used up the budget
        assert all(step % 2 == 0 for step in steps[:-1]) and steps == sorted(set(steps))
        assert all(0 < a < b for a, b in zip(cpu, cpu[1:])) and cpu[-1] == summary["train_cpu_seconds"]
        assert all(seconds < 0.2 for seconds in cpu[:-1]) and cpu[-1] >= 0.2
        assert summary["stopped_by"] == "cpu_budget" and summary["steps"] == steps[-1] < 1000
        assert all(0 <= point["accuracy"] <= 1 for point in curve)
        assert summary["final_accuracy"] == curve[-1]["accuracy"]
        for threshold in ("0.95", "0.99"):
            reached = summary[f"cpu_seconds_to_{threshold}"]
            assert reached is None or reached in cpu
        assert summary["batch_size"] == 2
        assert summary["examples_per_cpu_second"] == pytest.approx(2 * steps[-1] / cpu[-1])
        assert 0 < summary["median_step_cpu_seconds"] <= cpu[-1]
    assert (output_dir / "babi_curves.png").stat().st_size > 0

    # the same settings again: both runs are stored, nothing is retrained
    run_bench("bench_babi_curves.py", *tiny)
    assert json.loads((output_dir / "babi_curves.json").read_text())["runs"] == results["runs"]
    # only the --extra system (--systems ''): stored too, and the other system's run is kept
    run_bench("bench_babi_curves.py", *tiny, "--systems", "")
    assert json.loads((output_dir / "babi_curves.json").read_text())["runs"] == results["runs"]

    # other settings into the same folder: refused, the stored runs kept
    stderr = run_bench("bench_babi_curves.py", *tiny, "--eval_every", "3", returncode=1)
    assert "other settings" in stderr and "--overwrite" in stderr
    assert json.loads((output_dir / "babi_curves.json").read_text())["runs"] == results["runs"]
