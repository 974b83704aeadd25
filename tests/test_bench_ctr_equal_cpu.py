"""Smoke run of bench/bench_ctr_equal_cpu.py at its tiniest: the JSON layout, the CPU budget, resuming, and the
error for a rerun with other settings. Numbers from these runs mean nothing."""

import json

import pytest

from tests.test_bench import run_bench

pytestmark = pytest.mark.slow

SYSTEMS = ["rm_rehearsal", "target_attention_last100", "target_attention_full"]


def test_bench_ctr_equal_cpu_smoke(tmp_path):
    args = ["--num_users", "60", "--history_length", "200", "--cpu_seconds", "2", "--seeds", "0",
            "--systems", ",".join(SYSTEMS), "--output_dir", str(tmp_path)]  # fmt: skip
    run_bench("bench_ctr_equal_cpu.py", *args)
    path = tmp_path / "ctr_equal_cpu.json"
    results = json.loads(path.read_text())
    assert results["command"].startswith("python bench/bench_ctr_equal_cpu.py --num_users 60")
    assert {"machine", "arguments", "settings", "runs", "summary", "targets"} <= set(results)
    assert set(results["runs"]) == {f"{system}/0" for system in SYSTEMS}
    for run in results["runs"].values():
        assert 0 <= run["auc"] <= 1
        assert run["steps"] >= 1 and run["train_cpu_seconds"] >= 2  # the budget is spent, then training stops
        # 48 training users (80% of 60), fewer than run_ctr's batch of 64: every step is one whole epoch of 48
        assert run["samples_per_cpu_second"] == pytest.approx(48 * run["steps"] / run["train_cpu_seconds"])
        assert run["cpu_seconds_per_sample"] == pytest.approx(1 / run["samples_per_cpu_second"])
    assert set(results["summary"]) == set(SYSTEMS)
    assert results["summary"]["rm_rehearsal"]["min_auc"] == results["runs"]["rm_rehearsal/0"]["auc"]
    # only the targets whose systems ran, each checked on the one seed
    assert set(results["targets"]) == {
        "rm_rehearsal >= target_attention_last100 + 0.1",
        "rm_rehearsal >= target_attention_full - 0.01",
    }
    for target in results["targets"].values():
        (seed,) = target["per_seed"].values()
        assert seed["met"] == (seed["difference"] >= target["required_difference"])
        assert target["met_on_every_seed"] == seed["met"]

    # the same settings again: every run is skipped, the stored ones kept as they were
    run_bench("bench_ctr_equal_cpu.py", *args)
    assert json.loads(path.read_text())["runs"] == results["runs"]
    # other settings into the same file: refused, the file untouched
    stderr = run_bench("bench_ctr_equal_cpu.py", *args, "--early_noise", "0.1", returncode=1)
    assert "other settings" in stderr and "--overwrite" in stderr
    assert json.loads(path.read_text())["runs"] == results["runs"]
