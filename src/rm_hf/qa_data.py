"""Question-answering rows (from `rm_hf.babi.load_babi` or `rm_hf.story_generator.generate_stories`) to model inputs.

The story becomes one token sequence, each sentence followed by [SEP]; the question is `[CLS] question [SEP]`;
the answer, when the row has one, is a class label. Per story token, `supporting_mask` marks the supporting
sentences and `sentence_index` says which sentence the token belongs to. The encoding itself is
`pipeline_rehearsal_memory.encode_story`, which the pipelines use at inference (and which ships with checkpoints),
so training and inference lay out stories and questions identically.

`NamePermutation` is a training-time augmentation for tasks whose names are interchangeable (bAbI qa1-qa5, qa13): each
example gets its names renamed at random, consistently in story, question and answer.
"""

import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
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


# bAbI qa1-qa5's and qa13's names by kind: in those tasks a name means nothing beyond what the story says of it, so
# renaming them consistently keeps every answer right. Not so in every task: in qa20 the hungry go to the kitchen, and
# in qa11 "he" and "she" follow the name (qa13 refers back only with "they").
BABI_NAME_GROUPS = (
    ("bathroom", "bedroom", "garden", "hallway", "kitchen", "office"),
    ("bill", "daniel", "fred", "jeff", "john", "mary", "sandra"),
    ("apple", "football", "milk"),
)
BABI_NAME_TASKS = (1, 2, 3, 4, 5, 13)  # the tasks whose names `BABI_NAME_GROUPS` may rename


def check_renamable_tasks(tasks: Iterable[int]) -> None:
    """Refuse renaming names (`--permute_names`) for a bAbI task outside `BABI_NAME_TASKS`."""
    if others := [task for task in tasks if task not in BABI_NAME_TASKS]:
        raise ValueError(
            f"--permute_names renames the names of bAbI tasks 1-5 and 13, where a name means no more than the story "
            "says; "
            f"not of task {others[0]}"
        )


@dataclass
class NamePermutation:
    """Rename interchangeable names at random, one permutation per group and example, in the story, the question
    and the answer; a training-time augmentation (`__call__` on one encoded example).

    A task with few training stories (bAbI's qa3 has 1,000 questions) lets a model learn which names its answers
    tend to be instead of how the story decides them; renamed copies of the same stories take that shortcut away.
    Only right where the names carry no meaning of their own in the task (`BABI_NAME_GROUPS` for bAbI qa1-qa5 and
    qa13).

    `token_groups`: token ids, each group permuted among itself; `label_of_token`: the answer label of a token that
    is itself an answer (its label follows the token's new name).
    """

    token_groups: list[list[int]]
    label_of_token: dict[int, int]
    vocab_size: int

    def __post_init__(self):
        self._token_of_label = {label: token for token, label in self.label_of_token.items()}

    @classmethod
    def from_words(
        cls, tokenizer: PreTrainedTokenizerBase, label2id: Mapping[str, int], groups: Sequence[Sequence[str]]
    ) -> "NamePermutation":
        """Groups of words -> token ids, words and answers matched through the tokenizer (bAbI writes "Fred" as an
        answer and the word tokenizer reads "fred"). Words the tokenizer does not know (names of other tasks) are
        left out. A name that is an answer is renamed only to another answer (a label must stay a label), so each
        group splits into its answers and the rest; a part with fewer than two known words renames nothing. Each name
        must be one token; an answer of several tokens that holds a name (e.g. "apple,milk") could not follow the
        renaming and is refused."""

        def token_ids(text: str) -> list[int]:
            return tokenizer(text, add_special_tokens=False)["input_ids"]

        label_of_answer_token, longer_answers = {}, {}
        for answer, label in label2id.items():
            ids = token_ids(answer)
            if len(ids) == 1:
                label_of_answer_token[ids[0]] = label
            else:
                longer_answers[answer] = ids
        seen, token_groups = set(), []
        for group in groups:
            answers, others = [], []
            for word in group:
                if word in seen:
                    raise ValueError(f"the name {word!r} is in more than one group of names to permute")
                seen.add(word)
                ids = token_ids(word)
                if len(ids) != 1:
                    raise ValueError(f"the name {word!r} is {len(ids)} tokens for this tokenizer: names must be one")
                if ids[0] != tokenizer.unk_token_id:
                    (answers if ids[0] in label_of_answer_token else others).append(ids[0])
            token_groups += [known for known in (answers, others) if len(known) > 1]
        renamed = {token for group in token_groups for token in group}
        for answer, ids in longer_answers.items():
            if renamed.intersection(ids):
                raise ValueError(f"the answer {answer!r} holds a name to permute but is not one name itself")
        label_of_token = {token: label for token, label in label_of_answer_token.items() if token in renamed}
        return cls(token_groups, label_of_token, len(tokenizer))

    def __call__(self, example: Mapping[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        """A copy of `example` (`encode_qa_example`'s columns) with its names renamed."""
        table = np.arange(self.vocab_size)
        for group in self.token_groups:
            table[group] = rng.permutation(group)
        renamed = dict(example)
        for name in ("input_ids", "question_input_ids"):
            renamed[name] = table[np.asarray(example[name])]
        answer = self._token_of_label.get(int(example["labels"])) if "labels" in example else None
        if answer is not None:  # the answer is a name: its label follows the name's new spelling
            renamed["labels"] = self.label_of_token[int(table[answer])]
        return renamed


def renamed_when_read(dataset: Dataset, rename: NamePermutation, seed: int) -> Dataset:
    """`dataset` (encoded) whose rows come out renamed by `rename`, drawn anew each time a row is read (a
    `datasets` transform: nothing is stored, so every pass over the data sees other names)."""
    rng = np.random.default_rng(seed)

    def transform(batch: dict[str, list]) -> dict[str, list]:
        rows = [rename(dict(zip(batch, values)), rng) for values in zip(*batch.values())]
        return {name: [row[name] for row in rows] for name in batch}

    return dataset.with_transform(transform)


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
