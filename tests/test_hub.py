"""Loading through the Auto classes: with the package imported, and as remote code without it."""

import json

import pytest
import torch

from rm_hf import RehearsalMemoryModel
from rm_hf.configuration_rehearsal_memory import MEMORY_TYPES
from tests.conftest import remote_memory, tiny_config


def test_checkpoint_ships_code_and_auto_map(tmp_path):
    RehearsalMemoryModel(tiny_config()).save_pretrained(tmp_path)
    auto_map = json.loads((tmp_path / "config.json").read_text())["auto_map"]
    assert auto_map["AutoConfig"] == "configuration_rehearsal_memory.RehearsalMemoryConfig"
    assert auto_map["AutoModel"] == "modeling_rehearsal_memory.RehearsalMemoryModel"
    assert (tmp_path / "modeling_rehearsal_memory.py").exists()
    assert (tmp_path / "configuration_rehearsal_memory.py").exists()


@pytest.mark.parametrize(
    "memory_type, link, addressing",
    [(memory_type, False, "content") for memory_type in MEMORY_TYPES]
    + [("slots", True, "content"), ("slots", False, "key")],
)
def test_remote_code_loads_without_the_package(tmp_path, memory_type, link, addressing):
    config = tiny_config(
        memory_type=memory_type, memory_capacity=6, link_previous_item=link, slot_addressing=addressing
    )
    model = RehearsalMemoryModel(config).eval()
    if link:  # away from its start, so that loading it as remote code is what is tested
        torch.nn.init.normal_(model.previous_item_link.weight, std=0.3)
    checkpoint = tmp_path / "checkpoint"
    model.save_pretrained(checkpoint)
    ids = torch.randint(0, 50, (2, 19))
    name, memory = remote_memory(checkpoint, ids, tmp_path)
    assert name == "RehearsalMemoryModel"
    torch.testing.assert_close(memory, model(ids).memory)
