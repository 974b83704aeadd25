"""Shared fixtures: tiny configs so the whole suite runs in minutes on 2 CPU cores, and the path of the
real data kept beside the repository (tests that use it skip when it is absent)."""

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from rm_hf import RehearsalMemoryConfig  # noqa: E402

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
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


@pytest.fixture
def babi_dir() -> Path:
    path = SHARED_DATA / "babi"
    if not path.is_dir():
        pytest.skip("real bAbI data not present beside the repository")
    return path


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
