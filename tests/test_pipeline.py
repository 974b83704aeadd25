"""Tests of the pipelines ("rehearsal-memory-qa", "rehearsal-memory-click"): answers and scores equal the heads'
own `write` + `answer` / `score` on the training encoding, the memory they keep equals re-writing, checkpoints ship
the pipeline, and the README's three lines run from a saved folder with and without rm_hf importable."""

import json
import re
import subprocess
import sys
import textwrap

import pytest
import torch
import transformers
from transformers import AutoModel, pipeline

import rm_hf
from rm_hf import (
    RehearsalMemoryClickPipeline,
    RehearsalMemoryForClickPrediction,
    RehearsalMemoryForQuestionAnswering,
    RehearsalMemoryModel,
    RehearsalMemoryQuestionAnsweringPipeline,
)
from rm_hf.pipeline_rehearsal_memory import encode_story, split_sentences
from rm_hf.qa_data import QACollator, encode_qa_example
from rm_hf.tokenization import build_word_tokenizer
from tests.conftest import ROOT, click_config, tiny_config

STORY = "Alice went to the kitchen. Bob went to the garden!\nAlice picked up the apple."
SENTENCES = ["Alice went to the kitchen.", "Bob went to the garden!", "Alice picked up the apple."]
QUESTIONS = ["Where is Alice?", "Where is Bob?"]
LABELS = {0: "kitchen", 1: "garden", 2: "apple", 3: "nobody"}
MODELS = [
    pytest.param({}, id="tokens"),
    pytest.param({"story_items": "sentences"}, id="sentences"),
    pytest.param({"memory_type": "key_value", "memory_capacity": 6}, id="key-value-memory"),
]


@pytest.fixture(scope="module")
def tokenizer():
    return build_word_tokenizer([*SENTENCES, *QUESTIONS, "Where is the apple?"])


def qa_model(**overrides) -> RehearsalMemoryForQuestionAnswering:
    torch.manual_seed(0)
    return RehearsalMemoryForQuestionAnswering(tiny_config(id2label=LABELS, **overrides)).eval()


def qa_pipeline(model, tokenizer, **kwargs):
    return pipeline("rehearsal-memory-qa", model=model, tokenizer=tokenizer, device="cpu", **kwargs)


def training_batch(model, tokenizer, story, questions):
    """The questions about `story` as training encodes and batches them (rows without answers)."""
    rows = [encode_qa_example({"story": story, "question": question}, tokenizer) for question in questions]
    sentences = model.config.story_items == "sentences"
    return QACollator(pad_token_id=tokenizer.pad_token_id, sentence_items=sentences)(rows)


def expected_answers(model, tokenizer, story, questions) -> list[dict]:
    """`model.write` + `model.answer` on the training encoding: the argmax answer and its softmax probability."""
    batch = training_batch(model, tokenizer, story, questions)
    assert "labels" not in batch  # inference needs no gold answers
    with torch.no_grad():
        memory = model.write(None, batch["input_ids"], batch["attention_mask"])
        logits = model.answer(memory, batch["question_input_ids"], batch["question_attention_mask"])
    scores, ids = logits.softmax(-1).max(-1)
    return [{"answer": LABELS[i], "score": s} for s, i in zip(scores.tolist(), ids.tolist())]


def assert_answers_equal(got: list[dict], expected: list[dict]) -> None:
    assert [a["answer"] for a in got] == [a["answer"] for a in expected]
    assert [a["score"] for a in got] == pytest.approx([a["score"] for a in expected], abs=1e-5)


def save_qa_checkpoint(folder, tokenizer, **overrides) -> RehearsalMemoryForQuestionAnswering:
    """A tiny untrained (0 steps) QA model and its tokenizer, saved as a training run leaves them."""
    model = qa_model(**overrides)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return model


# ---------------------------------------------------------------------------------------------------------
# Encoding: one function for training and inference


def test_split_sentences():
    assert split_sentences(STORY) == SENTENCES
    assert split_sentences("  One.Two?  Three  \n\n four ") == ["One.Two?", "Three", "four"]  # "." needs a space
    assert split_sentences("") == []
    assert split_sentences(["kept as given", ""]) == ["kept as given", ""]  # positions index supporting facts


def test_encode_story_is_the_training_layout(tokenizer):
    encoded = encode_story(tokenizer, STORY, QUESTIONS)
    sep, cls = tokenizer.sep_token_id, tokenizer.cls_token_id
    words = [tokenizer(sentence, add_special_tokens=False)["input_ids"] for sentence in SENTENCES]
    assert encoded["input_ids"] == [token for sentence in words for token in [*sentence, sep]]
    assert encoded["sentence_index"] == [i for i, sentence in enumerate(words) for _ in range(len(sentence) + 1)]
    assert encoded["question_input_ids"] == [
        [cls, *tokenizer(question, add_special_tokens=False)["input_ids"], sep] for question in QUESTIONS
    ]
    # training rows go through the same function: with or without a gold answer, the inputs are identical
    unanswered = encode_qa_example({"story": SENTENCES, "question": QUESTIONS[0]}, tokenizer)
    answered = encode_qa_example(
        {"story": SENTENCES, "question": QUESTIONS[0], "answer": "kitchen", "supporting_positions": [0]},
        tokenizer,
        {"kitchen": 0},
    )
    assert "labels" not in unanswered and answered["labels"] == 0
    for features in (unanswered, answered):
        assert features["input_ids"] == encoded["input_ids"]
        assert features["question_input_ids"] == encoded["question_input_ids"][0]
        assert features["sentence_index"] == encoded["sentence_index"]
    assert unanswered["supporting_mask"] == [0] * len(encoded["input_ids"])
    assert answered["supporting_mask"] == [int(i == 0) for i in encoded["sentence_index"]]
    assert encode_qa_example({"story": STORY, "question": QUESTIONS[0]}, tokenizer) == unanswered  # a string story


def test_answer_without_label2id_is_named(tokenizer):
    with pytest.raises(ValueError, match="'kitchen'.*no label2id"):
        encode_qa_example({"story": SENTENCES, "question": QUESTIONS[0], "answer": "kitchen"}, tokenizer)


# ---------------------------------------------------------------------------------------------------------
# Question answering


@pytest.mark.parametrize("overrides", MODELS)
def test_answers_equal_the_models_argmax(tokenizer, overrides):
    model = qa_model(**overrides)
    qa = qa_pipeline(model, tokenizer)
    expected = expected_answers(model, tokenizer, SENTENCES, QUESTIONS)

    answers = qa(STORY, QUESTIONS)
    assert_answers_equal(answers, expected)
    assert all(0 < answer["score"] <= 1 for answer in answers)
    assert_answers_equal(qa(SENTENCES, QUESTIONS), expected)  # a list of sentences
    assert_answers_equal([qa(STORY, QUESTIONS[1])], expected[1:])  # one question: one answer
    assert_answers_equal(qa({"story": STORY, "question": QUESTIONS}), expected)


@pytest.mark.parametrize("overrides", MODELS)
def test_kept_memory_equals_rewriting(tokenizer, overrides):
    model = qa_model(**overrides)
    qa = qa_pipeline(model, tokenizer)
    batch = training_batch(model, tokenizer, SENTENCES, QUESTIONS[:1])
    with torch.no_grad():
        written = model.write(None, batch["input_ids"], batch["attention_mask"])

    kept = qa(STORY, QUESTIONS[0], return_memory=True)
    torch.testing.assert_close(kept["memory"], written)
    assert kept["answers"] == qa(STORY, QUESTIONS[0])
    # later questions from the memory alone equal asking them with the story
    assert_answers_equal(qa(question=QUESTIONS, memory=kept["memory"]), qa(STORY, QUESTIONS))
    torch.testing.assert_close(qa.write(STORY), written)

    # more story on top of a kept memory equals the model's own streaming of the two pieces
    first, rest = (training_batch(model, tokenizer, part, QUESTIONS[:1]) for part in (SENTENCES[:2], SENTENCES[2:]))
    with torch.no_grad():
        streamed = model.write(model.write(None, first["input_ids"], first["attention_mask"]), rest["input_ids"],
                               rest["attention_mask"])  # fmt: skip
    torch.testing.assert_close(qa.write(SENTENCES[2:], memory=qa.write(SENTENCES[:2])), streamed)


def test_streaming_whole_segments_equals_one_pass(tokenizer):
    model = qa_model(story_items="sentences", segment_length=1)  # each sentence a segment of its own
    qa = qa_pipeline(model, tokenizer)
    memory = None
    for sentence in SENTENCES:
        memory = qa.write(sentence, memory=memory)
    torch.testing.assert_close(memory, qa.write(STORY))
    assert_answers_equal(
        qa(question=QUESTIONS, memory=memory), expected_answers(model, tokenizer, SENTENCES, QUESTIONS)
    )


def test_top_k_and_several_stories(tokenizer):
    model = qa_model()
    qa = qa_pipeline(model, tokenizer)
    ranked = qa(STORY, QUESTIONS, top_k=3)
    assert [len(answers) for answers in ranked] == [3, 3]
    for answers, best in zip(ranked, qa(STORY, QUESTIONS)):
        scores = [answer["score"] for answer in answers]
        assert scores == sorted(scores, reverse=True) and sum(scores) <= 1 + 1e-6
        assert answers[0] == best
    assert len({answer["answer"] for answer in qa(STORY, QUESTIONS[0], top_k=10)}) == len(LABELS)

    other = "Bob went to the kitchen."
    several = qa([{"story": STORY, "question": QUESTIONS[0]}, {"story": other, "question": QUESTIONS}])
    assert several == [qa(STORY, QUESTIONS[0]), qa(other, QUESTIONS)]


def test_bad_calls_are_named(tokenizer):
    qa = qa_pipeline(qa_model(), tokenizer)
    with pytest.raises(ValueError, match="Give a story"):
        qa(question=QUESTIONS[0])
    with pytest.raises(ValueError, match="Give a question"):
        qa(STORY)
    with pytest.raises(ValueError, match="`question` must be"):
        qa(STORY, ["Where is Alice?", ""])
    with pytest.raises(ValueError, match="top_k"):
        qa(STORY, QUESTIONS, top_k=0)
    two_stories = torch.cat([qa.write(STORY), qa.write(STORY)])
    with pytest.raises(ValueError, match="memory"):
        qa(question=QUESTIONS[0], memory=two_stories)
    with pytest.raises(TypeError, match="unexpected"):
        qa(STORY, QUESTIONS, temperature=2)
    with pytest.raises(TypeError, match="needs a RehearsalMemoryForQuestionAnswering"):
        qa_pipeline(RehearsalMemoryForClickPrediction(click_config()), tokenizer)


# ---------------------------------------------------------------------------------------------------------
# Click prediction

HISTORY = {"history": [3, 7, 7, 12, 5], "history_categories": [1, 2, 2, 3, 1], "history_behaviors": [1, 1, 2, 1, 3]}
CANDIDATES, CANDIDATE_CATEGORIES = [7, 20, 4], [2, 5, 1]


def click_model(**overrides) -> RehearsalMemoryForClickPrediction:
    torch.manual_seed(0)
    return RehearsalMemoryForClickPrediction(click_config(**overrides)).eval()


def assert_scores_equal(got: list[dict], expected: list[dict]) -> None:
    assert [score["item"] for score in got] == [score["item"] for score in expected]
    assert [score["score"] for score in got] == pytest.approx([score["score"] for score in expected], abs=1e-6)


def expected_scores(model, history, candidates, categories=None, memory=None) -> list[float]:
    """sigmoid(model.score(model.write(...), candidates)): the click probabilities the pipeline must give."""
    with torch.no_grad():
        if history is not None:
            memory = model.write(
                memory,
                torch.tensor([history["history"]]),
                torch.tensor([history["history_categories"]]),
                torch.tensor([history["history_behaviors"]]),
            )
        memory = model.rehearsal_memory.init_memory(1) if memory is None else memory
        target_category = None if categories is None else torch.tensor([categories])
        return model.score(memory, torch.tensor([candidates]), target_category)[0].sigmoid().tolist()


@pytest.mark.parametrize("overrides", [{}, {"memory_type": "lamemo", "memory_capacity": 6}], ids=["slots", "lamemo"])
def test_click_scores_equal_the_models_score(overrides):
    model = click_model(**overrides)
    clicks = pipeline("rehearsal-memory-click", model=model, device="cpu")
    assert isinstance(clicks, RehearsalMemoryClickPipeline)

    scores = clicks(**HISTORY, candidates=CANDIDATES, candidate_categories=CANDIDATE_CATEGORIES)
    expected = expected_scores(model, HISTORY, CANDIDATES, CANDIDATE_CATEGORIES)
    assert [score["item"] for score in scores] == CANDIDATES
    assert [score["score"] for score in scores] == pytest.approx(expected, abs=1e-6)
    assert all(0 < score["score"] <= 1 for score in scores)

    without_categories = clicks(**HISTORY, candidates=CANDIDATES)  # categories default to 0
    assert [s["score"] for s in without_categories] == pytest.approx(expected_scores(model, HISTORY, CANDIDATES))
    assert_scores_equal([clicks(**HISTORY, candidates=20, candidate_categories=5)], scores[1:2])  # one: a dict
    best = clicks(**HISTORY, candidates=CANDIDATES, candidate_categories=CANDIDATE_CATEGORIES, top_k=2)
    assert_scores_equal(best, sorted(scores, key=lambda score: -score["score"])[:2])
    several = clicks([{**HISTORY, "candidates": CANDIDATES}, {"history": [], "candidates": 4}])
    assert_scores_equal(several[0], without_categories)
    assert_scores_equal([several[1]], [clicks([], 4)])


def test_click_memory_kept_equals_rewriting():
    model = click_model()
    clicks = pipeline("rehearsal-memory-click", model=model, device="cpu")
    kept = clicks(**HISTORY, candidates=CANDIDATES, return_memory=True)
    with torch.no_grad():
        written = model.write(None, *(torch.tensor([HISTORY[name]]) for name in HISTORY))
    torch.testing.assert_close(kept["memory"], written)
    assert_scores_equal(clicks(candidates=CANDIDATES, memory=kept["memory"]), kept["scores"])  # no history needed

    # new behaviours on top of the kept memory, as a memory store would add them
    new = {"history": [9, 9], "history_categories": [4, 4], "history_behaviors": [2, 2]}
    updated = clicks.write(**new, memory=kept["memory"])
    with torch.no_grad():
        streamed = model.write(written, *(torch.tensor([new[name]]) for name in new))
    torch.testing.assert_close(updated, streamed)
    assert [s["score"] for s in clicks(candidates=CANDIDATES, memory=updated)] == pytest.approx(
        expected_scores(model, None, CANDIDATES, memory=streamed)
    )
    # an empty history (a new user) scores against the initial memory
    assert [s["score"] for s in clicks([], CANDIDATES)] == pytest.approx(expected_scores(model, None, CANDIDATES))
    assert_scores_equal([clicks(torch.tensor([3, 7]), torch.tensor(4))], [clicks([3, 7], 4)])  # tensors as ids
    with pytest.raises(ValueError, match="history_categories"):
        clicks([1, 2], CANDIDATES, history_categories=[1])
    with pytest.raises(ValueError, match="candidates"):
        clicks([1, 2], [1.5])


# ---------------------------------------------------------------------------------------------------------
# Checkpoints, registry, package


def test_checkpoints_ship_their_pipeline(tmp_path, tokenizer):
    model = save_qa_checkpoint(tmp_path / "qa", tokenizer)
    config = json.loads((tmp_path / "qa" / "config.json").read_text())
    assert config["custom_pipelines"] == {
        "rehearsal-memory-qa": {
            "impl": "pipeline_rehearsal_memory.RehearsalMemoryQuestionAnsweringPipeline",
            "pt": ["AutoModelForQuestionAnswering"],
            "type": "text",
        }
    }
    assert (tmp_path / "qa" / "pipeline_rehearsal_memory.py").read_bytes() == (
        ROOT / "src" / "rm_hf" / "pipeline_rehearsal_memory.py"
    ).read_bytes()
    # the base model shares its head's config object, but ships no pipeline
    model.rehearsal_memory.save_pretrained(tmp_path / "base")
    assert "custom_pipelines" not in json.loads((tmp_path / "base" / "config.json").read_text())

    click_model().save_pretrained(tmp_path / "click")
    click = json.loads((tmp_path / "click" / "config.json").read_text())
    assert click["custom_pipelines"]["rehearsal-memory-click"]["impl"] == (
        "pipeline_rehearsal_memory.RehearsalMemoryClickPipeline"
    )
    assert click["architectures"] == ["RehearsalMemoryForClickPrediction"]
    assert (tmp_path / "click" / "pipeline_rehearsal_memory.py").exists()
    # saving a pipeline writes the same entry and file
    qa_pipeline(qa_model(), tokenizer).save_pretrained(tmp_path / "from_pipeline")
    saved = json.loads((tmp_path / "from_pipeline" / "config.json").read_text())
    assert saved["custom_pipelines"] == config["custom_pipelines"]


def test_pipeline_from_a_saved_folder_with_rm_hf(tmp_path, tokenizer):
    model = save_qa_checkpoint(tmp_path, tokenizer)
    expected = qa_pipeline(model, tokenizer)(STORY, QUESTIONS)

    qa = pipeline("rehearsal-memory-qa", model=str(tmp_path), trust_remote_code=True, device="cpu")
    assert type(qa.model) is RehearsalMemoryForQuestionAnswering  # installed classes for the model
    assert_answers_equal(qa(STORY, QUESTIONS), expected)
    inferred = pipeline(model=str(tmp_path), trust_remote_code=True, device="cpu")  # the task from config.json
    assert_answers_equal(inferred(STORY, QUESTIONS), expected)
    # no shipped code at all: name the installed pipeline class
    installed = pipeline("rehearsal-memory-qa", model=str(tmp_path), device="cpu",
                         pipeline_class=RehearsalMemoryQuestionAnsweringPipeline)  # fmt: skip
    assert type(installed) is RehearsalMemoryQuestionAnsweringPipeline
    assert_answers_equal(installed(STORY, QUESTIONS), expected)


def test_click_pipeline_from_a_saved_folder_loads_the_head(tmp_path):
    model = click_model()
    model.save_pretrained(tmp_path)
    clicks = pipeline("rehearsal-memory-click", model=str(tmp_path), trust_remote_code=True, device="cpu")
    assert type(clicks.model) is RehearsalMemoryForClickPrediction  # not the base AutoModel loads
    assert type(AutoModel.from_pretrained(tmp_path)) is RehearsalMemoryModel
    assert [s["score"] for s in clicks(**HISTORY, candidates=CANDIDATES)] == pytest.approx(
        expected_scores(model, HISTORY, CANDIDATES)
    )


def readme_usage_blocks() -> list[str]:
    """The Python blocks of the README's "Using the models" section."""
    section = (ROOT / "README.md").read_text().split("\n## Using the models\n", 1)[1].split("\n## ", 1)[0]
    assert section.lstrip().startswith("```python\n"), "the section starts with the pipeline"
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def readme_pipeline_snippet() -> str:
    return readme_usage_blocks()[0]


def run_readme_snippet(folder) -> list[dict]:
    snippet = readme_pipeline_snippet()
    assert snippet.count("pipeline(") == 1 and '"outputs/qa"' in snippet
    printed = []
    exec(snippet.replace('"outputs/qa"', repr(str(folder))), {"print": printed.append})
    return printed[-1]


def test_readme_three_lines_with_rm_hf(tmp_path, tokenizer):
    save_qa_checkpoint(tmp_path, tokenizer)
    answers = run_readme_snippet(tmp_path)
    same = pipeline("rehearsal-memory-qa", model=str(tmp_path), trust_remote_code=True)  # the snippet's device
    assert answers == same("Alice went to the kitchen. Bob went to the garden.", ["Where is Alice?", "Where is Bob?"])
    assert [answer["answer"] for answer in answers] and all(0 < answer["score"] <= 1 for answer in answers)


def test_readme_memory_and_click_lines_run(tmp_path, tokenizer):
    save_qa_checkpoint(tmp_path / "qa", tokenizer)
    click_model().save_pretrained(tmp_path / "ctr")
    first, second = readme_usage_blocks()[:2]
    folders = {'"outputs/qa"': repr(str(tmp_path / "qa")), '"outputs/ctr"': repr(str(tmp_path / "ctr"))}
    for name, folder in folders.items():
        first, second = first.replace(name, folder), second.replace(name, folder)
    scope = {"print": lambda *args: None}
    exec(first + second, scope)

    qa, story, clicks = scope["qa"], scope["story"], scope["clicks"]
    assert scope["out"]["answers"] == qa(story, "Where is Alice?")
    assert_answers_equal([scope["later"]], [qa(story, "Where is Bob?")])
    assert scope["memory"].shape == scope["out"]["memory"].shape  # streamed (see test_kept_memory_equals_rewriting)
    assert [score["item"] for score in scope["scores"]] == [20, 25, 3]
    assert_scores_equal(scope["scores"], clicks([12, 20, 7, 12], [20, 25, 3]))
    assert len(scope["best"]) == 2 and scope["best"][0]["score"] >= scope["best"][1]["score"]


# Runs in a fresh interpreter where `import rm_hf` fails and the source folder is off the path; stdin is closed,
# so a "run custom code? [y/N]" prompt would show in the output.
WITHOUT_RM_HF = textwrap.dedent(
    """
    import json, re, sys
    sys.modules["rm_hf"] = None
    sys.path = [path for path in sys.path if not path.rstrip("/").endswith("src")]
    from transformers import AutoTokenizer, PreTrainedTokenizerFast, pipeline
    qa_folder, click_folder, snippet, request = sys.argv[1:]
    printed = []
    exec(snippet.replace('"outputs/qa"', repr(qa_folder)), {"print": printed.append})
    qa = pipeline("rehearsal-memory-qa", model=qa_folder, trust_remote_code=True)
    tokenizer = AutoTokenizer.from_pretrained(qa_folder, trust_remote_code=True)
    clicks = pipeline("rehearsal-memory-click", model=click_folder, trust_remote_code=True)
    request = json.loads(request)
    print(json.dumps({
        "readme": printed[-1],
        "classes": [type(qa).__module__, type(qa.model).__module__, type(clicks.model).__name__,
                    type(clicks.model).__module__],
        "tokens": tokenizer("Where is Alice?")["input_ids"],
        "fast_tokens": PreTrainedTokenizerFast.from_pretrained(qa_folder)("Where is Alice?")["input_ids"],
        "scores": clicks(**request),
    }))
    """
)


def test_three_lines_without_rm_hf(tmp_path, tokenizer):
    save_qa_checkpoint(tmp_path / "qa", tokenizer)
    model = click_model()
    model.save_pretrained(tmp_path / "click")
    request = {**HISTORY, "candidates": CANDIDATES, "candidate_categories": CANDIDATE_CATEGORIES}
    result = subprocess.run(
        [sys.executable, "-c", WITHOUT_RM_HF, str(tmp_path / "qa"), str(tmp_path / "click"),
         readme_pipeline_snippet(), json.dumps(request)],
        cwd=tmp_path,
        capture_output=True,
        stdin=subprocess.DEVNULL,
        text=True,
        env={"HF_HUB_OFFLINE": "1", "PATH": "", "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "",
             "HF_MODULES_CACHE": str(tmp_path / "modules")},
        timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "custom code?" not in result.stdout + result.stderr  # nothing asked
    output = json.loads(result.stdout.strip().splitlines()[-1])

    # everything came from the code shipped in the folders, the click model with its head
    qa_pipeline_module, qa_model_module, click_class, click_module = output["classes"]
    assert qa_pipeline_module.startswith("transformers_modules.") and qa_pipeline_module.endswith(
        ".pipeline_rehearsal_memory"
    )
    assert qa_model_module.startswith("transformers_modules.") and click_module.startswith("transformers_modules.")
    assert click_class == "RehearsalMemoryForClickPrediction"
    # and answers as rm_hf does
    expected = qa_pipeline(qa_model(), tokenizer)(
        "Alice went to the kitchen. Bob went to the garden.", ["Where is Alice?", "Where is Bob?"]
    )
    assert_answers_equal(output["readme"], expected)
    assert output["tokens"] == output["fast_tokens"] == tokenizer("Where is Alice?")["input_ids"]
    assert [s["score"] for s in output["scores"]] == pytest.approx(
        expected_scores(model, HISTORY, CANDIDATES, CANDIDATE_CATEGORIES), abs=1e-6
    )


def test_package_exports_and_docstring():
    from rm_hf import trainer

    assert rm_hf.RehearsalMemoryTrainer is trainer.RehearsalMemoryTrainer
    assert rm_hf.RehearsalTrainingArguments is trainer.RehearsalTrainingArguments
    assert {"RehearsalMemoryTrainer", "RehearsalTrainingArguments"} <= set(rm_hf.__all__) & set(dir(rm_hf))
    assert all(hasattr(rm_hf, name) for name in rm_hf.__all__)
    assert "Quick start" in rm_hf.__doc__ and 'pipeline("rehearsal-memory-qa"' in rm_hf.__doc__
    supported = transformers.pipelines.get_supported_tasks()
    assert {"rehearsal-memory-qa", "rehearsal-memory-click"} <= set(supported)
