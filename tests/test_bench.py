"""CI smoke runs of every benchmark script, so they never rot: each runs as a subprocess with its tiniest
settings, writes into a temporary folder (never bench/results), and its JSON has the expected keys and sane
values. Numbers from these runs mean nothing; the real ones come from the quick defaults (`make bench`)."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def start_bench(script: str, *args: str) -> subprocess.Popen:
    """Starts a bench script (its output captured as text)."""
    # One OpenMP thread: on a busy 2-core machine two threads that wait for each other run many times slower.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.Popen([sys.executable, str(ROOT / "bench" / script), *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip


def run_bench(script: str, *args: str, returncode: int = 0) -> str:
    """Runs a bench script, checks its exit code and returns its stderr."""
    _, stderr = (process := start_bench(script, *args)).communicate(timeout=600)
    assert process.returncode == returncode, f"{script} exited {process.returncode}:\n{stderr[-3000:]}"
    return stderr


@pytest.mark.parametrize("story_items", ["sentences", "tokens"])
def test_bench_rehearsal_smoke(tmp_path, story_items):
    output = tmp_path / "rehearsal.json"
    run_bench("bench_rehearsal.py", "--steps", "2", "--seeds", "0", "--num_stories", "60", "--story_length", "6",
              "--story_items", story_items, "--output", str(output))  # fmt: skip
    results = json.loads(output.read_text())
    assert results["story_items"] == story_items
    assert {"machine", "command", "steps", "seeds", "accuracy", "coverage", "step_seconds", "overhead_ratio"} <= set(
        results
    )
    (accuracy,) = results["accuracy"].values()
    assert set(accuracy) == {"with rehearsal", "without rehearsal"}
    assert all(0 <= a <= 1 for runs in accuracy.values() for a in runs)
    (coverage,) = results["coverage"].values()
    assert set(coverage) == {"uniform", "teacher", "external"} and all(0 <= c <= 1 for c in coverage.values())
    assert results["overhead_ratio"] > 0


def test_bench_ctr_smoke(tmp_path):
    run_bench("bench_ctr.py", "--num_users", "40", "--history_length", "40", "--max_steps", "2", "--batch_size", "4",
              "--cost_lengths", "50", "--repeats", "1", "--num_candidates", "4", "--output_dir", str(tmp_path),
              "--memory_types", "expire_span", "lamemo", "key_value", "--memory_capacity", "4")  # fmt: skip
    results = json.loads((tmp_path / "ctr.json").read_text())
    assert results["command"].startswith("python bench/bench_ctr.py --num_users 40") and "cpu" in results["machine"]
    assert set(results["test_auc"]) == {"rm_rehearsal", "rm_no_rehearsal", "mean_pool", "target_attention",
                                        "expire_span_memory", "lamemo_memory", "key_value_memory"}  # fmt: skip
    # 8 test users of a tiny synthetic set: AUC is NaN only when they all share a label
    assert all(math.isnan(auc) or 0 <= auc <= 1 for auc in results["test_auc"].values())
    (cost,) = results["request_cost"]
    assert cost["history_length"] == 50 and cost["store_ms"] > 0 and cost["target_attention_ms"] > 0
    assert (tmp_path / "ctr_cost.png").stat().st_size > 0


def test_bench_cost_smoke(tmp_path):
    run_bench("bench_cost.py", "--smoke", "--output_dir", str(tmp_path))
    results = json.loads((tmp_path / "cost.json").read_text())
    assert {"machine", "command", "arguments", "parameters", "lengths", "summary", "training"} <= set(results)
    assert [row["length"] for row in results["lengths"]] == [256, 1024]
    for row in results["lengths"]:
        assert row["write_seconds"] > 0 and row["write_tokens_per_second"] > 0
        assert row["rm_question_ms"] > 0 and row["full_access_question_ms"] > 0
        assert row["full_access_cached_question_ms"] > 0
        assert row["write_peak_rss_delta_mib"] >= 0 and row["full_access_peak_rss_delta_mib"] >= 0
        assert row["memory_has_grad_fn"] is False
    assert results["lengths"][0]["write_with_grad_peak_rss_delta_mib"] >= 0
    assert results["lengths"][1]["write_with_grad_peak_rss_delta_mib"] is None  # beyond --grad_max_length
    training = results["training"]
    assert training["with_rehearsal_examples_per_second"] > 0 and training["without_rehearsal_examples_per_second"] > 0
    assert (tmp_path / "cost.png").stat().st_size > 0


def test_bench_long_input_smoke(tmp_path):
    run_bench("bench_long_input.py", "--smoke", "--output_dir", str(tmp_path))
    results = json.loads((tmp_path / "long_input.json").read_text())
    assert {"machine", "command", "arguments", "runs", "summary"} <= set(results)
    assert [run["length"] for run in results["runs"]] == [1_000, 5_000]
    for run in results["runs"]:
        assert run["seconds"] > 0 and run["tokens_per_second"] > 0
        assert run["peak_rss_mib"] >= run["rss_before_mib"] > 0
        assert run["memory_has_grad_fn"] is False
    assert results["summary"]["memory_ever_has_grad_fn"] is False
    assert (tmp_path / "long_input.png").stat().st_size > 0


def test_bench_memories_smoke(tmp_path):
    run_bench("bench_memories.py", "--smoke", "--output_dir", str(tmp_path))
    results = json.loads((tmp_path / "memories.json").read_text())
    assert set(results["memory_types"]) == {"slots", "expire_span", "lamemo", "key_value"}
    for name, rows in results["memory_types"].items():
        assert [row["length"] for row in rows] == [256, 512]
        assert all(row["question_ms"] > 0 and row["write_tokens_per_second"] > 0 for row in rows)
        # the state never grows with the input: at most 4 live entries (--smoke capacity) or 4 slots
        assert rows[0]["state_numbers"] == rows[1]["state_numbers"]
        assert name == "slots" or all(row["live_entries"] <= 4 for row in rows)
    assert (tmp_path / "memories.png").stat().st_size > 0


def test_bench_babi_smoke_resumes_per_row(tmp_path, babi_dir):
    output, checkpoints = tmp_path / "babi.json", tmp_path / "checkpoints"
    tiny = ["--babi_dir", str(babi_dir), "--babi_subset", "en", "--max_steps", "2", "--eval_questions", "20",
            "--output", str(output), "--checkpoint_dir", str(checkpoints)]  # fmt: skip
    run_bench("bench_babi.py", *tiny, "--variants", "plain")
    first = json.loads(output.read_text())
    assert [(row["task"], row["rehearsal"]) for row in first["rows"]] == [(1, False)]
    assert first["rows"][0]["test_questions"] == 20 and 0 <= first["rows"][0]["error"] <= 1
    # the quick default is task 1 with sentence items, 4 per segment
    assert first["settings"]["story_items"] == "sentences" and first["settings"]["segment_length"] == 4
    assert (checkpoints / "plain-qa1" / "README.md").exists()
    # a rerun with the same settings keeps the finished row and runs only the new one
    run_bench("bench_babi.py", *tiny, "--variants", "plain,rehearsal")
    second = json.loads(output.read_text())
    assert second["rows"][1] == first["rows"][0] and second["rows"][0]["rehearsal"] is True
    assert set(second["summary"]) == {"with rehearsal", "without rehearsal"}
    # another memory type adds its own rows and summary
    run_bench("bench_babi.py", *tiny, "--variants", "plain", "--memory_types", "key_value", "--memory_capacity", "4")
    third = json.loads(output.read_text())
    assert [(row["memory_type"], row["rehearsal"]) for row in third["rows"]][-1] == ("key_value", False)
    assert [row["memory_capacity"] for row in third["rows"]] == [16, 16, 4]  # 16 slots (the default), 4 entries
    assert "key_value memory, without rehearsal" in third["summary"]
    assert (tmp_path / "babi.png").stat().st_size > 0
    # other settings into the same file: refused, naming the change, and the saved rows are untouched
    error = run_bench("bench_babi.py", *tiny, "--max_steps", "3", returncode=1)
    assert "max_steps': '2 -> 3'" in error and "--overwrite" in error
    assert json.loads(output.read_text()) == third
    run_bench("bench_babi.py", *tiny, "--max_steps", "3", "--variants", "plain", "--overwrite")
    fourth = json.loads(output.read_text())
    assert [(row["steps"], row["rehearsal"]) for row in fourth["rows"]] == [(3, False)]


def test_bench_babi_passes_its_model_flags_on_and_keeps_them_in_the_settings(tmp_path, babi_dir):
    output = tmp_path / "renamed.json"
    tiny = ["--babi_dir", str(babi_dir), "--babi_subset", "en", "--max_steps", "2", "--eval_questions", "20",
            "--variants", "plain", "--output", str(output), "--checkpoint_dir", str(tmp_path / "checkpoints")]  # fmt: skip
    run_bench("bench_babi.py", *tiny, "--permute_names", "--link_previous_item", "--num_hidden_layers", "0",
              "--sentence_position_start", "uniform", "--reader_feed_forward", "--linear_start_steps", "1",
              "--num_memory_slots", "4", "--slot_addressing", "key", "--weight_decay", "0.25")  # fmt: skip
    settings = json.loads(output.read_text())["settings"]
    assert settings["permute_names"] is True and settings["link_previous_item"] is True
    assert settings["reader_feed_forward"] is True and settings["linear_start_steps"] == 1
    assert settings["num_hidden_layers"] == 0 and settings["sentence_position_start"] == "uniform"
    assert settings["num_memory_slots"] == 4 and settings["slot_addressing"] == "key"
    assert settings["weight_decay"] == 0.25
    assert json.loads(output.read_text())["rows"][0]["memory_capacity"] == 4  # the slots trained
    recorded = json.loads((tmp_path / "checkpoints" / "plain-qa1" / "run_arguments.json").read_text())
    assert recorded["permute_names"] is True and recorded["linear_start_steps"] == 1  # what run_qa.py was asked
    assert recorded["weight_decay"] == 0.25
    config = json.loads((tmp_path / "checkpoints" / "plain-qa1" / "config.json").read_text())
    assert config["link_previous_item"] and config["encoder_config"]["num_hidden_layers"] == 0
    assert config["sentence_position_start"] == "uniform" and config["reader_feed_forward"]
    assert config["num_memory_slots"] == 4 and config["slot_addressing"] == "key"
    error = run_bench("bench_babi.py", *tiny, "--tasks", "1,20", "--permute_names", returncode=1)
    assert "not of task 20" in error


def test_bench_babi_passes_rehearsal_options_to_rows_with_rehearsal(tmp_path, babi_dir):
    output, checkpoints = tmp_path / "weights.json", tmp_path / "checkpoints"
    run_bench("bench_babi.py", "--babi_dir", str(babi_dir), "--babi_subset", "en", "--max_steps", "2",
              "--eval_questions", "20", "--variants", "rehearsal,plain", "--output", str(output), "--checkpoint_dir",
              str(checkpoints), "--recollection_weight", "0", "--familiarity_weight", "0.25",
              "--rehearsal_decay_start", "1", "--rehearsal_final_ratio", "0.5", "--sampler_mode", "external")  # fmt: skip
    settings = json.loads(output.read_text())["settings"]
    assert settings["recollection_weight"] == 0 and settings["familiarity_weight"] == 0.25
    assert settings["rehearsal_decay_start"] == 1 and settings["rehearsal_final_ratio"] == 0.5
    assert settings["sampler_mode"] == "external"
    assert "sampler_weight" not in settings and "rehearsal_decay_steps" not in settings  # not given: not settings
    recorded = json.loads((checkpoints / "rehearsal-qa1" / "run_arguments.json").read_text())
    assert recorded["recollection_weight"] == 0 and recorded["familiarity_weight"] == 0.25
    assert recorded["sampler_weight"] == 1.0
    assert (recorded["rehearsal_decay_start"], recorded["rehearsal_decay_steps"]) == (1, 0)
    assert recorded["rehearsal_final_ratio"] == 0.5
    assert json.loads((checkpoints / "rehearsal-qa1" / "config.json").read_text())["sampler_mode"] == "external"
    plain = json.loads((checkpoints / "plain-qa1" / "run_arguments.json").read_text())
    assert plain["recollection_weight"] == 1.0  # a row without rehearsal is left as it was
    assert plain["rehearsal_decay_start"] is None


def test_bench_babi_stops_rows_early_or_at_the_cpu_cap(tmp_path, babi_dir):
    output = tmp_path / "converged.json"
    tiny = ["--babi_dir", str(babi_dir), "--babi_subset", "en", "--eval_questions", "20", "--variants", "plain",
            "--output", str(output), "--checkpoint_dir", str(tmp_path / "checkpoints"), "--max_steps", "8"]  # fmt: skip
    # a learning rate of 0 never improves on the first evaluation: patience 1 stops at the second
    run_bench("bench_babi.py", *tiny, "--learning_rate", "0", "--early_stopping_patience", "1", "--eval_steps", "2")
    (row,) = json.loads(output.read_text())["rows"]
    assert (row["steps"], row["tested_step"], row["stopped_by"]) == (4, 2, "early_stopping")
    assert row["cpu_seconds"] > 0
    results = json.loads(output.read_text())
    assert results["settings"]["validation_fraction"] == 0.1 and results["settings"]["eval_steps"] == 2
    expected = {
        "tasks_run": [1],
        "mean_error": row["error"],
        "passed": int(row["passed"]),
        "cpu_seconds": row["cpu_seconds"],
    }
    assert results["summary"]["without rehearsal"] == expected
    run_bench("bench_babi.py", *tiny, "--cpu_cap", "1e-6", "--output", str(tmp_path / "capped.json"))
    (row,) = json.loads((tmp_path / "capped.json").read_text())["rows"]
    assert (row["steps"], row["tested_step"], row["stopped_by"]) == (1, 1, "cpu_cap")


def test_bench_babi_carries_over_the_rows_a_longer_patience_would_reproduce(tmp_path, babi_dir):
    tiny = ["--babi_dir", str(babi_dir), "--babi_subset", "en", "--eval_questions", "20", "--max_steps", "8",
            "--learning_rate", "0", "--eval_steps", "2", "--checkpoint_dir", str(tmp_path / "checkpoints")]  # fmt: skip
    # patience 1: the row without rehearsal stops early; the one with rehearsal is stopped by the CPU cap
    run_bench("bench_babi.py", *tiny, "--variants", "plain", "--early_stopping_patience", "1",
              "--output", str(tmp_path / "short.json"))  # fmt: skip
    short = json.loads((tmp_path / "short.json").read_text())
    capped = dict(short, rows=[dict(short["rows"][0], rehearsal=True, stopped_by="cpu_cap", accuracy=0.123)])
    (tmp_path / "capped.json").write_text(json.dumps(capped))
    longer = ["--variants", "rehearsal,plain", "--early_stopping_patience", "2",
              "--output", str(tmp_path / "long.json")]  # fmt: skip
    stderr = run_bench("bench_babi.py", *tiny, *longer, "--carry_rows_from", str(tmp_path / "short.json"),
                       str(tmp_path / "capped.json"))  # fmt: skip
    rows = {row["rehearsal"]: row for row in json.loads((tmp_path / "long.json").read_text())["rows"]}
    # the capped row is taken as it is; the row that stopped early is trained again, and stops later
    assert rows[True]["accuracy"] == 0.123 and rows[True]["carried_from"] == str(tmp_path / "capped.json")
    assert "carried_from" not in rows[False], stderr[-2000:]
    assert (rows[False]["steps"], rows[False]["tested_step"], rows[False]["stopped_by"]) == (6, 2, "early_stopping")
    # rows run under other settings than the patience are refused
    stderr = run_bench("bench_babi.py", *tiny, *longer, "--batch_size", "4", "--carry_rows_from",
                       str(tmp_path / "short.json"), returncode=1)  # fmt: skip
    assert "other settings" in stderr and "batch_size" in stderr


def test_bench_forgetting_smoke(tmp_path):
    tiny = ["--curriculum", "4:1", "6:1", "--num_train", "40", "--num_test", "12", "--test_lengths", "6", "20",
            "--output_dir", str(tmp_path)]  # fmt: skip
    run_bench("bench_forgetting.py", *tiny, "--seeds", "0", "1")
    results = json.loads((tmp_path / "forgetting.json").read_text())
    keys = {"machine", "command", "arguments", "variants", "curves", "curves_by_question_type", "accuracy", "chance",
            "max_distance", "costs", "runs"}  # fmt: skip
    assert keys <= set(results)
    assert {"cpu", "cores", "date"} <= set(results["machine"])
    assert set(results["variants"]) == {"no_rehearsal", "no_gate", "rehearsal_uniform", "rehearsal_teacher",
                                        "expire_span", "lamemo", "key_value"}  # fmt: skip
    assert results["arguments"]["story_items"] == "sentences" and results["segment_length"] == 4
    assert results["arguments"]["curriculum"] == ["4:1", "6:1"]
    assert results["test_questions"] == 24 and 16 <= results["max_distance"]["sentences"] <= 19
    for unit in ("sentences", "segments"):
        curves = results["curves"][unit]
        assert set(curves) == {*results["variants"], "chance"}
        assert sum(curves["chance"]["count"]) == 24
        for curve in curves.values():
            assert len(curve["mean"]) == len(curve["bins"]) == len(curves["chance"]["bins"])
            bands = zip(curve["min"], curve["mean"], curve["max"])
            assert all(0 <= low <= mean <= high <= 1 for low, mean, high in bands)
        assert all(len(curve["per_seed"]) == 2 for name, curve in curves.items() if name != "chance")
    by_type = results["curves_by_question_type"]
    assert sum(sum(curves["chance"]["count"]) for curves in by_type.values()) == 24
    for accuracy in results["accuracy"].values():
        assert set(accuracy["by_test_length"]) == {"6", "20"}
        assert all(0 <= a <= 1 for a in accuracy["overall"]) and len(accuracy["overall"]) == 2
    costs = results["costs"]
    assert all(cpu > 0 for cost in costs.values() for cpu in cost["train_cpu_seconds"])
    assert all(0 <= c <= 1 for c in costs["rehearsal_teacher"]["supporting_fact_coverage"])
    assert {"loss", "recollection_loss", "familiarity_loss"} <= set(costs["rehearsal_uniform"]["final_losses"][0])
    stages = results["runs"]["rehearsal_uniform/0"]["stages"]
    assert [stage["length"] for stage in stages] == [4, 6] and all(stage["train_cpu_seconds"] > 0 for stage in stages)
    assert sum(stage["train_cpu_seconds"] for stage in stages) == pytest.approx(
        costs["rehearsal_uniform"]["train_cpu_seconds"][0]
    )
    # the finer split of the same hits: its groups hold every question once and give the same overall accuracy
    run_bench("diagnose_object_answers.py", str(tmp_path / "forgetting.json"))
    groups = json.loads((tmp_path / "object_answers.json").read_text())["groups"]
    assert set(groups) == set(results["variants"])
    for variant, by_group in groups.items():
        whole = {name: curve for name, curve in by_group.items() if ", holder" not in name}  # not the sub-groups
        assert sum(sum(curve["count"]) for curve in whole.values()) == 24
        correct = sum(m * c for curve in whole.values() for m, c in zip(curve["mean"], curve["count"]))
        assert correct / 24 == pytest.approx(sum(results["accuracy"][variant]["overall"]) / 2)
        # the questions answered by a name split into those whose holder moved after the fact and the others
        named = [sum(by_group.get(f"who_has: a name{part}", {"count": [0]})["count"])
                 for part in ("", ", holder moved after", ", holder stayed after")]  # fmt: skip
        assert named[0] > 0 and named[0] == named[1] + named[2]
    # a rerun with the same settings keeps every stored run and adds only the new seed
    first = results["runs"]
    run_bench("bench_forgetting.py", *tiny, "--seeds", "0", "2", "--variants", "no_rehearsal")
    again = json.loads((tmp_path / "forgetting.json").read_text())
    assert set(again["runs"]) == set(first) | {"no_rehearsal/2"}
    assert again["runs"]["no_rehearsal/0"] == first["no_rehearsal/0"]
    assert (tmp_path / "forgetting.png").stat().st_size > 0
    # config fields set for every variant are part of the settings: runs made without them are not mixed in
    tiny[-1] = str(tmp_path / "sweep")
    # (segment_length too: the segments-back bins follow it)
    run_bench("bench_forgetting.py", *tiny, "--seeds", "0", "--variants", "no_rehearsal",
              "--config", "num_memory_slots=4", "segment_length=1")  # fmt: skip
    sweep = json.loads((tmp_path / "sweep" / "forgetting.json").read_text())
    assert sweep["settings"]["config"] == {"num_memory_slots": 4, "segment_length": 1}
    assert set(sweep["runs"]) == {"no_rehearsal/0"} and sweep["segment_length"] == 1
    # a misspelt field would change nothing, in the memory's config or the encoder's: both are named
    stderr = run_bench("bench_forgetting.py", *tiny, "--config", "num_memory_slot=4", "encoder.num_hidden_layer=0",
                       returncode=2)  # fmt: skip
    assert "not RehearsalMemoryConfig fields: encoder.num_hidden_layer, num_memory_slot;" in stderr
    assert "encoder.FIELD, FIELD one of hidden_size, intermediate_size" in stderr


def test_bench_forgetting_invocations_fill_one_file_and_memories_match_the_slots(tmp_path):
    # two invocations at once (one per core) with other variants: the file ends up with the runs of both
    tiny = ["--curriculum", "4:1", "--num_train", "40", "--num_test", "12", "--test_lengths", "6", "--seeds", "0",
            "--config", "num_memory_slots=4", "encoder.num_hidden_layers=0", "--models_dir", str(tmp_path / "models"),
            "--output_dir", str(tmp_path)]  # fmt: skip
    both = [start_bench("bench_forgetting.py", *tiny, "--variants", name) for name in ("no_rehearsal", "key_value")]
    for process in both:
        _, stderr = process.communicate(timeout=600)
        assert process.returncode == 0, stderr[-3000:]
    results = json.loads((tmp_path / "forgetting.json").read_text())
    assert set(results["runs"]) == {"no_rehearsal/0", "key_value/0"}
    assert results["seeds"] == {"no_rehearsal": [0], "key_value": [0]}
    assert set(results["curves"]["sentences"]) == {"no_rehearsal", "key_value", "chance"}
    assert not list(tmp_path.glob("*.partial"))
    # the other memory type keeps as many vectors as RM has slots under --config
    kept = json.loads((tmp_path / "models" / "key_value_seed0" / "config.json").read_text())
    assert (kept["memory_type"], kept["memory_capacity"], kept["num_memory_slots"]) == ("key_value", 4, 4)
    # an encoder field under --config reaches the model (here no encoder layers) and is kept in the settings
    assert kept["encoder_config"]["num_hidden_layers"] == 0 and kept["encoder_config"]["hidden_size"] == 64
    assert results["settings"]["config"]["encoder.num_hidden_layers"] == 0


def test_bench_forgetting_keeps_models_and_tests_them_under_test_config(tmp_path):
    tiny = ["--curriculum", "4:2", "6:2", "--num_train", "40", "--num_test", "12", "--test_lengths", "6", "20",
            "--seeds", "0", "--variants", "no_rehearsal", "--models_dir", str(tmp_path / "models")]  # fmt: skip

    def runs(output: str, *args: str) -> dict:
        run_bench("bench_forgetting.py", *tiny, "--output_dir", str(tmp_path / output), *args)
        return json.loads((tmp_path / output / "forgetting.json").read_text())

    trained = runs("trained")["runs"]["no_rehearsal/0"]
    assert (tmp_path / "models" / "no_rehearsal_seed0" / "training_record.json").exists()
    # a run may start from a kept model, here chosen among a --models_dir's: the chosen one joins the settings, and
    # the run names it, what its training cost and what every candidate's ended with
    kept_model = str(tmp_path / "models" / "no_rehearsal_seed0")
    started = runs(
        "started", "--init_from", str(tmp_path / "models"), "--models_dir", str(tmp_path / "started_models")
    )
    assert started["settings"]["init_from"] == kept_model and "init_from" not in runs("trained")["settings"]
    candidate = {"answer_loss": trained["final_losses"]["loss"], "train_cpu_seconds": trained["train_cpu_seconds"]}
    cost = {"model": kept_model, "train_cpu_seconds": trained["train_cpu_seconds"],
            "chosen_among": {"no_rehearsal_seed0": candidate}}  # fmt: skip
    assert started["runs"]["no_rehearsal/0"]["init_from"] == cost
    # the kept model, loaded back with a field that changes nothing, answers exactly as the model it was
    loaded = runs("loaded", "--test_config", "slot_write_threshold=0")
    assert loaded["settings"]["test_config"] == {"slot_write_threshold": 0}
    assert loaded["runs"]["no_rehearsal/0"]["hits"] == trained["hits"]
    for results in (loaded, runs("thresholded", "--test_config", "slot_write_threshold=0.5")):
        run = results["runs"]["no_rehearsal/0"]  # tested, not trained again
        assert (run["train_cpu_seconds"], run["stages"]) == (trained["train_cpu_seconds"], trained["stages"])
    # the kept model's write gates for a pick-up and its follow-ups, each written from the same memory
    run_bench("diagnose_slot_gates.py", "--models", f"tiny={tmp_path / 'models' / 'no_rehearsal_seed0'}",
              "--num_stories", "3", "--context_length", "6", "--story_lengths", "4", "100", "--shortcut_stories", "200",
              "--output", str(tmp_path / "gates.json"))  # fmt: skip
    diagnosis = json.loads((tmp_path / "gates.json").read_text())
    gates = diagnosis["models"]["tiny"]
    assert gates["slot_addressing"] == "content" and gates["pick_up_total_gate"] > 0
    assert gates["same_sentence_again"] == pytest.approx(gates["pick_up_self_overlap"], abs=1e-3)
    # in 4-sentence stories the last pick-up of anything is nearly always the holder asked about; in 100, rarely
    shortcut = diagnosis["last_pick_up_is_the_answer"]
    assert shortcut["4"] > 0.9 and shortcut["100"] < 0.5
    # validation stories: other stories, the same kept model
    validation = runs("validation", "--test_seed", "5000")
    assert validation["settings"]["test_seed"] == 5000 and "test_seed" not in loaded["settings"]
    assert validation["runs"]["no_rehearsal/0"]["train_cpu_seconds"] == trained["train_cpu_seconds"]
    # a model kept for other training settings is not tested under these ones, and test fields need a kept model
    tiny[1] = "4:3"
    stderr = run_bench("bench_forgetting.py", *tiny, "--output_dir", str(tmp_path / "other"), returncode=1)
    assert "keeps a model trained with other settings (curriculum)" in stderr
    stderr = run_bench("bench_forgetting.py", *tiny[:-2], "--test_config", "slot_write_threshold=0.5", returncode=2)
    assert "--test_config sets fields of the models kept in --models_dir" in stderr
    tiny[1] = "4:2"
    stderr = run_bench("bench_forgetting.py", *tiny, "--test_config", "slot_write_threshold=1.5",
                       "--output_dir", str(tmp_path / "bad"), returncode=1)  # fmt: skip
    assert "slot_write_threshold" in stderr


def test_bench_gpu_smoke_on_the_cpu(tmp_path, babi_dir):
    # the GPU check's every part runs on the CPU too (torchrun over gloo), so the script a GPU user runs works
    run_bench("bench_gpu.py", "--babi_dir", str(babi_dir), "--babi_subset", "en", "--device", "cpu", "--smoke",
              "--output_dir", str(tmp_path))  # fmt: skip
    result = json.loads((tmp_path / "gpu.json").read_text())
    assert result["correctness"]["streamed_vs_one_pass_max_abs_diff"] <= 1e-4
    assert result["correctness"]["parameters_with_non_finite_gradient"] == []
    speeds = result["training_speed"]
    assert {(row["bf16"], row["use_rehearsal"]) for row in speeds} == {(b, r) for b in (0, 1) for r in (0, 1)}
    assert all(row["examples_per_second"] > 0 for row in speeds)
    assert result["long_write_speed"]["sentences_per_second"] > 0
    end_to_end = result["run_qa_end_to_end"]
    assert end_to_end["returncode"] == 0 and 0 <= end_to_end["eval_accuracy"] <= 1
    assert len(end_to_end["pipeline_answers"]) == 2 and all(a["answer"] for a in end_to_end["pipeline_answers"])


def test_bench_compile_smoke(tmp_path, babi_dir):
    output = tmp_path / "compile.json"
    run_bench("bench_compile.py", "--babi_dir", str(babi_dir), "--modes", "eager,write", "--batch_size", "4",
              "--batches", "2", "--warmup", "1", "--steps", "2", "--output", str(output))  # fmt: skip
    result = json.loads(output.read_text())
    assert set(result["modes"]) == {"eager", "write"} and result["settings"]["steps"] == 2
    assert result["modes"]["eager"]["step_time_ratio_to_eager"] == 1.0
    # the compiled write computes what the eager one does
    assert result["modes"]["write"]["max_abs_logit_difference"] < 1e-4
    assert all(mode["median_step_ms"] > 0 and mode["warmup_cpu_seconds"] > 0 for mode in result["modes"].values())
    run_bench("bench_compile.py", "--babi_dir", str(babi_dir), "--modes", "write", returncode=1)  # eager is needed


def test_bench_step_smoke(tmp_path, babi_dir):
    output = tmp_path / "step.json"
    run_bench("bench_step.py", "--babi_dir", str(babi_dir), "--model_flags", "--slot_addressing key", "--batch_size",
              "4", "--batches", "2", "--warmup", "1", "--steps", "2", "--output", str(output))  # fmt: skip
    result = json.loads(output.read_text())
    assert result["settings"]["model_flags"] == "--slot_addressing key" and result["max_abs_logit_difference"] < 1e-5
    block, per_segment = result["modes"]["block_reads"], result["modes"]["per_segment_reads"]
    assert block["step_time_ratio_to_block_reads"] == 1.0 and per_segment["median_step_ms"] > 0
    # keyed slots read the segments in the block call; the per-segment copy reads them in its writes
    block_reads = block["forward_parts_mean_ms"]["block_reads"]
    assert block_reads > 0 and per_segment["forward_parts_mean_ms"]["block_reads"] < block_reads / 5
    assert set(block["forward_parts_mean_ms"]) == {"encode_segments", "block_reads", "segment_writes", "rehearsal"}


WARM_START_CHECK = """
import sys
from pathlib import Path

import torch
from qa_utils import build_task, choose_kept_model, keep_model, make_model, start_from_kept_model

from rm_hf import RehearsalMemoryForQuestionAnswering
from rm_hf.story_generator import generate_stories


def task(types):
    stories = generate_stories(8, story_length=6, seed=0, question_types=types)
    tokenizer, answers, _, _ = build_task(stories, stories)
    return tokenizer, answers


folder = Path(sys.argv[1])
small_tokenizer, small_answers = task(("who_has",))
small = make_model(small_tokenizer, small_answers, "sentences")
keep_model(folder, small, small_tokenizer, {}, {"train_cpu_seconds": 1.5})
kept = RehearsalMemoryForQuestionAnswering.from_pretrained(folder).state_dict()
assert choose_kept_model(folder) == {"model": str(folder), "train_cpu_seconds": 1.5}
# among a folder's kept runs, the one whose training ended with the lowest answer loss
seeds = folder.parent / "seeds"
for seed, loss in ((0, 0.6), (1, 0.04), (2, 0.3)):
    run = {"final_losses": {"loss": loss}, "train_cpu_seconds": seed}
    keep_model(seeds / f"run_seed{seed}", small, small_tokenizer, {}, run)
chosen = choose_kept_model(seeds)
assert (chosen["model"], chosen["train_cpu_seconds"]) == (str(seeds / "run_seed1"), 1)
assert chosen["chosen_among"]["run_seed2"] == {"answer_loss": 0.3, "train_cpu_seconds": 2}
tokenizer, answers = task(("who_has", "where_person"))
model = make_model(tokenizer, answers, "sentences")
fresh = {name: weight.clone() for name, weight in model.state_dict().items()}
start_from_kept_model(model, tokenizer, answers, folder)
weights = model.state_dict()
assert torch.equal(weights["rehearsal_memory.bank.initial_memory"], kept["rehearsal_memory.bank.initial_memory"])
vocab, small_vocab = tokenizer.get_vocab(), small_tokenizer.get_vocab()
assert "where" in vocab and "where" not in small_vocab
embeddings = [name for name, weight in weights.items() if weight.shape[0] == len(vocab) != kept[name].shape[0]]
assert embeddings
for name in embeddings:  # a word both have takes the kept row, a new word keeps its fresh one
    assert torch.equal(weights[name][vocab["who"]], kept[name][small_vocab["who"]])
    assert torch.equal(weights[name][vocab["where"]], fresh[name][vocab["where"]])
layers = [name for name, weight in weights.items() if weight.shape[0] == len(answers) != kept[name].shape[0]]
new_answer = answers.index(next(answer for answer in answers if answer not in small_answers))  # a place
assert layers
for name in layers:
    assert torch.equal(weights[name][answers.index("nobody")], kept[name][small_answers.index("nobody")])
    assert torch.equal(weights[name][new_answer], fresh[name][new_answer])
# a model of another shape is refused, naming the weight
other = make_model(tokenizer, answers, "sentences", num_memory_slots=3)
start_from_kept_model(other, tokenizer, answers, folder)
"""


def test_a_run_can_start_from_a_kept_model_with_other_words_and_answers(tmp_path):
    script = tmp_path / "check.py"
    script.write_text(WARM_START_CHECK)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT / "bench")}
    done = subprocess.run([sys.executable, str(script), str(tmp_path / "kept")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    # every check above passed and the last call stopped with the weight it could not place
    assert done.returncode == 1, done.stderr[-3000:]
    assert "--init_from" in done.stderr and "its model is not this run's model" in done.stderr
    assert "no counterpart for rehearsal_memory.bank.initial_memory (3, 64) (kept: (16, 64))" in done.stderr


def test_diagnose_babi_questions_splits_a_models_test_accuracy_by_question_form(tmp_path, babi_dir):
    output, checkpoints = tmp_path / "babi.json", tmp_path / "checkpoints"
    run_bench("bench_babi.py", "--babi_dir", str(babi_dir), "--babi_subset", "en", "--tasks", "5", "--max_steps", "2",
              "--eval_questions", "0", "--variants", "plain", "--output", str(output),
              "--checkpoint_dir", str(checkpoints))  # fmt: skip
    row = json.loads(output.read_text())["rows"][0]
    forms = tmp_path / "forms.json"
    run_bench("diagnose_babi_questions.py", str(checkpoints / "plain-qa5"), "--task", "5", "--babi_dir", str(babi_dir),
              "--babi_subset", "en", "--output", str(forms))  # fmt: skip
    table = json.loads(forms.read_text())["forms"]
    # task 5 asks five forms of question; together they are the test file, answered as run_qa.py answered them
    assert {form["form"] for form in table} == {"what did X give to X", "who gave the X", "who gave the X to X",
                                                 "who did X give the X to", "who received the X"}  # fmt: skip
    assert sum(form["questions"] for form in table) == row["test_questions"] == 1000
    right = sum(form["accuracy"] * form["questions"] for form in table)
    assert right == pytest.approx(row["accuracy"] * 1000, abs=1e-6)
    # RM writes 4 sentences a segment: the same questions again, by how many writes back their latest fact was
    writes = json.loads(forms.read_text())["writes_back"]
    assert [bin["writes_back"] for bin in writes] == [0, 1]  # task 5 asks about one of the last few sentences
    assert sum(bin["questions"] for bin in writes) == 1000
    assert sum(bin["accuracy"] * bin["questions"] for bin in writes) == pytest.approx(right, abs=1e-6)


WRITES_BACK_CHECK = """
import json
from diagnose_babi_questions import accuracy_by_writes_back
# stories of 8, 9, 9 and 20 sentences, segments of 4: sentence 7 of 8 is in the last write, of 9 one write back
print(json.dumps(accuracy_by_writes_back([8, 9, 9, 20], [7, 7, 8, 0], [True, False, True, False], 4)))
"""


def test_writes_back_counts_segments_from_the_first_sentence():
    done = subprocess.run([sys.executable, "-c", WRITES_BACK_CHECK], cwd=ROOT / "bench", capture_output=True,
                          text=True, check=True)  # fmt: skip
    assert json.loads(done.stdout) == [{"writes_back": 0, "questions": 2, "accuracy": 1.0},
                                       {"writes_back": 1, "questions": 1, "accuracy": 0.0},
                                       {"writes_back": "3+", "questions": 1, "accuracy": 0.0}]  # fmt: skip
