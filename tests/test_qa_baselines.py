"""The MemN2N baseline (`rm_hf.qa_baselines`): the Rehearsal Memory QA head's inputs and outputs, padding that
changes nothing, sentence ages counted from the end, a gradient for every parameter, identical logits after
save/load, refusals that name the bad input, learning a small generated task on CPU (and attending to its supporting
fact), linear reading (the linear start), `run_qa.py --model memn2n` training, saving and evaluating it, and its
attention choosing what `run_qa.py --fragment_teacher` rehearses."""

import json

import pytest
import torch
import torch.nn.functional as F
from datasets import concatenate_datasets

from rm_hf import RehearsalMemoryConfig, RehearsalMemoryQuestionAnsweringOutput
from rm_hf.babi import answer_vocabulary
from rm_hf.qa_baselines import MAX_SENTENCE_AGE, MemN2NForQuestionAnswering, sentence_ages
from rm_hf.qa_data import QACollator, encode_qa_dataset
from rm_hf.story_generator import generate_stories
from rm_hf.tokenization import build_word_tokenizer
from tests.conftest import TINY_ENCODER, example_main, example_module

COLLATE = QACollator(sentence_items=True)


def where_person_task(num_train: int, num_test: int, seed: int, story_lengths: tuple[int, ...] = (8,)):
    """A model config for generated "Where is X?" stories, and encoded train and test rows: for each story length,
    `num_train` and `num_test` stories."""

    def stories(count, seed):
        parts = [generate_stories(count, n, question_types=["where_person"], seed=seed + n) for n in story_lengths]
        return concatenate_datasets(parts)

    train_raw, test_raw = stories(num_train, seed), stories(num_test, seed + 100)
    tokenizer = build_word_tokenizer(s for row in train_raw for s in (*row["story"], row["question"]))
    answers = answer_vocabulary([train_raw, test_raw])
    label2id = {answer: i for i, answer in enumerate(answers)}
    config = RehearsalMemoryConfig(
        encoder_config={**TINY_ENCODER, "vocab_size": len(tokenizer)},
        id2label=dict(enumerate(answers)),
        story_items="sentences",
        num_reasoning_hops=3,
    )
    encode = [list(encode_qa_dataset(raw, tokenizer, label2id)) for raw in (train_raw, test_raw)]
    return config, *encode


@pytest.fixture(scope="module")
def task():
    return where_person_task(num_train=6, num_test=2, seed=0, story_lengths=(3, 8))


def test_takes_the_qa_heads_inputs_and_returns_its_output(task):
    config, rows, _ = task
    model = MemN2NForQuestionAnswering(config).eval()
    batch = COLLATE(rows[:3])  # input_ids (B, N, W), attention_mask (B, N), the question, labels, fragment_weights
    assert batch["input_ids"].dim() == 3 and "fragment_weights" in batch
    out = model(**batch)
    assert isinstance(out, RehearsalMemoryQuestionAnsweringOutput)
    assert out.logits.shape == (3, config.num_labels)
    torch.testing.assert_close(out.loss, F.cross_entropy(out.logits, batch["labels"]))
    assert out.recollection_loss is None and out.memory_loss is None  # nothing for the Trainer to add
    del batch["labels"]
    assert model(**batch).loss is None
    loss_free = model(**batch, return_dict=False)
    torch.testing.assert_close(loss_free[0], out.logits)


def test_padding_sentences_and_tokens_change_nothing(task):
    config, rows, _ = task
    model = MemN2NForQuestionAnswering(config).eval()
    short, long = rows[0], rows[-1]  # 3 and 8 sentences
    alone = COLLATE([short])
    padded = COLLATE([short, long])  # the short story gains padding sentences (and maybe padding tokens)
    assert padded["input_ids"].shape[1] > alone["input_ids"].shape[1] and not padded["attention_mask"][0].all()
    expected = model(**alone).logits[0]
    torch.testing.assert_close(model(**padded).logits[0], expected)
    del padded["attention_mask"]  # real sentences are then those with a real token
    torch.testing.assert_close(model(**padded).logits[0], expected)


def test_sentence_ages_count_real_sentences_from_the_end():
    mask = torch.tensor([[True, True, True, False], [True, False, True, False]])
    assert sentence_ages(mask).tolist() == [[2, 1, 0, 0], [1, 1, 0, 0]]
    long_story = torch.ones(1, MAX_SENTENCE_AGE + 5, dtype=torch.bool)
    ages = sentence_ages(long_story)[0]
    assert ages[-1] == 0 and ages[-MAX_SENTENCE_AGE] == MAX_SENTENCE_AGE - 1
    assert (ages[:6] == MAX_SENTENCE_AGE - 1).all()  # older sentences share the last embedding


def test_an_empty_story_reads_nothing_instead_of_nan(task):
    config, rows, _ = task
    model = MemN2NForQuestionAnswering(config).eval()
    batch = COLLATE(rows[:2])
    batch["attention_mask"][1] = 0
    logits = model(**batch).logits
    assert torch.isfinite(logits).all()
    question_only = model.classifier(model.embeddings[0].sentences(batch["question_input_ids"][1:], "question"))
    torch.testing.assert_close(logits[1:], question_only)


def test_attentions_per_hop_and_sentence_importance(task):
    config, rows, _ = task
    model = MemN2NForQuestionAnswering(config).eval()
    batch = COLLATE([rows[0], rows[-1]])  # 3 and 8 sentences: the first row is padded
    mask = batch["attention_mask"].bool()
    assert model(**batch).attentions is None  # only when asked
    attentions = model(**batch, output_attentions=True).attentions
    assert len(attentions) == config.num_reasoning_hops
    for weights in attentions:
        assert weights.shape == mask.shape and (weights[~mask] == 0).all()
        torch.testing.assert_close(weights.sum(-1), torch.ones(2))
    importance = model.sentence_importance(**batch)  # the collator's batch as it is, labels and all
    torch.testing.assert_close(importance, torch.stack(attentions).sum(0))
    assert not importance.requires_grad


def test_linear_reading_weighs_sentences_by_raw_scores(task):
    config, rows, _ = task
    model = MemN2NForQuestionAnswering(config).eval()
    batch = COLLATE([rows[0], rows[-1]])  # the first row is padded
    mask = batch["attention_mask"].bool()
    model.linear_reading = True
    attentions = model(**batch, output_attentions=True).attentions
    # hop 1 by hand: the question (set 0) against the sentences (set 1), no softmax, padding at 0
    ages = sentence_ages(mask)
    query = model.embeddings[0].sentences(batch["question_input_ids"], "question")
    scores = torch.einsum("bd,bnd->bn", query, model.embeddings[0](batch["input_ids"], ages))
    torch.testing.assert_close(attentions[0], scores * mask)
    assert not torch.allclose(attentions[0].sum(-1), torch.ones(2))  # not a distribution
    model.linear_reading = False
    torch.testing.assert_close(model(**batch, output_attentions=True).attentions[0].sum(-1), torch.ones(2))


def test_every_parameter_gets_a_gradient(task):
    config, rows, _ = task
    model = MemN2NForQuestionAnswering(config).train()
    model(**COLLATE(rows[:8])).loss.backward()
    missing = {name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0}
    assert not missing


def test_save_load_gives_identical_logits(task, tmp_path):
    config, rows, _ = task
    model = MemN2NForQuestionAnswering(config).eval()
    batch = COLLATE(rows[:3])
    model.save_pretrained(tmp_path)
    loaded = MemN2NForQuestionAnswering.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(loaded(**batch).logits, model(**batch).logits)
    assert json.loads((tmp_path / "config.json").read_text())["architectures"] == ["MemN2NForQuestionAnswering"]


def test_starts_at_the_papers_scale(task):
    model = MemN2NForQuestionAnswering(task[0])
    embedding = model.embeddings[0]
    words = embedding.sentences.word_embeddings.weight[1:] * embedding.sentences.position_weights[0]
    assert 0.09 < words.std() < 0.11 and 0.08 < embedding.ages.std() < 0.12
    assert embedding.sentences.word_embeddings.weight[0].abs().max() == 0  # padding


def test_bad_inputs_are_refused(task):
    config, rows, _ = task
    with pytest.raises(ValueError, match="story_items must be 'sentences'"):
        MemN2NForQuestionAnswering(RehearsalMemoryConfig(encoder_config=dict(TINY_ENCODER), id2label=config.id2label))
    model = MemN2NForQuestionAnswering(config)
    batch = COLLATE(rows[:2])
    bad = {
        "input_ids": (batch["input_ids"][:, :, 0], r"`input_ids` must be the story as sentences"),
        "attention_mask": (batch["attention_mask"][:, :1], r"`attention_mask` must have shape \(batch, sentences\)"),
        "question_input_ids": (batch["question_input_ids"][:1], r"batch \(2\) and the question batch \(1\)"),
        "labels": (batch["labels"] + 100, r"`labels` must lie in"),
    }
    for name, (value, message) in bad.items():
        with pytest.raises(ValueError, match=message):
            model(**{**batch, name: value})
    too_long = torch.ones(2, config.max_sentence_tokens + 1, dtype=torch.long)
    with pytest.raises(ValueError, match="`question_input_ids` has sentences of"):
        model(**{**batch, "question_input_ids": too_long})


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_learns_a_generated_task(seed):
    # 250 steps of batch 32 on 400 stories of 8 sentences: test accuracy 0.925-0.965 over seeds 0-5, where
    # answering the most frequent place scores 0.19-0.25
    torch.manual_seed(seed)
    config, train, test = where_person_task(num_train=400, num_test=200, seed=seed)
    model = MemN2NForQuestionAnswering(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(250):
        batch = COLLATE([train[i] for i in torch.randint(0, len(train), (32,)).tolist()])
        loss = model(**batch).loss
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
    model.eval()
    batch = COLLATE(test)
    with torch.no_grad():
        accuracy = (model(**batch).logits.argmax(-1) == batch["labels"]).float().mean()
    assert accuracy > 0.85
    # what it attends to is the supporting fact: 0.82-0.90 of its attention (summed over hops) over seeds 0-5,
    # where spreading it evenly puts 1/8 there
    importance = model.sentence_importance(**batch)
    on_the_fact = (importance * batch["fragment_weights"]).sum(-1) / importance.sum(-1)
    assert on_the_fact.mean() > 0.5


def test_run_qa_trains_saves_and_evaluates_memn2n(tmp_path, keep_transformers_verbosity):
    run_qa = example_main("run_qa")
    tiny = ["--num_train_stories", "64", "--num_eval_stories", "24", "--story_length", "8", "--hidden_size", "32",
            "--story_items", "sentences", "--per_device_train_batch_size", "8", "--max_steps", "3",
            "--save_strategy", "no", "--use_cpu", "--report_to", "none"]  # fmt: skip
    output = tmp_path / "memn2n"
    trained = run_qa(["--model", "memn2n", "--output_dir", str(output), *tiny])
    model = MemN2NForQuestionAnswering.from_pretrained(output)
    assert model.config.input_feature_dim == 32 and not (output / "README.md").exists()  # the card is RM's
    # the checkpoint says what it is: evaluated as such, without --model, with the accuracy of the trained model
    evaluated = run_qa(
        ["--model_name_or_path", str(output), "--do_eval", "--output_dir", str(tmp_path / "eval"), *tiny]
    )
    assert evaluated["results"]["all"] == trained["results"]["all"]
    with pytest.raises(ValueError, match=r"--model rm \(the checkpoint .* has memn2n\)"):
        run_qa(["--model_name_or_path", str(output), "--model", "rm", "--output_dir", str(tmp_path / "e2"), *tiny])
    with pytest.raises(ValueError, match="--model memn2n reads the story sentence by sentence"):
        run_qa(["--model", "memn2n", "--story_items", "tokens", "--output_dir", str(tmp_path / "tokens")])


def test_run_qa_rehearses_by_a_trained_memn2n_attention(tmp_path, monkeypatch, keep_transformers_verbosity):
    run_qa = example_module("run_qa")
    tiny = ["--num_train_stories", "64", "--num_eval_stories", "24", "--story_length", "8", "--hidden_size", "32",
            "--story_items", "sentences", "--per_device_train_batch_size", "8", "--max_steps", "3",
            "--save_strategy", "no", "--use_cpu", "--report_to", "none"]  # fmt: skip
    teacher = tmp_path / "memn2n"
    run_qa.main(["--model", "memn2n", "--output_dir", str(teacher), *tiny])
    # every training batch's fragment weights are the teacher's attention (3 hops: 3 per story), none at evaluation
    weighed = []
    importance = MemN2NForQuestionAnswering.sentence_importance

    def spy(self, **batch):
        weights = importance(self, **batch)
        weighed.append(weights.sum(-1))
        return weights

    monkeypatch.setattr(MemN2NForQuestionAnswering, "sentence_importance", spy)
    student = tmp_path / "rm"
    taught = ["--fragment_teacher", str(teacher), "--sampler_mode", "external", *tiny]
    run_qa.main(["--output_dir", str(student), *taught])
    assert len(weighed) == 3 and all(torch.allclose(w, torch.full_like(w, 3.0)) for w in weighed)
    assert f"by the attention of the MemN2N model `{teacher}`" in (student / "README.md").read_text()
    # refused: a sampler that would not draw by it, a teacher that is no MemN2N, one of another vocabulary
    with pytest.raises(ValueError, match="sampler_mode='external'"):
        run_qa.main(["--output_dir", str(tmp_path / "uniform"), "--fragment_teacher", str(teacher), *tiny])
    with pytest.raises(ValueError, match="not a MemN2NForQuestionAnswering"):
        run_qa.main(["--output_dir", str(tmp_path / "rm_taught"), *taught[:1], str(student), *taught[2:]])
    with pytest.raises(ValueError, match="another vocabulary than this run's tokenizer"):
        run_qa.load_fragment_teacher(str(teacher), build_word_tokenizer(["Some other words entirely."]))
