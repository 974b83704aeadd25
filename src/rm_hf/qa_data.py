"""Question-answering rows (from `rm_hf.babi.load_babi` or `rm_hf.story_generator.generate_stories`) to model inputs.

The story becomes one token sequence, each sentence followed by [SEP]; the question is `[CLS] question [SEP]`;
the answer is a class label. Per story token, `supporting_mask` marks the supporting sentences and
`sentence_index` says which sentence the token belongs to.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from datasets import Dataset
from transformers import PreTrainedTokenizerBase

# Metadata worth keeping next to the model inputs, e.g. to score per task or per fact distance.
KEPT_COLUMNS = ("task_id", "question_type", "story_id", "fact_distance")


def _keep_recent_sentences(sentences: list[list[int]], max_tokens: int) -> int:
    """Index of the first of the most recent whole sentences that fit in `max_tokens` (len(sentences) if none)."""
    first, room = len(sentences), max_tokens
    while first > 0 and len(sentences[first - 1]) <= room:
        first -= 1
        room -= len(sentences[first])
    return first


def encode_qa_example(
    example: Mapping[str, Any],
    tokenizer: PreTrainedTokenizerBase,
    label2id: Mapping[str, int],
    max_story_tokens: int | None = None,
) -> dict[str, list[int] | int]:
    """Encode one row; usable as `dataset.map(encode_qa_example, fn_kwargs=...)`.

    Returns `input_ids` (story tokens, each sentence followed by [SEP]), `question_input_ids`
    ([CLS] question [SEP]), `labels` (`label2id[answer]`), and per story token `supporting_mask` (1 on supporting
    sentences) and `sentence_index` (index of its sentence among the kept ones).

    With `max_story_tokens`, a longer story keeps only its most recent whole sentences that fit; if even the last
    sentence is too long, its last `max_story_tokens` tokens are kept. Sentence indices then count from the
    first kept sentence, and supporting sentences that were dropped are no longer marked.
    """
    answer = example["answer"]
    if answer not in label2id:
        raise ValueError(f"Answer {answer!r} is not in label2id ({len(label2id)} labels)")
    if max_story_tokens is not None and max_story_tokens < 1:
        raise ValueError(f"max_story_tokens must be at least 1, got {max_story_tokens}")
    # One tokenizer call for the sentences and the question together: the call overhead dominates short texts.
    *sentences, question = tokenizer([*example["story"], example["question"]], add_special_tokens=False)["input_ids"]
    sentences = [ids + [tokenizer.sep_token_id] for ids in sentences]

    first = 0
    if max_story_tokens is not None:
        first = _keep_recent_sentences(sentences, max_story_tokens)
        if first == len(sentences) and sentences:
            first -= 1
            sentences[first] = sentences[first][-max_story_tokens:]

    supporting = set(example["supporting_positions"])
    input_ids: list[int] = []
    supporting_mask: list[int] = []
    sentence_index: list[int] = []
    for index, ids in enumerate(sentences[first:]):
        input_ids += ids
        supporting_mask += [int(first + index in supporting)] * len(ids)
        sentence_index += [index] * len(ids)
    return {
        "input_ids": input_ids,
        "question_input_ids": [tokenizer.cls_token_id, *question, tokenizer.sep_token_id],
        "labels": label2id[answer],
        "supporting_mask": supporting_mask,
        "sentence_index": sentence_index,
    }


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


def _pad(
    sequences: Sequence[Sequence[int]], value: int, multiple_of: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad to the longest sequence (rounded up to `multiple_of`); returns (padded, mask of real items)."""
    length = max((len(sequence) for sequence in sequences), default=0)
    if multiple_of:
        length = -(-length // multiple_of) * multiple_of
    padded = torch.full((len(sequences), length), value, dtype=torch.long)
    mask = torch.zeros((len(sequences), length), dtype=torch.long)
    for row, sequence in enumerate(sequences):
        padded[row, : len(sequence)] = torch.as_tensor(sequence, dtype=torch.long)
        mask[row, : len(sequence)] = 1
    return padded, mask


@dataclass
class QACollator:
    """Batch encoded QA examples into tensors, right-padding stories and questions separately.

    Returns `input_ids`/`attention_mask` (story), `question_input_ids`/`question_attention_mask`, `labels`, and
    `fragment_weights`: the supporting mask as floats (0 on padding), the per-item importance weights an
    "external" history sampler draws from. Other keys are dropped. `pad_to_multiple_of` applies to the story.

    With `sentence_items=True` (models with `story_items="sentences"`), the story is laid out one sentence per
    row: `input_ids` (batch, sentences, longest sentence), and `attention_mask` / `fragment_weights` per sentence.
    """

    pad_token_id: int = 0
    pad_to_multiple_of: int | None = None
    sentence_items: bool = False

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        if self.sentence_items:
            input_ids, attention_mask, fragment_weights = self._sentences(features)
        else:
            input_ids, attention_mask = _pad(
                [f["input_ids"] for f in features], self.pad_token_id, self.pad_to_multiple_of
            )
            fragment_weights, _ = _pad([f["supporting_mask"] for f in features], 0, self.pad_to_multiple_of)
        question_input_ids, question_attention_mask = _pad(
            [f["question_input_ids"] for f in features], self.pad_token_id
        )
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "question_input_ids": question_input_ids,
            "question_attention_mask": question_attention_mask,
            "labels": torch.tensor([int(f["labels"]) for f in features], dtype=torch.long),
            "fragment_weights": fragment_weights.float(),
        }

    def _sentences(self, features):
        stories = [_split_sentences(f) for f in features]  # per example: [(token ids, supporting)]
        width = max((len(ids) for story in stories for ids, _ in story), default=1)
        rows, mask = _pad([[0] * len(story) for story in stories], 0, self.pad_to_multiple_of)
        input_ids = torch.full((*rows.shape, width), self.pad_token_id, dtype=torch.long)
        fragment_weights = torch.zeros(rows.shape)
        for row, story in enumerate(stories):
            for index, (ids, supporting) in enumerate(story):
                input_ids[row, index, : len(ids)] = torch.as_tensor(ids, dtype=torch.long)
                fragment_weights[row, index] = supporting
        return input_ids, mask, fragment_weights


def _split_sentences(feature: Mapping[str, Any]) -> list[tuple[list[int], int]]:
    """An encoded story's tokens regrouped by `sentence_index`: [(token ids, 1 if supporting else 0)]."""
    sentences: dict[int, tuple[list[int], int]] = {}
    for token, index, supporting in zip(feature["input_ids"], feature["sentence_index"], feature["supporting_mask"]):
        sentences.setdefault(index, ([], supporting))[0].append(token)
    return [sentences[index] for index in sorted(sentences)]
