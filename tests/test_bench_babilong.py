"""Smoke run of bench/bench_babilong.py on a tiny BABILong folder, written by examples/prepare_babilong.py from books
and a bAbI-style task of our own: the numbers mean nothing; the JSON's layout, value ranges and resuming are
checked."""

import json
import shutil

import pytest

from rm_hf.babilong import load_babilong
from tests.conftest import babi_text, example_main, write
from tests.test_bench import run_bench

pytestmark = pytest.mark.slow

# Six questions in the bAbI layout, with bAbI's verbs and names and places of our own.
TASK_TEXT = babi_text(
    "1 Alice went to the cellar.",
    "2 Bruno journeyed to the orchard.",
    "3 Where is Alice?\tcellar\t1",
    "4 Bruno moved to the cellar.",
    "5 Where is Bruno?\tcellar\t4",
    "6 Alice travelled to the porch.",
    "7 Where is Alice?\tporch\t6",
    "1 Cora went to the orchard.",
    "2 Dmitri moved to the porch.",
    "3 Where is Dmitri?\tporch\t2",
    "4 Cora journeyed to the cellar.",
    "5 Where is Cora?\tcellar\t4",
    "6 Where is Dmitri?\tporch\t2",
)


def tiny_babilong(tmp_path, max_train_length="0"):
    """qa1 at 0 and 200 tokens: 6 training (up to `max_train_length`) and 4 test questions; book sentences of 11
    tokens."""
    write(tmp_path / "babi", "qa1_single-supporting-fact_train.txt", TASK_TEXT)
    write(tmp_path / "babi", "qa1_single-supporting-fact_test.txt", TASK_TEXT)
    for book in range(4):
        text = " ".join(f"The clerk of ledger {book} copied line {i} slowly by lamplight." for i in range(40))
        write(tmp_path / "books", f"ledger{book}.txt", text + "\n")
    example_main("prepare_babilong")(
        [
            "--books_dir",
            str(tmp_path / "books"),
            "--babi_dir",
            str(tmp_path / "babi"),
            "--lengths",
            "0,200",
            "--num_train_samples",
            "6",
            "--num_test_samples",
            "4",
            "--max_train_length",
            max_train_length,
            "--output_dir",
            str(tmp_path / "babilong"),
        ]  # fmt: skip
    )
    return tmp_path / "babilong"


def test_bench_babilong_smoke_and_resume(tmp_path):
    data_dir, output_dir = tiny_babilong(tmp_path), tmp_path / "results"
    # items of at most 8 tokens: every book sentence (11 tokens and [SEP]) is read as two; streamed 4 items a write;
    # MemN2N runs on the bAbI stories alone (at most 6 sentences) and is capped out of the 200-token ones
    tiny = ["--data_dir", str(data_dir), "--train_lengths", "0", "--steps", "2", "--batch_size", "4",
            "--max_item_tokens", "8", "--chunk_sentences", "4", "--full_access_max_sentences", "10",
            "--output_dir", str(output_dir)]  # fmt: skip
    run_bench("bench_babilong.py", *tiny)
    results = json.loads((output_dir / "babilong.json").read_text())
    assert {"machine", "command", "arguments", "settings", "data", "measured", "results", "quoted", "runs"} <= set(
        results
    )
    assert results["arguments"]["test_lengths"] == [0, 200]  # every length of the folder by default
    assert results["data"]["manifest"]["settings"]["lengths"] == [0, 200]
    assert "not re-run" in results["quoted"]["label"]
    assert results["quoted"]["qa1"]["RMT (GPT-2 137M, 16 memory tokens, segments of 512)"]["1M"] == 94.2

    rm, memn2n = (results["results"][f"{name}, train 0k x2"]["qa1"] for name in ("rm", "memn2n"))
    for cell in [*rm["lengths"].values(), memn2n["lengths"]["0k"]]:
        assert cell["status"] == "ok" and cell["num_test"] == 4
        assert 0 <= cell["accuracy"] <= 1 and cell["seconds_per_sample"] > 0 and cell["peak_memory_mib"] >= 0
    assert memn2n["lengths"]["200"]["status"].startswith("not run") and memn2n["lengths"]["200"]["accuracy"] is None
    assert rm["train_cpu_seconds"][0] > 0 and rm["seeds"] == [0]

    run = results["runs"]["rm, train 0k x2, qa1, seed 0"]
    assert [stage["length"] for stage in run["training"]] == ["0k"] and run["training"][0]["train_samples"] == 6
    assert 0 < run["vocabulary_size"] < 100
    short, long = run["test"]["0k"], run["test"]["200"]
    assert 180 <= long["mean_length_tokens"] <= 200 and long["mean_items"] > 2 * 15  # 15+ book sentences, 2 items each
    assert short["mean_items"] <= 6
    assert (output_dir / "babilong.png").stat().st_size > 0

    # the same settings again: every run is already there, nothing is retrained or retested
    run_bench("bench_babilong.py", *tiny)
    assert json.loads((output_dir / "babilong.json").read_text())["runs"] == results["runs"]

    # other models add their runs beside them: RM trained without rehearsal has no rehearsal losses; with the
    # teacher sampler it trains the teacher too; the supporting-fact oracle draws from the collator's weights
    run_bench("bench_babilong.py", *tiny, "--models", "rm_no_rehearsal,rm_teacher,rm_supporting")
    again = json.loads((output_dir / "babilong.json").read_text())["runs"]
    added = {f"{name}, train 0k x2, qa1, seed 0" for name in ("rm_no_rehearsal", "rm_teacher", "rm_supporting")}
    assert again.keys() == {*results["runs"], *added}
    ablation, teacher, oracle = (again[f"{name}, train 0k x2, qa1, seed 0"]
                                 for name in ("rm_no_rehearsal", "rm_teacher", "rm_supporting"))  # fmt: skip
    assert set(ablation["training"][0]["final_losses"]) == {"loss"}
    assert "recollection_loss" in run["training"][0]["final_losses"]
    assert ablation["parameters"] < run["parameters"] == oracle["parameters"] < teacher["parameters"]
    samplers = [r["rehearsal_sampler"] for r in (run, ablation, teacher, oracle)]
    assert samplers == ["uniform", None, "teacher", "external"]
    # each run keeps the command and machine that trained it; the file's own command is the latest invocation's
    assert "--models" not in run["trained_by"]["command"] and run["trained_by"]["machine"]["cores"] >= 1
    assert "--models rm_no_rehearsal,rm_teacher,rm_supporting" in teacher["trained_by"]["command"]
    assert "sampler_loss" in teacher["training"][0]["final_losses"]
    assert "supporting_fact_coverage" not in ablation
    # bAbI stories alone (at most 6 items): every fragment of 8 items holds the whole story, facts included
    assert [r["supporting_fact_coverage"] for r in (run, teacher, oracle)] == [{"0k": 1.0}] * 3
    assert all(cell["status"] == "ok" for r in (teacher, oracle) for cell in r["test"].values())


def test_train_split_stops_at_the_longest_training_length(tmp_path):
    data_dir = tiny_babilong(tmp_path)
    assert len(load_babilong(data_dir, [1], 200, "test")) == 4
    with pytest.raises(ValueError, match="no 'train' split"):
        load_babilong(data_dir, [1], 200, "train")


def test_bench_babilong_steps_per_length_and_schedule(tmp_path):
    data_dir, output_dir = tiny_babilong(tmp_path, max_train_length="200"), tmp_path / "results"
    tiny = ["--data_dir", str(data_dir), "--train_lengths", "0,200", "--batch_size", "4", "--max_item_tokens", "8",
            "--chunk_sentences", "4", "--test_lengths", "0", "--output_dir", str(output_dir)]  # fmt: skip
    run_bench("bench_babilong.py", *tiny, "--models", "rm,rm_supporting", "--steps", "3,1", "--lr_schedule", "linear")
    runs = json.loads((output_dir / "babilong.json").read_text())["runs"]
    run = runs["rm, train 0k x3, 200 x1, linear lr, qa1, seed 0"]
    # among 30+ book items, uniform draws seldom hold the fact; the oracle sampler, told where it is, mostly does
    oracle = runs["rm_supporting, train 0k x3, 200 x1, linear lr, qa1, seed 0"]["supporting_fact_coverage"]["200"]
    assert run["supporting_fact_coverage"]["200"] < 0.5 < oracle
    assert [(stage["length"], stage["steps"], stage["train_samples"]) for stage in run["training"]] == [
        ("0k", 3, 6),
        ("200", 1, 4),  # one batch of 4 reads 4 of the 6 rows: only those are encoded
    ]
    assert run["train_cpu_seconds"] == pytest.approx(sum(stage["train_cpu_seconds"] for stage in run["training"]))
    for steps in ("3,1,2", "3,x"):
        stderr = run_bench("bench_babilong.py", *tiny, "--steps", steps, returncode=2)
        assert "--steps takes" in stderr


def test_bench_babilong_config_overrides_reach_the_model_and_bind_the_file(tmp_path):
    data_dir = tiny_babilong(tmp_path)
    tiny = ["--data_dir", str(data_dir), "--train_lengths", "0", "--steps", "2", "--batch_size", "4",
            "--max_item_tokens", "8", "--test_lengths", "0", "--models", "rm"]  # fmt: skip
    run_bench("bench_babilong.py", *tiny, "--output_dir", str(tmp_path / "default"))
    overridden = tmp_path / "two_layers"
    run_bench("bench_babilong.py", *tiny, "--output_dir", str(overridden), "--config", "rehearsal_num_layers=2")
    default, two_layers = (
        json.loads((folder / "babilong.json").read_text()) for folder in (tmp_path / "default", overridden)
    )
    assert "config" not in default["settings"] and two_layers["settings"]["config"] == {"rehearsal_num_layers": 2}
    key = "rm, train 0k x2, qa1, seed 0"
    assert two_layers["runs"][key]["parameters"] > default["runs"][key]["parameters"]  # run_qa.py's rehearser has 1
    # runs made with other config values never mix in one file
    stderr = run_bench("bench_babilong.py", *tiny, "--output_dir", str(overridden), returncode=1)
    assert "other settings (config)" in stderr
    stderr = run_bench("bench_babilong.py", *tiny, "--output_dir", str(overridden), "--config", "oops", returncode=2)
    assert "a config override is KEY=VALUE" in stderr
    stderr = run_bench("bench_babilong.py", *tiny, "--config", "rehearsal_fragment_lenght=2", returncode=2)
    assert "not RehearsalMemoryConfig fields: rehearsal_fragment_lenght" in stderr
    # renaming bAbI's names in training is a setting of the file too, and only for the tasks whose names mean nothing
    run_bench("bench_babilong.py", *tiny, "--output_dir", str(tmp_path / "renamed"), "--permute_names")
    assert json.loads((tmp_path / "renamed" / "babilong.json").read_text())["settings"]["permute_names"] is True
    stderr = run_bench("bench_babilong.py", *tiny, "--tasks", "20", "--permute_names", returncode=2)
    assert "not of task 20" in stderr


def test_bench_babilong_keeps_models_and_tests_them_again_without_training(tmp_path):
    data_dir, models_dir = tiny_babilong(tmp_path), tmp_path / "models"
    tiny = ["--data_dir", str(data_dir), "--train_lengths", "0", "--steps", "2", "--batch_size", "4",
            "--max_item_tokens", "8", "--chunk_sentences", "4", "--models", "rm_teacher",
            "--models_dir", str(models_dir)]  # fmt: skip
    run_bench("bench_babilong.py", *tiny, "--test_lengths", "0", "--output_dir", str(tmp_path / "short"))
    kept = models_dir / "rm_teacher_qa1_seed0"
    assert (kept / "config.json").exists() and (kept / "training_record.json").exists()
    # other test lengths, into another results file: the kept model is tested, not trained again
    run_bench("bench_babilong.py", *tiny, "--test_lengths", "0,200", "--output_dir", str(tmp_path / "long"))
    key = "rm_teacher, train 0k x2, qa1, seed 0"
    short, long = (
        json.loads((tmp_path / name / "babilong.json").read_text())["runs"][key] for name in ("short", "long")
    )
    # (a measured CPU time comes back to the last digit: read from the record, not measured again)
    assert long["training"] == short["training"] and long["train_cpu_seconds"] == short["train_cpu_seconds"]
    assert long["supporting_fact_coverage"] == short["supporting_fact_coverage"]
    assert long["test"]["0k"]["accuracy"] == short["test"]["0k"]["accuracy"]  # the same weights answer the same
    assert set(long["test"]) == {"0k", "200"} and set(short["test"]) == {"0k"}
    # a model trained with another curriculum is never tested under this run's name
    stderr = run_bench("bench_babilong.py", *tiny, "--steps", "3", "--output_dir", str(tmp_path / "other"),
                       returncode=1)  # fmt: skip
    assert f"{kept} keeps a model trained with other settings (curriculum)" in stderr


def test_bench_babilong_two_stage_teacher_draws_from_the_kept_memn2n(tmp_path):
    data_dir, models_dir = tiny_babilong(tmp_path, max_train_length="200"), tmp_path / "models"
    tiny = ["--data_dir", str(data_dir), "--train_lengths", "0,200", "--steps", "2", "--batch_size", "4",
            "--max_item_tokens", "8", "--chunk_sentences", "4", "--test_lengths", "0",
            "--output_dir", str(tmp_path / "results")]  # fmt: skip
    stderr = run_bench("bench_babilong.py", *tiny, "--models", "rm_memn2n_teacher", returncode=2)
    assert "rm_memn2n_teacher draws from a memn2n model kept in --models_dir" in stderr
    stderr = run_bench("bench_babilong.py", *tiny, "--models", "rm_memn2n_teacher", "--models_dir", str(models_dir),
                       returncode=1)  # fmt: skip
    assert "run memn2n first" in stderr
    # named after it, the teacher is still trained first
    run_bench("bench_babilong.py", *tiny, "--models", "rm_memn2n_teacher,memn2n", "--models_dir", str(models_dir))
    assert (models_dir / "memn2n_qa1_seed0" / "training_record.json").exists()
    runs = json.loads((tmp_path / "results" / "babilong.json").read_text())["runs"]
    run = runs["rm_memn2n_teacher, train 0k,200 x2, qa1, seed 0"]
    assert run["rehearsal_sampler"] == "external" and "sampler_loss" not in run["training"][0]["final_losses"]
    assert set(run["supporting_fact_coverage"]) == {"0k", "200"} and run["test"]["0k"]["status"] == "ok"
    # a memn2n trained with another curriculum is no teacher for this one
    shutil.rmtree(models_dir / "rm_memn2n_teacher_qa1_seed0")
    stderr = run_bench("bench_babilong.py", *tiny, "--steps", "3", "--models", "rm_memn2n_teacher", "--models_dir",
                       str(models_dir), "--output_dir", str(tmp_path / "other"), returncode=1)  # fmt: skip
    assert "keeps a memn2n model trained with other settings (curriculum)" in stderr


def test_diagnose_write_gate_reads_a_kept_model(tmp_path):
    data_dir, models_dir = tiny_babilong(tmp_path), tmp_path / "models"
    run_bench("bench_babilong.py", "--data_dir", str(data_dir), "--train_lengths", "0", "--steps", "2",
              "--batch_size", "4", "--models", "rm", "--test_lengths", "0", "--models_dir", str(models_dir),
              "--output_dir", str(tmp_path / "results"))  # fmt: skip
    output = tmp_path / "gate.json"
    run_bench("diagnose_write_gate.py", "--data_dir", str(data_dir), "--task", "1", "--models",
              f"tiny={models_dir / 'rm_qa1_seed0'}", "--lengths", "0,200", "--num_test", "4", "--output", str(output))  # fmt: skip
    runs = json.loads(output.read_text())["runs"]
    assert set(runs) == {"tiny, qa1, 0k", "tiny, qa1, 200"}
    for run in runs.values():
        assert run["num_test"] == 4 and 0 <= run["accuracy"] <= 1 and "--task 1" in run["command"]
        # every story has its fact in a segment of its own kind; a relevance is a gate's opening, in [0, 1]
        assert sum(cell["segments"] for cell in run["gate"]["fact"].values()) >= 4
        cells = [cell for kind in run["gate"].values() for cell in kind.values()]
        assert all(0 <= cell["mean_largest_relevance"] <= 1 for cell in cells)
        # how far the slots moved before each write: a cosine to M_0 and a norm, one per segment write
        assert all(-1 <= cell["cosine_to_initial"] <= 1 and cell["norm"] > 0 for cell in run["drift"].values())
        assert sum(cell["segments"] for cell in run["drift"].values()) == sum(cell["segments"] for cell in cells)
        assert sum(cell["num_test"] for cell in run["accuracy_by_last_fact_back"].values()) == 4
    # bAbI stories alone (at most 6 sentences): everything is written in the first bin, the fact the last few back
    assert set(runs["tiny, qa1, 0k"]["gate"]["fact"]) == {"0-255"}
    assert set(runs["tiny, qa1, 0k"]["accuracy_by_last_fact_back"]) == {"0-249"}
    # the gate opens, so the slots move away from M_0 as a story is read (read again below with it shut: they do not)
    assert runs["tiny, qa1, 200"]["drift"]["0-255"]["cosine_to_initial"] < 0.99
    # read again with a write threshold above every gate's opening: nothing is written, no slot moves
    run_bench("diagnose_write_gate.py", "--data_dir", str(data_dir), "--task", "1", "--models",
              f"tiny={models_dir / 'rm_qa1_seed0'}", "--lengths", "200", "--num_test", "4", "--output", str(output),
              "--slot_write_threshold", "0.999")  # fmt: skip
    shut = json.loads(output.read_text())["runs"]["tiny, qa1, 200, tau 0.999"]
    assert all(cell["mean_largest_relevance"] == 0 for kind in shut["gate"].values() for cell in kind.values())
    assert all(cell["cosine_to_initial"] == pytest.approx(1) for cell in shut["drift"].values())
    stderr = run_bench("diagnose_write_gate.py", "--data_dir", str(data_dir), "--task", "1", "--models", "oops",
                       returncode=2)  # fmt: skip
    assert "--models takes NAME=FOLDER" in stderr


def test_write_threshold_is_chosen_on_validation_and_set_only_for_testing(tmp_path):
    data_dir, models_dir = tiny_babilong(tmp_path), tmp_path / "models"
    tiny = ["--data_dir", str(data_dir), "--train_lengths", "0", "--steps", "2", "--batch_size", "4", "--models",
            "rm", "--test_lengths", "0", "--models_dir", str(models_dir)]  # fmt: skip
    run_bench("bench_babilong.py", *tiny, "--output_dir", str(tmp_path / "trained"))
    kept = models_dir / "rm_qa1_seed0"
    output = tmp_path / "calibration.json"
    run_bench("calibrate_write_threshold.py", "--data_dir", str(data_dir), "--task", "1", "--models",
              f"tiny={kept}", "--length", "0", "--num_samples", "4", "--thresholds", "0.3,0.6",
              "--output", str(output))  # fmt: skip
    run = json.loads(output.read_text())["runs"]["tiny, qa1, 0k train"]
    # 0 (the model as trained) is always a candidate; the choice is the best of them on the train split
    assert set(run["accuracy"]) == set(run["answer_loss"]) == {"0.0", "0.3", "0.6"} and run["num_samples"] == 4
    assert run["accuracy"][str(run["chosen"])] == max(run["accuracy"].values())
    # more thresholds later: only the new one is measured, the choice is among all
    run_bench("calibrate_write_threshold.py", "--data_dir", str(data_dir), "--task", "1", "--models",
              f"tiny={kept}", "--length", "0", "--num_samples", "4", "--thresholds", "0.3,0.9",
              "--output", str(output))  # fmt: skip
    again = json.loads(output.read_text())["runs"]["tiny, qa1, 0k train"]
    assert set(again["accuracy"]) == {"0.0", "0.3", "0.6", "0.9"}
    assert {tau: again["answer_loss"][tau] for tau in run["answer_loss"]} == run["answer_loss"]
    assert again["accuracy"][str(again["chosen"])] == max(again["accuracy"].values())
    stderr = run_bench("calibrate_write_threshold.py", "--data_dir", str(data_dir), "--task", "1", "--models",
                       f"tiny={kept}", "--thresholds", "1.2", returncode=2)  # fmt: skip
    assert "--thresholds lie in [0, 1)" in stderr
    # the kept model is tested under the threshold, not trained again, and the file records it
    run_bench("bench_babilong.py", *tiny, "--output_dir", str(tmp_path / "tau"), "--test_config",
              "slot_write_threshold=0.3")  # fmt: skip
    trained, tau = (json.loads((tmp_path / name / "babilong.json").read_text()) for name in ("trained", "tau"))
    assert tau["settings"]["test_config"] == {"slot_write_threshold": 0.3} and "test_config" not in trained["settings"]
    key = "rm, train 0k x2, qa1, seed 0"
    assert tau["runs"][key]["train_cpu_seconds"] == trained["runs"][key]["train_cpu_seconds"]
    assert tau["runs"][key]["test"]["0k"]["status"] == "ok"
    # it reaches the loaded model: a value out of range stops the test there
    stderr = run_bench("bench_babilong.py", *tiny, "--output_dir", str(tmp_path / "bad"), "--test_config",
                       "slot_write_threshold=1.5", returncode=1)  # fmt: skip
    assert "slot_write_threshold" in stderr
