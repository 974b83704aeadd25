"""End to end: examples/run_qa.py trains, evaluates, writes results and a model card, and its checkpoint
reloads through the Auto classes; malformed bAbI lines fail the run or are skipped and counted; two torchrun
processes train one model together (DDP over gloo); and a few hundred steps on an easy generated task learn well
above chance."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard
from transformers import AutoModelForQuestionAnswering, AutoTokenizer

from rm_hf import RehearsalMemoryConfig, RehearsalMemoryForQuestionAnswering
from rm_hf.babi import BabiFormatError, answer_vocabulary
from rm_hf.qa_data import QACollator, encode_qa_dataset
from rm_hf.story_generator import generate_stories
from rm_hf.tokenization import build_word_tokenizer
from tests.conftest import assert_process_groups_closed, example_main, torchrun

ROOT = Path(__file__).resolve().parents[1]
TINY_RUN = [
    "--num_train_stories", "64", "--num_eval_stories", "24", "--story_length", "8", "--hidden_size", "32",
    "--num_memory_slots", "4", "--segment_length", "16", "--per_device_train_batch_size", "8",
    "--max_steps", "3", "--logging_steps", "1", "--save_strategy", "no", "--use_cpu", "--report_to", "none",
]  # fmt: skip


def run(command, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result.stdout + result.stderr


def test_run_qa_writes_results_card_and_a_reloadable_checkpoint(tmp_path):
    output = tmp_path / "qa"
    run([sys.executable, "examples/run_qa.py", "--output_dir", str(output), *TINY_RUN], tmp_path)
    results = json.loads((output / "all_results.json").read_text())
    assert 0 <= results["eval_all_accuracy"] <= 1
    assert abs(results["eval_all_accuracy"] + results["eval_all_error"] - 1) < 1e-9
    assert {"eval_where_person_accuracy", "eval_who_has_accuracy"} <= results.keys()
    assert results["skipped_bad_lines"] == 0
    # the folder to publish holds no pickle: weights in safetensors, the training arguments as JSON
    published = {path.name for path in output.iterdir()}
    assert {"model.safetensors", "training_args.json"} <= published
    assert not [name for name in published if name.endswith((".bin", ".pt", ".pth", ".pkl"))]

    card = ModelCard.load(output / "README.md")
    assert card.data.library_name == "transformers" and card.data.pipeline_tag == "question-answering"
    reported = {
        r["dataset"]["name"]: r["metrics"][0]["value"] for r in card.data.to_dict()["model-index"][0]["results"]
    }
    assert (
        abs(reported[next(n for n in reported if n.endswith(" all"))] - round(results["eval_all_accuracy"], 4)) < 1e-9
    )
    assert "CC BY 3.0" in card.text
    assert f"`python examples/run_qa.py --output_dir {output} " in card.text  # the card says how to reproduce it

    model = AutoModelForQuestionAnswering.from_pretrained(output).eval()
    tokenizer = AutoTokenizer.from_pretrained(output)
    assert isinstance(model, RehearsalMemoryForQuestionAnswering)
    question = tokenizer("Where is Alice?", add_special_tokens=False)["input_ids"]
    assert tokenizer.unk_token_id not in question
    logits = model(torch.tensor([question]), question_input_ids=torch.tensor([question])).logits
    assert logits.shape == (1, len(model.config.id2label))


@pytest.mark.parametrize(
    "story_items, memory_type", [("tokens", "slots"), ("sentences", "slots"), ("sentences", "key_value")]
)
def test_run_qa_on_real_babi_task_1(tmp_path, babi_dir, story_items, memory_type):
    output = tmp_path / "babi"
    at = TINY_RUN.index("--story_length")
    args = TINY_RUN[:at] + TINY_RUN[at + 2 :]  # no generated stories here
    log = run(
        [
            sys.executable,
            "examples/run_qa.py",
            "--output_dir",
            str(output),
            "--babi_dir",
            str(babi_dir),
            "--babi_subset",
            "en",
            "--tasks",
            "1",
            "--max_eval_samples",
            "40",
            "--story_items",
            story_items,
            "--memory_type",
            memory_type,
            *args,
        ],
        tmp_path,
    )
    results = json.loads((output / "all_results.json").read_text())
    assert "eval_qa1_accuracy" in results
    assert f'memory_type="{memory_type}"' in (output / "README.md").read_text()
    if memory_type == "key_value":  # the memory's own loss is trained and logged
        assert "'memory_loss'" in log
    # one question type: the Hub metadata reports it once, not again as "all"
    entries = ModelCard.load(output / "README.md").data.to_dict()["model-index"][0]["results"]
    assert [e["metrics"][0]["value"] for e in entries] == [round(results["eval_all_accuracy"], 4)]


@pytest.mark.usefixtures("keep_transformers_verbosity")
def test_run_qa_fails_on_a_malformed_babi_line_or_skips_and_counts_it(tmp_path):
    folder = tmp_path / "babi" / "en-10k"
    folder.mkdir(parents=True)
    (folder / "qa1_single-supporting-fact_train.txt").write_text(
        "1 Zoe went to the pantry.\n2 Where is Zoe?\tpantry\t1\n"
        "1 Max went to the porch.\n2 Max ran\tporch\n3 Where is Max?\tporch\t1\n"  # line 4: a broken question
        "1 Ann went to the attic.\n2 Where is Ann?\tattic\t1\n"
    )
    (folder / "qa1_single-supporting-fact_test.txt").write_text(
        "1 Max went to the porch.\n2 Where is Max?\tporch\t1\n"
    )
    args = ["--babi_dir", str(tmp_path / "babi"), "--tasks", "1", *TINY_RUN, "--max_steps", "1"]
    main = example_main("run_qa")
    with pytest.raises(BabiFormatError, match=r"qa1_single-supporting-fact_train\.txt, line 4: expected"):
        main(["--output_dir", str(tmp_path / "strict"), *args])

    main(["--output_dir", str(tmp_path / "lenient"), *args, "--skip_bad_lines"])
    results = json.loads((tmp_path / "lenient" / "all_results.json").read_text())
    assert results["skipped_bad_lines"] == 2  # the bad line and the rest of its story
    assert results["eval_all_accuracy"] in (0.0, 1.0)  # one evaluation question


@pytest.mark.slow
@pytest.mark.parametrize("checkpointing", ["false", "true"])
def test_two_torchrun_processes_train_one_model_with_rehearsal(tmp_path, checkpointing):
    # with activation checkpointing too: DDP fails on any parameter that gets no gradient
    output = tmp_path / "ddp"
    log = run(
        [
            *torchrun(tmp_path, ROOT / "examples" / "run_qa.py"),
            "--output_dir",
            str(output),
            *TINY_RUN,
            "--gradient_checkpointing",
            checkpointing,
        ],
        tmp_path,
    )
    assert "Total train batch size (w. parallel, distributed & accumulation) = 16" in log  # 8 per device x 2
    assert "recollection_loss" in log and "familiarity_loss" in log
    assert (output / "model.safetensors").exists()
    assert_process_groups_closed(log)


def test_a_few_hundred_steps_learn_an_easy_task():
    torch.manual_seed(0)
    raw = generate_stories(1200, story_length=4, num_people=2, num_places=4, question_types=("where_person",), seed=0)
    train, test = raw.select(range(1000)), raw.select(range(1000, 1200))
    tokenizer = build_word_tokenizer(s for row in raw for s in (*row["story"], row["question"]))
    answers = answer_vocabulary(raw)
    label2id = {a: i for i, a in enumerate(answers)}
    collate = QACollator()
    train_rows = list(encode_qa_dataset(train, tokenizer, label2id))
    test_batch = collate(list(encode_qa_dataset(test, tokenizer, label2id)))
    config = RehearsalMemoryConfig(
        encoder_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "intermediate_size": 64,
            "max_position_embeddings": 64,
        },
        num_memory_slots=4,
        num_memory_heads=2,
        segment_length=16,
        rehearsal_num_heads=2,
        id2label=dict(enumerate(answers)),
    )
    model = RehearsalMemoryForQuestionAnswering(config).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    for step in range(300):
        batch = collate([train_rows[i] for i in torch.randint(0, len(train_rows), (32,)).tolist()])
        out = model(**batch)
        loss = out.loss + out.recollection_loss + 0.5 * out.familiarity_loss
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
    model.eval()
    with torch.no_grad():
        accuracy = (model(**test_batch).logits.argmax(-1) == test_batch["labels"]).float().mean().item()
    assert accuracy > 0.6, accuracy  # chance: 1/4
