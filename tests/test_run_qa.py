"""End to end: examples/run_qa.py trains, evaluates, writes results and a model card, and its checkpoint
reloads through the Auto classes; malformed bAbI lines fail the run or are skipped and counted; two torchrun
processes train one model together (DDP over gloo); a few hundred steps on an easy generated task learn well
above chance; `--model_name_or_path` evaluates a checkpoint or trains it further with its tokenizer and answers
(refusing model flags it fixes), and `--encoder_name_or_path` builds the model around a pretrained encoder and its
tokenizer (a tiny BERT saved offline)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers
from huggingface_hub import ModelCard
from safetensors.torch import load_file
from transformers import AutoModelForQuestionAnswering, AutoTokenizer

from rm_hf import RehearsalMemoryConfig, RehearsalMemoryForQuestionAnswering
from rm_hf.babi import BabiFormatError, answer_vocabulary
from rm_hf.qa_data import QACollator, encode_qa_dataset
from rm_hf.story_generator import generate_stories, generator_vocabulary
from rm_hf.tokenization import build_word_tokenizer
from tests.conftest import (
    assert_backbone_is,
    assert_process_groups_closed,
    example_main,
    tiny_pretrained_encoder,
    torchrun,
    write,
)

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
    # no pipeline_tag: no Hub widget can run this model (tests/test_model_card.py checks the card in depth)
    assert card.data.library_name == "transformers" and card.data.pipeline_tag is None
    reported = {
        r["dataset"]["name"]: r["metrics"][0]["value"] for r in card.data.to_dict()["model-index"][0]["results"]
    }
    all_questions = next(name for name in reported if name.endswith(": all questions"))
    assert abs(reported[all_questions] - results["eval_all_accuracy"]) < 1e-4
    assert card.data.datasets is None  # generated stories are no Hub dataset
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
    assert_process_groups_closed(tmp_path)


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


@pytest.fixture(scope="module")
def trained_qa(tmp_path_factory) -> Path:
    """A checkpoint of `TINY_RUN` (trained and evaluated), for the tests that start from it."""
    output = tmp_path_factory.mktemp("trained") / "qa"
    verbosity = transformers.logging.get_verbosity()
    example_main("run_qa")(["--output_dir", str(output), *TINY_RUN])
    transformers.logging.set_verbosity(verbosity)
    return output


@pytest.mark.usefixtures("keep_transformers_verbosity")
def test_run_qa_evaluates_a_checkpoint(tmp_path, trained_qa):
    main = example_main("run_qa")
    evaluation = ["--model_name_or_path", str(trained_qa), "--do_eval", "--num_eval_stories", "24",
                  "--story_length", "8", "--use_cpu", "--report_to", "none"]  # fmt: skip
    # a model flag that agrees with the checkpoint is accepted
    main(["--output_dir", str(tmp_path / "eval"), *evaluation, "--hidden_size", "32"])
    trained = json.loads((trained_qa / "all_results.json").read_text())
    results = json.loads((tmp_path / "eval" / "all_results.json").read_text())
    # the same model (its tokenizer and answer ids) on the same questions: the same predictions
    for name in ("eval_all_accuracy", "eval_where_person_accuracy", "eval_who_has_accuracy"):
        assert results[name] == trained[name], name
    assert results["eval_loss"] == pytest.approx(trained["eval_loss"], rel=1e-5)
    assert results["eval_samples"] == 24 and "train_loss" not in results
    assert not (tmp_path / "eval" / "model.safetensors").exists()  # nothing trained, nothing saved

    main(["--output_dir", str(tmp_path / "few"), *evaluation, "--max_eval_samples", "5"])
    assert json.loads((tmp_path / "few" / "eval_results.json").read_text())["eval_samples"] == 5

    # a checkpoint's shape and memory are fixed: flags that differ are refused, not ignored
    refused = rf"--num_memory_slots 8 \(the checkpoint {trained_qa} has 4\): the checkpoint {trained_qa} fixes this"
    with pytest.raises(ValueError, match=refused):
        main(["--output_dir", str(tmp_path / "no"), *evaluation, "--num_memory_slots", "8"])
    with pytest.raises(ValueError, match="--memory_type key_value \\(the checkpoint .* has slots\\)"):
        main(["--output_dir", str(tmp_path / "no"), *evaluation, "--memory_type", "kv"])  # an alias, read as such

    # questions whose answer the checkpoint has no label for (it was trained on generated stories, not on this)
    write(
        tmp_path / "babi" / "en-10k",
        "qa1_single-supporting-fact_test.txt",
        "1 Zoe went to Zanzibar.\n2 Where is Zoe?\tZanzibar\t1\n",
    )
    with pytest.raises(
        ValueError, match="1 answers of the data are not among the .* answers of .* \\(e.g. 'Zanzibar'\\)"
    ):
        main(["--output_dir", str(tmp_path / "no"), *evaluation, "--babi_dir", str(tmp_path / "babi"), "--tasks", "1"])


@pytest.mark.usefixtures("keep_transformers_verbosity")
def test_run_qa_trains_a_checkpoint_further(tmp_path, trained_qa):
    # At learning rate 0 the weights stay those the run started from: the checkpoint's, not a fresh model's.
    output = tmp_path / "further"
    further = ["--model_name_or_path", str(trained_qa), *TINY_RUN, "--max_steps", "1", "--learning_rate", "0"]
    example_main("run_qa")(["--output_dir", str(output), *further])
    saved, start = load_file(output / "model.safetensors"), load_file(trained_qa / "model.safetensors")
    assert saved.keys() == start.keys()
    for name in start:
        torch.testing.assert_close(saved[name], start[name], rtol=0, atol=0, msg=name)
    assert (output / "tokenizer.json").read_text() == (trained_qa / "tokenizer.json").read_text()
    config = json.loads((output / "config.json").read_text())
    assert config["id2label"] == json.loads((trained_qa / "config.json").read_text())["id2label"]
    assert json.loads((output / "all_results.json").read_text())["train_samples"] == 64


@pytest.mark.usefixtures("keep_transformers_verbosity")
def test_run_qa_builds_on_a_pretrained_encoder_and_its_tokenizer(tmp_path):
    stories = generate_stories(400, story_length=8, seed=0)
    words = build_word_tokenizer(s for row in stories for s in (*row["story"], row["question"])).get_vocab()
    encoder = tiny_pretrained_encoder(tmp_path / "encoder", [*words, "zebra"])  # a word the stories never use
    output = tmp_path / "qa"
    run = ["--encoder_name_or_path", str(encoder), *TINY_RUN, "--max_steps", "1", "--learning_rate", "0"]
    example_main("run_qa")(["--output_dir", str(output), *run])  # TINY_RUN's --hidden_size 32 is the encoder's

    # the encoder's tokenizer, not a word-level one built from the stories, and the encoder's weights
    tokenizer = AutoTokenizer.from_pretrained(output)
    assert tokenizer.get_vocab() == AutoTokenizer.from_pretrained(encoder).get_vocab() and "zebra" in tokenizer.vocab
    config = json.loads((output / "config.json").read_text())["encoder_config"]
    assert (config["vocab_size"], config["num_hidden_layers"]) == (len(tokenizer), 1)
    assert_backbone_is(encoder, output)
    assert 0 <= json.loads((output / "all_results.json").read_text())["eval_all_accuracy"] <= 1

    main = example_main("run_qa")
    # --freeze_encoder: the backbone stays the pretrained one while the rest learns at a real learning rate
    frozen = tmp_path / "frozen"
    trained = [*run[:-2], "--learning_rate", "0.01", "--max_steps", "2", "--freeze_encoder"]
    main(["--output_dir", str(frozen), *trained])
    assert_backbone_is(encoder, frozen)
    moved = (
        load_file(frozen / "model.safetensors")["classifier.weight"]
        - load_file(output / "model.safetensors")["classifier.weight"]
    )
    assert moved.abs().max() > 1e-3  # the head did train (the lr-0 run above is the same model, untrained)
    with pytest.raises(ValueError, match="--freeze_encoder: --model memn2n has no encoder"):
        main(["--output_dir", str(tmp_path / "no"), "--model", "memn2n", "--story_items", "sentences",
              *TINY_RUN, "--freeze_encoder"])  # fmt: skip
    with pytest.raises(ValueError, match=rf"--num_hidden_layers 2 \(the encoder {encoder} has 1\)"):
        main(["--output_dir", str(tmp_path / "no"), *run, "--num_hidden_layers", "2"])
    with pytest.raises(ValueError, match="--model_name_or_path and --encoder_name_or_path exclude each other"):
        main(["--output_dir", str(tmp_path / "no"), *run, "--model_name_or_path", str(output)])


def test_run_qa_trains_on_a_length_curriculum(tmp_path):
    output = tmp_path / "curriculum"
    pairs = dict(zip(TINY_RUN[:20:2], TINY_RUN[1:20:2]))  # the flags with a value (--use_cpu on: not all)
    tiny = [arg for flag, value in pairs.items() if flag not in ("--num_train_stories", "--story_length")
            for arg in (flag, value)] + TINY_RUN[20:]  # fmt: skip
    example_main("run_qa")(["--output_dir", str(output), *tiny, "--curriculum", "4:16,12:16", "--max_steps", "4",
                            "--backprop_segments", "1"])  # fmt: skip
    arguments = json.loads((output / "training_args.json").read_text())
    assert arguments["train_sampling_strategy"] == "sequential"  # the stages in order, shortest first
    card = (output / "README.md").read_text()
    assert "training stories of 4 -> 12 sentences" in card and "evaluation stories of 12 sentences" in card
    assert RehearsalMemoryConfig.from_pretrained(output).backprop_segments == 1


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--curriculum", "4:16,12"], "each stage is LENGTH:STORIES"),
        (["--curriculum", "0:16"], "each stage is LENGTH:STORIES"),
        (["--curriculum", "4:16", "--train_sampling_strategy", "random"], "needs --train_sampling_strategy"),
        (["--curriculum", "4:16", "--babi_dir", "somewhere"], "does not apply to --babi_dir"),
    ],
)
def test_run_qa_refuses_a_bad_curriculum(tmp_path, flags, message):
    with pytest.raises(ValueError, match=message):
        example_main("run_qa")(["--output_dir", str(tmp_path / "out"), *TINY_RUN, *flags])


@pytest.mark.usefixtures("keep_transformers_verbosity")
def test_run_qa_trains_on_one_question_type_then_on_all(tmp_path):
    """The two-stage recipe: `who_has` questions first, then all three types from that checkpoint. The first model
    already has every word and answer of generated stories, so the second run refuses none and reads no [UNK]."""
    main = example_main("run_qa")
    first, second = tmp_path / "who_has", tmp_path / "all"
    main(["--output_dir", str(first), *TINY_RUN, "--question_types", "who_has"])
    results = json.loads((first / "all_results.json").read_text())
    assert results["eval_who_has_accuracy"] == results["eval_all_accuracy"]
    assert "eval_where_person_accuracy" not in results and "eval_where_object_accuracy" not in results
    sentences, answers = generator_vocabulary()
    assert sorted(RehearsalMemoryConfig.from_pretrained(first).label2id) == answers
    assert len(answers) == 11 and {"kitchen", "Alice", "nobody"} <= set(answers)  # places, people, "nobody"
    tokenizer = AutoTokenizer.from_pretrained(first)
    every_word = tokenizer(sentences)["input_ids"]  # the questions of every type among them
    assert tokenizer.unk_token_id not in {i for ids in every_word for i in ids}

    main(["--output_dir", str(second), "--model_name_or_path", str(first), *TINY_RUN, "--max_steps", "1"])
    results = json.loads((second / "all_results.json").read_text())
    accuracies = [results[f"eval_{name}_accuracy"] for name in ("where_person", "where_object", "who_has")]
    assert all(0 <= accuracy <= 1 for accuracy in accuracies)  # every type evaluated
    assert (second / "tokenizer.json").read_text() == (first / "tokenizer.json").read_text()


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--question_types", "who_has,where"], "'where' is not a question type of generated stories"),
        (["--question_types", "who_has,"], "'' is not a question type"),
        (["--question_types", "who_has", "--babi_dir", "somewhere"], "does not apply to --babi_dir"),
    ],
)
def test_run_qa_refuses_a_bad_question_type(tmp_path, flags, message):
    with pytest.raises(ValueError, match=message):
        example_main("run_qa")(["--output_dir", str(tmp_path / "out"), *TINY_RUN, *flags])


def test_run_qa_stops_early_on_held_out_stories_and_keeps_the_best_step(tmp_path):
    """With a learning rate of 0 the validation accuracy never improves after the first evaluation: patience 2
    stops training at the third evaluation, the best (first) checkpoint is the one saved, and the evaluations during
    training score the held-out quarter of the training stories, not the evaluation split."""
    seen = {}

    class Watch(transformers.TrainerCallback):
        def on_evaluate(self, args, state, control, eval_dataloader=None, **kwargs):
            seen.setdefault("evaluated_rows", []).append(len(eval_dataloader.dataset))

        def on_train_end(self, args, state, control, **kwargs):
            seen["last_step"] = state.global_step

    output = tmp_path / "early"
    flags = ["--max_steps", "20", "--learning_rate", "0", "--warmup_steps", "0", "--validation_fraction", "0.25",
             "--early_stopping_patience", "2", "--eval_strategy", "steps", "--eval_steps", "1"]  # fmt: skip
    example_main("run_qa")(["--output_dir", str(output), *TINY_RUN, *flags], callbacks=[Watch()])
    assert seen == {"evaluated_rows": [16, 16, 16], "last_step": 3}  # 16 of the 64 training stories held out
    results = json.loads((output / "all_results.json").read_text())
    assert results["best_step"] == 1 and results["eval_samples"] == 24  # --do_eval scores the evaluation split
    assert results["train_samples"] == 48


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--early_stopping_patience", "2", "--eval_strategy", "steps"], "pass --validation_fraction"),
        (["--early_stopping_patience", "2", "--validation_fraction", "0.2"], "pass --eval_strategy steps or epoch"),
        (["--early_stopping_patience", "0", "--eval_strategy", "steps"], "must be >= 1"),
    ],
)
def test_run_qa_refuses_early_stopping_without_what_it_needs(tmp_path, flags, message):
    with pytest.raises(ValueError, match=message):
        example_main("run_qa")(["--output_dir", str(tmp_path / "out"), *TINY_RUN, *flags])


def test_training_and_rehearsal_defaults_are_the_scripts_and_reach_the_config(tmp_path):
    """Trainer's learning rate 5e-5 and batch of 8 do not learn qa1 from scratch in reasonable time; the script's rate,
    warm-up, batch and rehearsal size are its own (bench/results/babi_sweep/babi_curves.json), and a flag given
    still wins."""
    g = example_main("run_qa").__wrapped__.__globals__
    types = (g["ModelArguments"], g["DataArguments"], g["QATrainingArguments"])
    (model_args, _, args), _ = g["parse_script_args"](types, "", ["--output_dir", str(tmp_path)])
    assert (args.learning_rate, args.warmup_steps, args.per_device_train_batch_size) == (1e-3, 0.05, 32)
    rehearsal = {"num_rehearsal_fragments": 2, "rehearsal_batch_fraction": 0.25, "rehearsal_num_layers": 1}
    config = g["build_config"](model_args, vocab_size=20, pad_token_id=0, answers=["a", "b"])
    assert {name: getattr(config, name) for name in rehearsal} == rehearsal
    argv = ["--output_dir", str(tmp_path), "--learning_rate", "2e-3", "--rehearsal_batch_fraction", "1",
            "--per_device_train_batch_size", "8"]  # fmt: skip
    (model_args, _, args), _ = g["parse_script_args"](types, "", argv)
    assert (args.learning_rate, args.per_device_train_batch_size) == (2e-3, 8)
    assert g["build_config"](model_args, 20, 0, ["a"]).rehearsal_batch_fraction == 1


def test_run_qa_renames_babi_names_in_training_only(tmp_path):
    """--permute_names: each read of a training question renames its names afresh (story, question and answer
    alike); the evaluation split is read as it is; tasks whose names mean something are refused."""
    story = "1 Mary went to the kitchen.\n2 John went to the garden.\n3 Where is Mary?\tkitchen\t1\n"
    other = "1 John went to the office.\n2 Where is John?\toffice\t1\n"  # "office": the places answered are two
    write(tmp_path / "babi" / "en-10k", "qa1_single-supporting-fact_train.txt", story * 7 + other)
    write(tmp_path / "babi" / "en-10k", "qa1_single-supporting-fact_test.txt", story)
    seen = {}

    class Watch(transformers.TrainerCallback):
        def on_train_begin(self, args, state, control, train_dataloader=None, **kwargs):
            seen["train"] = [train_dataloader.dataset[0] for _ in range(20)]

        def on_evaluate(self, args, state, control, eval_dataloader=None, **kwargs):
            seen["eval"] = [eval_dataloader.dataset[0] for _ in range(3)]

    at = TINY_RUN.index("--story_length")
    args = ["--babi_dir", str(tmp_path / "babi"), "--tasks", "1", *TINY_RUN[:at], *TINY_RUN[at + 2 :]]
    output = tmp_path / "renamed"
    main = example_main("run_qa")
    main(["--output_dir", str(output), *args, "--permute_names", "--eval_strategy", "steps", "--eval_steps", "3"],
         callbacks=[Watch()])  # fmt: skip
    assert "were renamed at random" in (output / "README.md").read_text()  # the model card says how it was trained
    tokenizer = AutoTokenizer.from_pretrained(output)
    id2label = RehearsalMemoryConfig.from_pretrained(output).id2label
    readings = set()
    for row in seen["train"]:
        words = tokenizer.convert_ids_to_tokens(row["input_ids"])
        question = tokenizer.convert_ids_to_tokens(row["question_input_ids"])
        assert words[0] == question[3] and words[4] == id2label[row["labels"]]  # the answer follows its place
        assert {words[0], words[7]} <= {"mary", "john"} and words[0] != words[7]
        readings.add((words[0], words[4]))
    assert len(readings) > 1  # the 8 known names are drawn anew at each read
    assert all(tokenizer.convert_ids_to_tokens(row["input_ids"])[:5] == ["mary", "went", "to", "the", "kitchen"]
               for row in seen["eval"])  # fmt: skip
    for flags, given in ((["--tasks", "1,6"], "not of task 6"), ([], "not of generated stories")):
        with pytest.raises(ValueError, match=f"bAbI tasks 1-5.*{given}"):
            main(["--output_dir", str(tmp_path / "no"), *(args if flags else TINY_RUN), *flags, "--permute_names"])
