"""Loading through the Auto classes: with the package imported, and as remote code without it."""

import json
import subprocess
import sys
import textwrap

import pytest
import torch

from rm_hf import RehearsalMemoryModel
from rm_hf.configuration_rehearsal_memory import MEMORY_TYPES
from tests.conftest import tiny_config

# Runs in a fresh interpreter where `import rm_hf` fails, from a directory that does not contain it.
REMOTE_LOAD = textwrap.dedent(
    """
    import sys, torch
    sys.modules["rm_hf"] = None  # make the installed package unimportable
    from transformers import AutoModel
    checkpoint, ids_path = sys.argv[1], sys.argv[2]
    model = AutoModel.from_pretrained(checkpoint, trust_remote_code=True).eval()
    assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
    torch.save(model(torch.load(ids_path, weights_only=True)).memory, ids_path + ".out")
    print(type(model).__name__)
    """
)


def remote_memory(checkpoint, ids, tmp_path):
    ids_path = tmp_path / "ids.pt"
    torch.save(ids, ids_path)
    result = subprocess.run(
        [sys.executable, "-c", REMOTE_LOAD, str(checkpoint), str(ids_path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={"HF_HUB_OFFLINE": "1", "PATH": ""},
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.split()[-1], torch.load(str(ids_path) + ".out", weights_only=True)


def test_checkpoint_ships_code_and_auto_map(tmp_path):
    RehearsalMemoryModel(tiny_config()).save_pretrained(tmp_path)
    auto_map = json.loads((tmp_path / "config.json").read_text())["auto_map"]
    assert auto_map["AutoConfig"] == "configuration_rehearsal_memory.RehearsalMemoryConfig"
    assert auto_map["AutoModel"] == "modeling_rehearsal_memory.RehearsalMemoryModel"
    assert (tmp_path / "modeling_rehearsal_memory.py").exists()
    assert (tmp_path / "configuration_rehearsal_memory.py").exists()


@pytest.mark.parametrize("memory_type", MEMORY_TYPES)
def test_remote_code_loads_without_the_package(tmp_path, memory_type):
    model = RehearsalMemoryModel(tiny_config(memory_type=memory_type, memory_capacity=6)).eval()
    checkpoint = tmp_path / "checkpoint"
    model.save_pretrained(checkpoint)
    ids = torch.randint(0, 50, (2, 19))
    name, memory = remote_memory(checkpoint, ids, tmp_path)
    assert name == "RehearsalMemoryModel"
    torch.testing.assert_close(memory, model(ids).memory)
