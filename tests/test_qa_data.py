"""Tests of QA encoding (story, question, label, supporting mask, truncation), of the collator, and of holding out
whole stories for validation."""

import numpy as np
import pytest
import torch
from datasets import Dataset

from rm_hf.babi import QA_FEATURES, answer_vocabulary
from rm_hf.qa_data import NamePermutation, QACollator, encode_qa_dataset, encode_qa_example, hold_out_stories
from rm_hf.story_generator import generate_stories
from rm_hf.tokenization import build_word_tokenizer

STORY = ["Zoe went to the attic.", "Max took the cup."]  # 7 and 6 tokens with their [SEP]
FIRST = ["zoe", "went", "to", "the", "attic", ".", "[SEP]"]
SECOND = ["max", "took", "the", "cup", ".", "[SEP]"]


def make_row(supporting_positions: list[int], answer: str = "attic", story: list[str] = STORY) -> dict:
    return {
        "story": story,
        "story_line_ids": [1, 2],
        "question": "Where is Zoe?",
        "answer": answer,
        "supporting_ids": [p + 1 for p in supporting_positions],
        "supporting_positions": supporting_positions,
        "task_id": 1,
        "story_id": 1_000_000,
        "question_type": "qa1",
    }


@pytest.fixture(scope="module")
def tokenizer():
    return build_word_tokenizer([*STORY, "Where is Zoe?"])


LABEL2ID = {"attic": 0, "cup": 1}


def tokens(tokenizer, ids: list[int]) -> list[str]:
    return tokenizer.convert_ids_to_tokens(ids)


def test_encodes_story_question_label_and_masks(tokenizer):
    encoded = encode_qa_example(make_row([0]), tokenizer, LABEL2ID)

    assert tokens(tokenizer, encoded["input_ids"]) == FIRST + SECOND
    assert tokens(tokenizer, encoded["question_input_ids"]) == ["[CLS]", "where", "is", "zoe", "?", "[SEP]"]
    assert encoded["labels"] == 0
    assert encoded["supporting_mask"] == [1] * 7 + [0] * 6
    assert encoded["sentence_index"] == [0] * 7 + [1] * 6


def test_unknown_answer_is_named(tokenizer):
    with pytest.raises(ValueError, match="'garden'"):
        encode_qa_example(make_row([0], answer="garden"), tokenizer, LABEL2ID)


@pytest.mark.parametrize(
    ("max_story_tokens", "supporting", "expected_tokens", "expected_mask"),
    [
        (13, [0], FIRST + SECOND, [1] * 7 + [0] * 6),  # fits exactly
        (12, [0], SECOND, [0] * 6),  # the supporting sentence is dropped
        (6, [1], SECOND, [1] * 6),
        (3, [1], ["cup", ".", "[SEP]"], [1] * 3),  # even the last sentence is too long: keep its end
    ],
)
def test_truncation_keeps_recent_whole_sentences(
    tokenizer, max_story_tokens, supporting, expected_tokens, expected_mask
):
    encoded = encode_qa_example(make_row(supporting), tokenizer, LABEL2ID, max_story_tokens=max_story_tokens)

    assert tokens(tokenizer, encoded["input_ids"]) == expected_tokens
    assert encoded["supporting_mask"] == expected_mask
    kept_sentences = 2 if len(expected_tokens) == 13 else 1
    assert encoded["sentence_index"] == ([0] * 7 + [1] * 6 if kept_sentences == 2 else [0] * len(expected_tokens))


def test_truncated_generated_stories_stay_consistent():
    dataset = generate_stories(60, story_length=30, seed=5)
    tokenizer = build_word_tokenizer(sentence for row in dataset for sentence in [*row["story"], row["question"]])
    label2id = {answer: index for index, answer in enumerate(answer_vocabulary(dataset))}
    encoded = encode_qa_dataset(dataset, tokenizer, label2id, max_story_tokens=50)

    kept_supporting = 0
    for row, features in zip(dataset, encoded, strict=True):
        ids = features["input_ids"]
        assert 0 < len(ids) <= 50
        assert ids[-1] == tokenizer.sep_token_id
        kept = ids.count(tokenizer.sep_token_id)
        # The kept tokens are exactly the last `kept` sentences, each followed by [SEP].
        expected = [i for s in row["story"][-kept:] for i in tokenizer(s)["input_ids"] + [tokenizer.sep_token_id]]
        assert ids == expected
        assert features["sentence_index"] == sorted(features["sentence_index"])
        assert features["sentence_index"][-1] == kept - 1
        marked = [i for i, flag in zip(ids, features["supporting_mask"], strict=True) if flag]
        if row["fact_distance"] < kept:
            kept_supporting += 1
            fact = row["story"][row["supporting_positions"][0]]
            assert marked == tokenizer(fact)["input_ids"] + [tokenizer.sep_token_id]
            indices = {
                i for i, flag in zip(features["sentence_index"], features["supporting_mask"], strict=True) if flag
            }
            assert indices == {kept - 1 - row["fact_distance"]}
        else:
            assert marked == []
        assert features["labels"] == label2id[row["answer"]]
    assert 0 < kept_supporting < len(dataset)  # both cases occurred


def test_encode_dataset_keeps_metadata_and_drops_text(tokenizer):
    babi_like = Dataset.from_list([make_row([0]), make_row([1], answer="cup")], features=QA_FEATURES)
    encoded = encode_qa_dataset(babi_like, tokenizer, LABEL2ID)

    assert set(encoded.column_names) == {
        "input_ids",
        "question_input_ids",
        "labels",
        "supporting_mask",
        "sentence_index",
        "task_id",
        "question_type",
        "story_id",
    }
    assert encoded["labels"] == [0, 1]
    assert encoded["question_type"] == ["qa1", "qa1"]
    generated = generate_stories(2, story_length=5)
    label2id = {answer: 0 for answer in answer_vocabulary(generated)}
    assert "fact_distance" in encode_qa_dataset(generated, tokenizer, label2id).column_names


def test_collator_pads_and_builds_masks(tokenizer):
    rows = Dataset.from_list([make_row([0]), make_row([1], answer="cup", story=STORY[1:])], features=QA_FEATURES)
    features = list(encode_qa_dataset(rows, tokenizer, LABEL2ID))
    assert [len(f["input_ids"]) for f in features] == [13, 6]

    batch = QACollator()(features)

    assert set(batch) == {
        "input_ids",
        "attention_mask",
        "question_input_ids",
        "question_attention_mask",
        "labels",
        "fragment_weights",
    }
    assert batch["input_ids"].shape == (2, 13) and batch["input_ids"].dtype == torch.long
    assert batch["input_ids"][0].tolist() == features[0]["input_ids"]
    assert batch["input_ids"][1].tolist() == features[1]["input_ids"] + [0] * 7
    assert batch["attention_mask"].sum(dim=1).tolist() == [13, 6]
    assert batch["attention_mask"][1].tolist() == [1] * 6 + [0] * 7
    assert batch["question_input_ids"].shape == (2, 6)
    assert batch["question_attention_mask"].tolist() == [[1] * 6, [1] * 6]
    assert batch["labels"].tolist() == [0, 1]
    assert batch["fragment_weights"].dtype == torch.float32
    assert batch["fragment_weights"].tolist() == [[1.0] * 7 + [0.0] * 6, [0.0] * 13]


def test_collator_pad_value_and_multiple(tokenizer):
    short = {"input_ids": [5], "question_input_ids": [2, 3], "labels": 1, "supporting_mask": [1], "question_type": "x"}
    features = [encode_qa_example(make_row([1]), tokenizer, LABEL2ID), short]

    batch = QACollator(pad_token_id=99, pad_to_multiple_of=8)(features)

    assert batch["input_ids"].shape == (2, 16)
    assert batch["input_ids"][1].tolist() == [5] + [99] * 15
    assert batch["attention_mask"][0].tolist() == [1] * 13 + [0] * 3
    assert batch["question_input_ids"].shape == (2, 6)  # the question is not rounded up
    assert batch["question_input_ids"][1].tolist() == [2, 3] + [99] * 4
    assert batch["fragment_weights"][1].tolist() == [1.0] + [0.0] * 15
    assert batch["fragment_weights"][0].tolist() == [0.0] * 7 + [1.0] * 6 + [0.0] * 3


def test_collator_lays_out_one_sentence_per_row(tokenizer):
    two = encode_qa_example(make_row([1]), tokenizer, LABEL2ID)
    one = encode_qa_example(make_row([0], story=STORY[:1]), tokenizer, LABEL2ID)
    batch = QACollator(pad_token_id=tokenizer.pad_token_id, sentence_items=True)([two, one])

    assert batch["input_ids"].shape == (2, 2, 7)  # 2 stories x 2 sentences x the longest sentence
    assert tokens(tokenizer, batch["input_ids"][0, 0].tolist()) == FIRST
    assert tokens(tokenizer, batch["input_ids"][0, 1].tolist()) == [*SECOND, "[PAD]"]
    assert batch["input_ids"][1, 1].eq(tokenizer.pad_token_id).all()  # the missing second sentence
    assert batch["attention_mask"].tolist() == [[1, 1], [1, 0]]
    assert batch["fragment_weights"].tolist() == [[0.0, 1.0], [1.0, 0.0]]  # supporting sentences


def test_hold_out_stories_keeps_each_story_on_one_side():
    # bAbI-like: 40 stories of 3 questions each, rows of a story adjacent
    rows = Dataset.from_dict({"story_id": [story for story in range(40) for _ in range(3)], "row": list(range(120))})
    train, validation = (part.to_dict() for part in hold_out_stories(rows, 0.25, seed=3))
    assert len(set(validation["story_id"])) == 10 and len(validation["row"]) == 30
    assert len(train["row"]) == 90 and not set(train["story_id"]) & set(validation["story_id"])
    assert sorted(train["row"] + validation["row"]) == list(range(120))  # nothing lost, nothing repeated
    assert train["row"] == sorted(train["row"]) and validation["row"] == sorted(validation["row"])
    assert list(hold_out_stories(rows, 0.25, seed=3)[1]["row"]) == validation["row"]  # deterministic under the seed
    assert list(hold_out_stories(rows, 0.25, seed=4)[1]["row"]) != validation["row"]
    for fraction in (0, 1, 1.5):
        with pytest.raises(ValueError, match="must be in \\(0, 1\\)"):
            hold_out_stories(rows, fraction, seed=0)
    with pytest.raises(ValueError, match="holds out all 2 stories"):
        hold_out_stories(Dataset.from_dict({"story_id": [0, 1]}), 0.9, seed=0)


RENAMING_STORY = ["Mary went to the kitchen.", "John took the apple.", "John went to the garden."]
RENAMING_GROUPS = (
    ("kitchen", "garden", "office", "cellar"),
    ("mary", "john", "sandra"),
    ("apple", "milk"),
    ("atlantis",),
)


@pytest.fixture(scope="module")
def renaming():
    """A tokenizer that knows the three groups' names (not "atlantis"), their labels, and the permutation."""
    words = [*RENAMING_STORY, "Where is the apple?", "Sandra took the milk to the office.", "Down to the cellar."]
    tokenizer = build_word_tokenizer(words)
    label2id = {"garden": 0, "kitchen": 1, "office": 2, "no": 3}
    return tokenizer, label2id, NamePermutation.from_words(tokenizer, label2id, RENAMING_GROUPS)


def test_name_permutation_renames_story_question_and_answer_alike(renaming):
    tokenizer, label2id, rename = renaming
    id2label = {label: answer for answer, label in label2id.items()}
    row = {**make_row([2], answer="garden", story=RENAMING_STORY), "question": "Where is the apple?"}
    example = encode_qa_example(row, tokenizer, label2id)
    rng, seen = np.random.default_rng(0), set()
    for _ in range(50):
        renamed = rename(example, rng)
        story, question = tokens(tokenizer, renamed["input_ids"]), tokens(tokenizer, renamed["question_input_ids"])
        first, holder, carried, place = story[0], story[7], story[10], story[17]
        assert {first, holder} <= {"mary", "john", "sandra"} and first != holder  # two people stay two people
        assert story[13] == holder and carried in {"apple", "milk"} and question[4] == carried
        assert id2label[renamed["labels"]] == place != story[4]  # the answer follows its place's new name
        # everything else is as it was, and the example itself is left alone
        assert [t for i, t in enumerate(story) if i not in (0, 4, 7, 10, 13, 17)] == [
            t for i, t in enumerate(tokens(tokenizer, example["input_ids"])) if i not in (0, 4, 7, 10, 13, 17)
        ]
        seen.add((first, holder, carried, place))
    assert tokens(tokenizer, example["input_ids"])[:5] == ["mary", "went", "to", "the", "kitchen"]
    assert len(seen) > 10  # the names really are drawn at random
    # an answer that is no name ("no") stays; rows without an answer get none
    assert rename({**example, "labels": 3}, rng)["labels"] == 3
    assert "labels" not in rename({k: v for k, v in example.items() if k != "labels"}, rng)


def test_name_permutation_refuses_what_it_cannot_rename(renaming):
    tokenizer, label2id, rename = renaming
    # "atlantis" is unknown: its group renames nothing; "cellar" is no answer, so no answer may become it, and no
    # other place that is not an answer is there to trade names with
    assert sorted(map(len, rename.token_groups)) == [2, 3, 3]
    assert tokenizer.convert_tokens_to_ids("cellar") not in {t for group in rename.token_groups for t in group}
    with pytest.raises(ValueError, match="'john' is in more than one group"):
        NamePermutation.from_words(tokenizer, label2id, [("mary", "john"), ("john", "sandra")])
    with pytest.raises(ValueError, match="'new york' is 2 tokens"):
        NamePermutation.from_words(tokenizer, label2id, [("new york", "kitchen")])
    with pytest.raises(ValueError, match="the answer 'apple,milk' holds a name"):
        NamePermutation.from_words(tokenizer, {"apple,milk": 0}, RENAMING_GROUPS)


def test_name_permutation_finds_answers_written_otherwise_than_the_story(renaming):
    """bAbI qa5 answers "Fred" where its stories read "fred" to the word tokenizer: the answer is still that name, and
    its label follows the renaming (before this was matched through the tokenizer, such names were renamed in the
    story while their label stayed)."""
    tokenizer, _, _ = renaming
    label2id = {"Mary": 0, "John": 1, "Sandra": 2}
    rename = NamePermutation.from_words(tokenizer, label2id, RENAMING_GROUPS)
    row = {**make_row([1], answer="John", story=RENAMING_STORY), "question": "Who took the apple?"}
    example = encode_qa_example(row, tokenizer, label2id)
    rng, id2label = np.random.default_rng(1), dict(enumerate(label2id))
    taker = set()
    for _ in range(20):
        renamed = rename(example, rng)
        holder = tokens(tokenizer, renamed["input_ids"])[7]  # "john took the apple"
        assert id2label[renamed["labels"]].lower() == holder
        taker.add(holder)
    assert len(taker) > 1
