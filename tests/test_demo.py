"""The README's main job, `examples/demo.py` (what `make demo` runs), end to end with a few steps: it trains,
prints the per-question-type table, saves a checkpoint, reloads it through the Auto classes and answers
questions about fresh stories; given that checkpoint, it only tests it, and prints the same answers."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_demo_trains_saves_reloads_and_answers(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    output = tmp_path / "demo"
    done = subprocess.run(
        [sys.executable, "examples/demo.py", "--quick", "--output_dir", str(output)],
        check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "question type" in done.stdout  # the accuracy table
    assert done.stdout.count("  Q: ") == 6  # six fresh stories answered from memory
    for name in ("model.safetensors", "config.json", "tokenizer.json", "README.md", "modeling_rehearsal_memory.py"):
        assert (output / name).exists(), name

    tested = subprocess.run(
        [sys.executable, "examples/demo.py", "--quick", "--model_name_or_path", str(output)],
        check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert tested.returncode == 0, tested.stderr[-3000:]
    assert "Training on generated stories" not in tested.stdout  # nothing trained
    answers = done.stdout[done.stdout.index("Reloading") :].split("\n", 1)[1]
    assert tested.stdout[tested.stdout.index("Reloading") :].split("\n", 1)[1] == answers
