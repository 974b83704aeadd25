"""Files the package writes are never half-written: a save that fails midway leaves the previous file, which
still loads, and no temporary file behind. A damaged model checkpoint gets an error naming the file."""

import json
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard
from transformers import AutoModel, AutoModelForQuestionAnswering

from rm_hf import RehearsalMemoryForQuestionAnswering, RehearsalMemoryModel
from rm_hf.ctr_data import BehaviorVocab
from rm_hf.model_card import write_qa_model_card
from rm_hf.trainer import RehearsalMemoryTrainer, RehearsalTrainingArguments
from tests.conftest import tiny_config


def crash_midway(monkeypatch, owner, method: str) -> None:
    """Make `owner.method(self, path)`-style writers write the first half of their text, then fail."""

    def write_half(self, *args, **kwargs):
        target = self if isinstance(self, Path) else Path(args[0])
        text = args[0] if isinstance(self, Path) else str(self)
        with open(target, "w", encoding="utf-8") as f:
            f.write(text[: len(text) // 2])
        raise OSError("disk full")

    monkeypatch.setattr(owner, method, write_half)


def test_interrupted_model_card_save_keeps_the_previous_card(tmp_path, monkeypatch):
    model = RehearsalMemoryForQuestionAnswering(tiny_config(id2label={0: "yes", 1: "no"}, rehearsal_num_heads=2))
    path = tmp_path / "README.md"

    def write(accuracy):
        results = {"all": {"accuracy": accuracy, "count": 10}}
        write_qa_model_card(path, model, results, "generated stories", "Trained briefly.", "Ten questions.")

    write(0.5)
    crash_midway(monkeypatch, ModelCard, "save")
    with pytest.raises(OSError, match="disk full"):
        write(0.9)
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["README.md"]
    card = ModelCard.load(path)
    assert card.data.to_dict()["model-index"][0]["results"][0]["metrics"][0]["value"] == 0.5


def test_interrupted_metrics_and_vocabulary_saves_keep_the_previous_files(tmp_path, monkeypatch):
    arguments = RehearsalTrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    trainer = RehearsalMemoryTrainer(model=torch.nn.Linear(1, 1), args=arguments)
    trainer.save_metrics("train", {"train_loss": 1.0})
    trainer.save_metrics("eval", {"eval_auc": 0.75})
    vocab = BehaviorVocab()
    vocab.add("lamp", "home")
    vocab.save(tmp_path)
    before = {p.name: p.read_text() for p in tmp_path.iterdir()}
    assert set(before) == {"train_results.json", "eval_results.json", "all_results.json", "behavior_vocab.json"}

    crash_midway(monkeypatch, Path, "write_text")
    with pytest.raises(OSError, match="disk full"):
        trainer.save_metrics("eval", {"eval_auc": 0.5})
    vocab.add("kettle", "home")
    with pytest.raises(OSError, match="disk full"):
        vocab.save(tmp_path)
    monkeypatch.undo()
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == before
    assert BehaviorVocab.load(tmp_path).items == {"lamp": 1}
    trainer.save_metrics("eval", {"eval_auc": 0.5})  # a save that completes still merges into all_results.json
    assert json.loads((tmp_path / "all_results.json").read_text()) == {"train_loss": 1.0, "eval_auc": 0.5}


@pytest.mark.parametrize("damage", ["empty", "cut in the header", "cut in the tensors", "flipped header byte"])
def test_damaged_checkpoint_raises_value_error_naming_the_file(tmp_path, damage):
    RehearsalMemoryForQuestionAnswering(tiny_config(id2label={0: "yes", 1: "no"})).save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    data = bytearray(weights.read_bytes())
    header_end = 8 + int.from_bytes(data[:8], "little")
    if damage == "flipped header byte":
        data[20] ^= 0xFF
    else:
        keep = {"empty": 0, "cut in the header": header_end // 2, "cut in the tensors": header_end + 100}
        data = data[: keep[damage]]
    weights.write_bytes(bytes(data))
    for load in (
        RehearsalMemoryForQuestionAnswering.from_pretrained,
        AutoModelForQuestionAnswering.from_pretrained,
        AutoModel.from_pretrained,
    ):
        with pytest.raises(ValueError, match=rf"{weights}: cannot read the weights, the file is truncated or corrupt"):
            load(tmp_path)


def test_other_loading_errors_pass_through_unchanged(tmp_path):
    RehearsalMemoryModel(tiny_config()).save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(OSError, match="model.safetensors"):  # transformers' own message for a missing file
        RehearsalMemoryModel.from_pretrained(tmp_path)
