"""Smoke run of bench/bench_ctr_train_cost.py at its tiniest: the JSON layout and the ratios it derives. Numbers from
this run mean nothing."""

import json

import pytest

from tests.test_bench import run_bench

pytestmark = pytest.mark.slow


def test_bench_ctr_train_cost_smoke(tmp_path):
    run_bench("bench_ctr_train_cost.py", "--lengths", "60", "--batch_sizes", "2", "3", "--repeats", "1",
              "--warmup", "0", "--output_dir", str(tmp_path))  # fmt: skip
    results = json.loads((tmp_path / "ctr_train_cost.json").read_text())
    assert results["command"].startswith("python bench/bench_ctr_train_cost.py --lengths 60")
    records = results["records"]
    systems = {"target_attention", "mean_pool", "rm_rehearsal", "rm_no_rehearsal", "rm_before"}
    assert {(r["system"], r["batch_size"]) for r in records} == {(s, b) for s in systems for b in (2, 3)}
    for batch_size in (2, 3):
        rows = {r["system"]: r for r in records if r["batch_size"] == batch_size}
        baseline = rows["target_attention"]["cpu_ms_per_sample"]
        for row in rows.values():
            assert row["history_length"] == 60 and row["cpu_ms_per_sample"] > 0
            assert row["cpu_ms_per_step"] == pytest.approx(batch_size * row["cpu_ms_per_sample"])
            assert row["samples_per_cpu_second"] == pytest.approx(1000 / row["cpu_ms_per_sample"])
            assert row["ratio_to_target_attention"] == pytest.approx(row["cpu_ms_per_sample"] / baseline)
