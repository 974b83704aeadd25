"""Question-answering rows (from `rm_hf.babi.load_babi` or `rm_hf.story_generator.generate_stories`) to model inputs.

The story becomes one token sequence, each sentence followed by [SEP]; the question is `[CLS] question [SEP]`;
the answer, when the row has one, is a class label. Per story token, `supporting_mask` marks the supporting
sentences and `sentence_index` says which sentence the token belongs to. The encoding itself is
`pipeline_rehearsal_memory.encode_story`, which the pipelines use at inference (and which ships with checkpoints),
so training and inference lay out stories and questions identically.
"""

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from datasets import Dataset
from transformers import PreTrainedTokenizerBase

from .pipeline_rehearsal_memory import encode_story, group_sentences, pad_sentences, pad_sequences

# Metadata worth keeping next to the model inputs, e.g. to score per task or per fact distance.
KEPT_COLUMNS = ("task_id", "question_type", "story_id", "fact_distance")


def encode_qa_example(
    example: Mapping[str, Any],
    tokenizer: PreTrainedTokenizerBase,
    label2id: Mapping[str, int] | None = None,
    max_story_tokens: int | None = None,
) -> dict[str, list[int] | int]:
    """Encode one row (`story`: a list of sentences or a string, `question`, optionally `answer` and
    `supporting_positions`); usable as `dataset.map(encode_qa_example, fn_kwargs=...)`.

    Returns `input_ids` (story tokens, each sentence followed by [SEP]), `question_input_ids`
    ([CLS] question [SEP]), per story token `supporting_mask` (1 on supporting sentences; all 0 without
    `supporting_positions`) and `sentence_index` (index of its sentence among the kept ones), and `labels`
    (`label2id[answer]`) when the row has an answer. Inference needs no answer: rows without one (or with
    `answer=None`) get no `labels`, and `label2id` may then be omitted.

    With `max_story_tokens`, a longer story keeps only its most recent whole sentences that fit; if even the last
    sentence is too long, its last `max_story_tokens` tokens are kept. Sentence indices then count from the
    first kept sentence, and supporting sentences that were dropped are no longer marked.
    """
    answer = example.get("answer")
    if answer is not None and (label2id is None or answer not in label2id):
        known = "no label2id given" if label2id is None else f"{len(label2id)} labels"
        raise ValueError(f"Answer {answer!r} is not in label2id ({known})")
    encoded = encode_story(tokenizer, example["story"], [example["question"]], max_story_tokens)
    first = encoded["first_sentence"]
    supporting = set(example.get("supporting_positions") or ())
    features = {
        "input_ids": encoded["input_ids"],
        "question_input_ids": encoded["question_input_ids"][0],
        "supporting_mask": [int(first + index in supporting) for index in encoded["sentence_index"]],
        "sentence_index": encoded["sentence_index"],
    }
    if answer is not None:
        features["labels"] = label2id[answer]
    return features


def encode_qa_dataset(
    dataset: Dataset,
    tokenizer: PreTrainedTokenizerBase,
    label2id: Mapping[str, int],
    max_story_tokens: int | None = None,
    num_proc: int | None = None,
) -> Dataset:
    """`encode_qa_example` over a dataset; of the original columns, only those in `KEPT_COLUMNS` stay."""
    return dataset.map(
        encode_qa_example,
        fn_kwargs={"tokenizer": tokenizer, "label2id": label2id, "max_story_tokens": max_story_tokens},
        remove_columns=[name for name in dataset.column_names if name not in KEPT_COLUMNS],
        num_proc=num_proc,
        desc="Encoding QA examples",
    )


def hold_out_stories(dataset: Dataset, fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    """Split `dataset` into (train, validation) by whole stories: rows that share a `story_id` (bAbI's questions
    about one story) land on the same side, so validation never asks about a story seen in training. About
    `fraction` of the stories, drawn under `seed`, go to validation; both sides keep their rows' order."""
    if not 0 < fraction < 1:
        raise ValueError(f"the validation fraction must be in (0, 1), got {fraction}")
    story_ids = list(dataset["story_id"])
    stories = sorted(set(story_ids))
    held = max(1, round(fraction * len(stories)))
    if held >= len(stories):
        raise ValueError(
            f"a validation fraction of {fraction} holds out all {len(stories)} stories: nothing is left to train on"
        )
    validation = set(random.Random(seed).sample(stories, held))
    inside = [i for i, story in enumerate(story_ids) if story in validation]
    outside = [i for i, story in enumerate(story_ids) if story not in validation]
    return dataset.select(outside), dataset.select(inside)


@dataclass
class QACollator:
    """Batch encoded QA examples into tensors, right-padding stories and questions separately.

    Returns `input_ids`/`attention_mask` (story), `question_input_ids`/`question_attention_mask`, `labels` (when
    every example has them: examples encoded without answers give a batch without), and `fragment_weights`: the
    supporting mask as floats (0 on padding), the per-item importance weights an "external" history sampler draws
    from. Other keys are dropped. `pad_to_multiple_of` applies to the story.

    With `sentence_items=True` (models with `story_items="sentences"`), the story is laid out one sentence per
    row (`pipeline_rehearsal_memory.pad_sentences`): `input_ids` (batch, sentences, longest sentence), and
    `attention_mask` / `fragment_weights` per sentence.
    """

    pad_token_id: int = 0
    pad_to_multiple_of: int | None = None
    sentence_items: bool = False

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        if self.sentence_items:
            input_ids, attention_mask, fragment_weights = self._sentences(features)
        else:
            input_ids, attention_mask = pad_sequences(
                [f["input_ids"] for f in features], self.pad_token_id, self.pad_to_multiple_of
            )
            fragment_weights, _ = pad_sequences([f["supporting_mask"] for f in features], 0, self.pad_to_multiple_of)
        question_input_ids, question_attention_mask = pad_sequences(
            [f["question_input_ids"] for f in features], self.pad_token_id
        )
        batch = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "question_input_ids": question_input_ids,
            "question_attention_mask": question_attention_mask,
        }
        if all("labels" in f for f in features):
            batch["labels"] = torch.tensor([int(f["labels"]) for f in features], dtype=torch.long)
        batch["fragment_weights"] = fragment_weights.float()
        return batch

    def _sentences(self, features):
        stories = [group_sentences(f["input_ids"], f["sentence_index"]) for f in features]
        input_ids, mask = pad_sentences(stories, self.pad_token_id, self.pad_to_multiple_of)
        fragment_weights = torch.zeros(mask.shape)
        for row, feature in enumerate(features):
            # a sentence is supporting or not as a whole: its first token says which
            supporting = [flags[0] for flags in group_sentences(feature["supporting_mask"], feature["sentence_index"])]
            fragment_weights[row, : len(supporting)] = torch.tensor(supporting, dtype=torch.float)
        return input_ids, mask, fragment_weights
