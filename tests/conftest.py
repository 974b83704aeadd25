"""Shared fixtures: tiny configs so the whole suite runs in minutes on 2 CPU cores, the path of the real data
kept beside the repository (tests that use it skip when it is absent), and the example scripts' `main`s."""

import importlib.util
import os
import sys
from pathlib import Path

import pytest
import torch
import transformers

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from rm_hf import RehearsalMemoryConfig  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
TINY_ENCODER = {
    "hidden_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "max_position_embeddings": 64,
    "vocab_size": 50,
    "hidden_dropout_prob": 0.0,
    "attention_probs_dropout_prob": 0.0,
}


def tiny_config(**overrides) -> RehearsalMemoryConfig:
    values = {"encoder_config": dict(TINY_ENCODER), "num_memory_slots": 4, "num_memory_heads": 2, "segment_length": 8}
    values.update(overrides)
    return RehearsalMemoryConfig(**values)


def example_main(name: str):
    """`main(argv)` of examples/<name>.py, to run a script in-process (several times faster than a subprocess)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


# Each rank runs the script as `__main__`, then reports whether the gloo process group outlived it. One left open
# is torn down during interpreter finalisation, when gloo's worker threads may still hold tensors: now and then a
# rank then aborts at exit ("terminate called without an active exception", SIGABRT) after a good run.
RUN_THEN_REPORT = """import runpy, sys, torch.distributed
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
print("process group open at exit:", torch.distributed.is_initialized())
"""


def torchrun(tmp_path: Path, script: Path, processes: int = 2) -> list[str]:
    """The command that runs `script` in `processes` torchrun processes (DDP over gloo on CPU), each reporting at
    exit whether it closed its process group (check with `assert_process_groups_closed`)."""
    wrapper = tmp_path / "run_then_report.py"
    wrapper.write_text(RUN_THEN_REPORT)
    # --standalone: a free port of its own, never one a previous run still holds
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
            str(wrapper), str(script)]  # fmt: skip


def assert_process_groups_closed(log: str, processes: int = 2) -> None:
    assert log.count("process group open at exit: False") == processes, log[-3000:]


@pytest.fixture
def babi_dir() -> Path:
    path = SHARED_DATA / "babi"
    if not path.is_dir():
        pytest.skip("real bAbI data not present beside the repository")
    return path


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def keep_transformers_verbosity():
    """For tests that run an example script in-process: the scripts turn transformers' logging up."""
    verbosity = transformers.logging.get_verbosity()
    yield
    transformers.logging.set_verbosity(verbosity)
