"""Shared fixtures: tiny configs so the whole suite runs in minutes on 2 CPU cores, the path of the real data
kept beside the repository (tests that use it skip when it is absent), and the example scripts' `main`s."""

import importlib.util
import os
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
