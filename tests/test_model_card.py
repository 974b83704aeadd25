"""Model cards and publishing: the cards `run_qa.py` and `run_ctr.py` write parse with `huggingface_hub.ModelCard`,
claim a Hub dataset only for bAbI, give every question type its own result and set no `pipeline_tag`; their usage
snippets run as written with `transformers` and `torch` alone (no `rm_hf`); uploads of a trained folder leave out
checkpoints, pickles and temporaries, and `push_to_hub` keeps our card."""

import ast
import json
import os
import re
import subprocess
import sys
from concurrent.futures import Future
from pathlib import Path

import pytest
from huggingface_hub import HfApi, ModelCard
from huggingface_hub.hf_api import RepoUrl
from huggingface_hub.utils import filter_repo_objects

from rm_hf import RehearsalMemoryForQuestionAnswering
from rm_hf.model_card import (
    BABI_HUB_ID,
    TRANSFORMERS_REQUIREMENT,
    babi_dataset,
    local_dataset,
    upload_model_folder,
    write_qa_model_card,
)
from rm_hf.trainer import RehearsalMemoryTrainer, RehearsalTrainingArguments
from tests.conftest import TOY_LABELS, example_main, tiny_config, toy_dataset

QA_RUN = [
    "--num_train_stories", "64", "--num_eval_stories", "24", "--story_length", "8", "--hidden_size", "32",
    "--num_memory_slots", "4", "--segment_length", "16", "--per_device_train_batch_size", "8",
    "--max_steps", "3", "--save_strategy", "no", "--use_cpu", "--report_to", "none", "--disable_tqdm", "true",
]  # fmt: skip
CTR_RUN = [
    "--data", "synthetic", "--num_users", "48", "--history_length", "40", "--num_items", "20",
    "--num_categories", "8", "--num_memory_slots", "4", "--segment_length", "8", "--item_embedding_dim", "8",
    "--hidden_size", "16", "--num_layers", "1", "--num_attention_heads", "2", "--do_train", "--do_eval",
    "--max_steps", "3", "--per_device_train_batch_size", "8", "--save_strategy", "no", "--use_cpu",
    "--report_to", "none", "--disable_tqdm", "true",
]  # fmt: skip

# Runs a card's snippet in a fresh interpreter where `import rm_hf` fails: it must need transformers and torch only.
WITHOUT_RM_HF = """import runpy, sys
sys.modules["rm_hf"] = None
runpy.run_path(sys.argv[1], run_name="__main__")
"""


def model_index(card: ModelCard) -> list[dict]:
    return card.data.to_dict()["model-index"][0]["results"]


def assert_distinct_results(card: ModelCard) -> None:
    """Each result its own dataset name, and its own (task, dataset type, config, split): the Hub merges results
    that share those into one, under the first one's name."""
    entries = model_index(card)
    names = [entry["dataset"]["name"] for entry in entries]
    assert len(set(names)) == len(names), names
    assert len({result.unique_identifier for result in card.data.eval_results}) == len(entries)


def run_snippet(folder: Path, tmp_path: Path) -> str:
    """Run the card's python block as written, with the card's model id pointing at `folder`; returns stdout."""
    text = (folder / "README.md").read_text()
    assert f'```bash\npip install "{TRANSFORMERS_REQUIREMENT}" torch\n```' in text  # the install line
    (snippet,) = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    imported = {
        alias.name.split(".")[0] for node in ast.walk(ast.parse(snippet)) if isinstance(node, ast.Import)
        for alias in node.names
    } | {node.module.split(".")[0] for node in ast.walk(ast.parse(snippet)) if isinstance(node, ast.ImportFrom)}  # fmt: skip
    assert imported <= {"json", "torch", "transformers"}, imported  # nothing the install line does not install
    snippet, substituted = re.subn(r'^model_id = ".*"$', f"model_id = {str(folder)!r}", snippet, flags=re.M)
    assert substituted == 1
    (tmp_path / "snippet.py").write_text(snippet)
    (tmp_path / "runner.py").write_text(WITHOUT_RM_HF)
    env = {
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf"),
        "PATH": os.environ.get("PATH", ""),
        "OMP_NUM_THREADS": "1",
    }
    result = subprocess.run(
        [sys.executable, str(tmp_path / "runner.py"), str(tmp_path / "snippet.py")],
        cwd=tmp_path, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.mark.usefixtures("keep_transformers_verbosity")
def test_qa_card_on_generated_stories(tmp_path):
    output = tmp_path / "out" / "qa-generated"
    example_main("run_qa")(["--output_dir", str(output), "--hub_model_id", "someone/rm-qa-tiny", *QA_RUN])
    results = json.loads((output / "all_results.json").read_text())
    card = ModelCard.load(output / "README.md")

    # generated stories are no Hub dataset; no Hub widget can run the model; the id is --hub_model_id's
    assert card.data.datasets is None and card.data.pipeline_tag is None
    assert card.data.model_name == "rm-qa-tiny" and 'model_id = "someone/rm-qa-tiny"' in card.text
    assert_distinct_results(card)
    reported = {entry["dataset"].get("config", "all"): entry for entry in model_index(card)}
    assert set(reported) == {"all", "where_person", "where_object", "who_has"}
    for name, entry in reported.items():
        assert entry["dataset"]["type"] == "generated-stories"
        assert entry["metrics"][0]["value"] == round(results[f"eval_{name}_accuracy"], 4)
    assert "not bAbI, and no Hub dataset" in card.text

    answer = ast.literal_eval(run_snippet(output, tmp_path).strip())
    assert answer["answer"] in json.loads((output / "config.json").read_text())["id2label"].values()
    assert 0 <= answer["score"] <= 1


@pytest.mark.usefixtures("keep_transformers_verbosity")
def test_qa_card_on_babi_with_sentence_items(tmp_path, babi_dir):
    output = tmp_path / "qa-babi"
    at = QA_RUN.index("--story_length")
    args = ["--babi_dir", str(babi_dir), "--babi_subset", "en", "--tasks", "1,2", "--story_items", "sentences"]
    example_main("run_qa")(["--output_dir", str(output), *args, *QA_RUN[:at], *QA_RUN[at + 2 :]])
    card = ModelCard.load(output / "README.md")

    assert card.data.datasets == [BABI_HUB_ID] and card.data.pipeline_tag is None
    assert card.data.model_name == "qa-babi" and 'model_id = "qa-babi"' in card.text  # the folder's name
    assert_distinct_results(card)
    configs = [entry["dataset"].get("config") for entry in model_index(card)]
    assert configs == [None, "en-qa1", "en-qa2"]  # all questions, then the Hub configs of tasks 1 and 2
    assert all(entry["dataset"]["type"] == BABI_HUB_ID for entry in model_index(card))
    assert "CC BY 3.0" in card.text and "@article{weston2015babi" in card.text

    answer = ast.literal_eval(run_snippet(output, tmp_path).strip())
    assert answer["answer"] in json.loads((output / "config.json").read_text())["id2label"].values()
    assert 0 <= answer["score"] <= 1


def test_qa_card_with_one_question_type_reports_it_once(tmp_path):
    model = RehearsalMemoryForQuestionAnswering(tiny_config(id2label={0: "yes", 1: "no"}, rehearsal_num_heads=2))
    results = {"all": {"accuracy": 0.75, "count": 8}, "qa6": {"accuracy": 0.75, "count": 8}}
    path = tmp_path / "my-model" / "README.md"
    path.parent.mkdir()
    write_qa_model_card(path, model, results, babi_dataset("en-10k", "6"), "Trained briefly.", "Eight questions.")
    card = ModelCard.load(path)
    (entry,) = model_index(card)
    assert entry["dataset"] == {
        "name": "bAbI v1.2 en-10k, task 6: task 6 (qa6)",
        "type": BABI_HUB_ID,
        "config": "en-10k-qa6",
        "split": "test",
    }
    assert card.data.model_name == "my-model"

    local = local_dataset("my stories", "my-stories")
    write_qa_model_card(path, model, results, local, "Trained briefly.", "Eight questions.", model_id="org/qa")
    card = ModelCard.load(path)
    assert card.data.datasets is None and card.data.model_name == "qa"
    assert model_index(card)[0]["dataset"]["type"] == "my-stories"

    write_qa_model_card(path, model, None, local, "Trained briefly.", "Not evaluated.")  # trained, not evaluated
    card = ModelCard.load(path)
    assert card.data.eval_results is None and "No evaluation was run" in card.text


@pytest.mark.usefixtures("keep_transformers_verbosity")
@pytest.mark.parametrize("model", ["rm", "mean_pool"])
def test_click_card(tmp_path, model):
    output = tmp_path / f"ctr-{model}"
    example_main("run_ctr")(["--model", model, "--output_dir", str(output), *CTR_RUN])
    results = json.loads((output / "all_results.json").read_text())
    card = ModelCard.load(output / "README.md")

    assert card.data.datasets is None and card.data.pipeline_tag is None and card.data.model_name == output.name
    assert_distinct_results(card)
    (entry,) = model_index(card)
    assert entry["dataset"]["type"] == "synthetic-click-histories"
    metrics = {metric["name"]: metric["value"] for metric in entry["metrics"]}
    log_loss = results.get("eval_log_loss", results.get("eval_logloss"))
    expected = {"AUC": results["eval_auc"], "log loss": log_loss, "accuracy": results["eval_accuracy"]}
    assert metrics == {name: round(value, 4) for name, value in expected.items()}
    assert "python examples/run_ctr.py --model" in card.text

    if model == "mean_pool":  # a baseline ships no modeling code: its card says so and has no snippet
        assert "```python" not in card.text and "is not shipped with the checkpoint" in card.text
        return
    scores = ast.literal_eval(run_snippet(output, tmp_path).strip())
    assert len(scores) >= 1 and all(0 <= score["score"] <= 1 for score in scores)


# ---------------------------------------------------------------------------------------------------------
# Publishing


class FakeHub:
    """Stands in for the Hub: records, for each `upload_folder`, the files it would upload (its own filtering,
    applied to the folder as it is at the call) and the card among them."""

    def __init__(self, monkeypatch):
        self.uploads = []
        hub = self

        def create_repo(api, repo_id, **kwargs):
            return RepoUrl(f"https://huggingface.co/{repo_id}")

        def upload_folder(api, *, repo_id, folder_path, ignore_patterns=None, run_as_future=False, **kwargs):
            folder = Path(folder_path)
            files = sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file())
            kept = set(filter_repo_objects(files, ignore_patterns=[*(ignore_patterns or []), ".git/*"]))
            card = (folder / "README.md").read_text() if "README.md" in kept else None
            hub.uploads.append(
                {"folder": folder, "files": kept, "card": card, "path_in_repo": kwargs.get("path_in_repo")}
            )
            if not run_as_future:
                return None
            future = Future()
            future.set_result(None)
            return future

        monkeypatch.setattr(HfApi, "create_repo", create_repo)
        monkeypatch.setattr(HfApi, "upload_folder", upload_folder)


def trained_folder(root: Path) -> Path:
    """A folder as training leaves it: the model and its card, a checkpoint, pickles and a temporary."""
    files = {
        "README.md": "---\nlibrary_name: transformers\n---\n# ours\n",
        "model.safetensors": "",
        "config.json": "{}",
        "training_args.json": "{}",
        "all_results.json": "{}",
        "training_args.bin": "",
        "rng_state.pth": "",
        ".README.md.k2j4.tmp": "",
        "checkpoint-2/model.safetensors": "",
        "checkpoint-2/optimizer.pt": "",
        "checkpoint-2/training_args.bin": "",
        "checkpoint-2/trainer_state.json": "{}",
        "runs/events.out.tfevents": "",
    }
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_upload_model_folder_leaves_out_checkpoints_pickles_and_temporaries(tmp_path, monkeypatch):
    hub = FakeHub(monkeypatch)
    folder = trained_folder(tmp_path / "model")
    upload_model_folder(folder, "someone/model", commit_message="First version")
    (upload,) = hub.uploads
    assert upload["files"] == {
        "README.md", "model.safetensors", "config.json", "training_args.json", "all_results.json",
        "runs/events.out.tfevents",
    }  # fmt: skip
    (folder / "README.md").unlink()
    with pytest.raises(FileNotFoundError, match="no model card"):
        upload_model_folder(folder, "someone/model")


def test_push_to_hub_keeps_our_card_and_uploads_no_pickles(tmp_path, monkeypatch):
    hub = FakeHub(monkeypatch)
    output = tmp_path / "pushed"
    model = RehearsalMemoryForQuestionAnswering(tiny_config(id2label=TOY_LABELS, rehearsal_num_heads=2))
    arguments = RehearsalTrainingArguments(
        output_dir=str(output), push_to_hub=True, hub_model_id="someone/pushed", max_steps=4,
        per_device_train_batch_size=4, save_strategy="steps", save_steps=2, use_cpu=True, report_to="none",
        disable_tqdm=True,
    )  # fmt: skip
    trainer = RehearsalMemoryTrainer(model=model, args=arguments, train_dataset=toy_dataset())
    trainer.train()  # pushes the output folder at each save (hub_strategy="every_save")
    during_training = list(hub.uploads)
    assert len(during_training) == 2 and all(upload["folder"] == output for upload in during_training)

    trainer.create_model_card()  # no card yet: Trainer's draft
    assert "generated_from_trainer" in ModelCard.load(output / "README.md").data.tags
    results = {"all": {"accuracy": 0.5, "count": 16}}
    write_qa_model_card(output / "README.md", model, results, "toy data", "Trained briefly.", "Toy data.")
    ours = (output / "README.md").read_text()
    (output / ".all_results.json.k2j4.tmp").write_text("")  # left by a save killed midway
    (output / "rng_state.pth").write_text("")  # a pickle copied in by hand
    trainer.push_to_hub(commit_message="End of training")
    final = hub.uploads[-1]
    assert final["card"] == ours and (output / "README.md").read_text() == ours  # not replaced by Trainer's draft
    assert "model.safetensors" in final["files"] and "training_args.json" in final["files"]

    for upload in hub.uploads:  # nothing pickled, temporary or from a checkpoint, during training or at the end
        assert not [name for name in upload["files"] if name.endswith((".bin", ".pt", ".pth", ".tmp"))], upload
        assert not [name for name in upload["files"] if name.startswith("checkpoint-")], upload["files"]
    # the folder itself holds the arguments as JSON, though Trainer pickled them before each push
    assert not (output / "training_args.bin").exists() and (output / "training_args.json").exists()
    assert (output / "checkpoint-4" / "optimizer.pt").exists()  # checkpoints keep what resuming needs


def test_create_model_card_replaces_only_trainers_draft(tmp_path):
    model = RehearsalMemoryForQuestionAnswering(tiny_config(id2label=TOY_LABELS, rehearsal_num_heads=2))
    arguments = RehearsalTrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    trainer = RehearsalMemoryTrainer(model=model, args=arguments)
    card = tmp_path / "README.md"
    trainer.create_model_card()  # no card: Trainer's draft
    assert "generated_from_trainer" in ModelCard.load(card).data.tags
    trainer.create_model_card(model_name="renamed")  # a draft is redrafted
    assert "renamed" in card.read_text()
    for own in ("# My notes\n", "---\ntags: [unclosed\n---\n# My notes\n"):  # a card of one's own, parsable or not
        card.write_text(own)
        trainer.create_model_card()
        assert card.read_text() == own


@pytest.mark.usefixtures("keep_transformers_verbosity")
def test_run_qa_push_to_hub_publishes_our_card(tmp_path, monkeypatch):
    hub = FakeHub(monkeypatch)
    output = tmp_path / "pushed-qa"
    example_main("run_qa")(
        ["--output_dir", str(output), "--push_to_hub", "--hub_model_id", "someone/pushed-qa", *QA_RUN]
    )
    final = hub.uploads[-1]
    assert final["folder"] == output and final["card"] == (output / "README.md").read_text()
    card = ModelCard.load(output / "README.md")
    assert "rehearsal-memory" in card.data.tags and "generated_from_trainer" not in card.data.tags
    assert 'model_id = "someone/pushed-qa"' in card.text
    assert {"model.safetensors", "config.json", "tokenizer.json", "pipeline_rehearsal_memory.py"} <= final["files"]
    for upload in hub.uploads:
        assert not [name for name in upload["files"] if name.endswith((".bin", ".pt", ".pth", ".tmp"))], upload


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parents[1] / "model_cards").glob("*.md")))
def test_stored_model_cards_parse_with_distinct_results(path):
    card = ModelCard.load(path)
    assert card.data.library_name == "transformers" and card.data.pipeline_tag is None
    assert_distinct_results(card)
    assert f'pip install "{TRANSFORMERS_REQUIREMENT}" torch' in card.text
    assert "Command: `python examples/run_" in card.text  # the run that produced it
    if card.data.datasets:
        assert card.data.datasets == [BABI_HUB_ID]
