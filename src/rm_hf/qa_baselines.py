"""A question-answering baseline that reads the whole story at question time, to compare with Rehearsal Memory:
End-To-End Memory Networks (MemN2N, Sukhbaatar et al., NeurIPS 2015), in its bAbI form.

`MemN2NForQuestionAnswering` takes the inputs and returns the outputs of `RehearsalMemoryForQuestionAnswering` with
`story_items="sentences"` (story sentences (B, N, W), questions (B, L), labels -> loss, logits), is built from the
same `RehearsalMemoryConfig` and trains with `RehearsalMemoryTrainer` unchanged (it has no rehearsal terms). It
keeps every sentence: each question attends over the whole story, so a question costs O(story) and what is kept
grows with the story, where Rehearsal Memory answers from K slots written once.

As in the paper:
- a sentence is the position-weighted sum of its word embeddings (`RehearsalMemorySentenceEncoder`, the Rehearsal
  Memory head's: the weighting is learned, starting as a bag of words whatever `config.sentence_position_start`
  says, as every baseline row in the README was run, where the paper's is a fixed formula) plus
  a learned temporal embedding of its age, counted from the end of the story (the last sentence has age 0);
- `config.num_reasoning_hops` hops with adjacent weight tying: K + 1 embedding sets, hop k addresses the story
  with set k and reads it with set k + 1 (C^k = A^(k+1)); the question is embedded with set 0 (B = A^1), and each
  hop adds what it read to the query (u^(k+1) = u^k + o^k);
- scores are plain dot products, and the embeddings start at the paper's scale, N(0, 0.1) per word;
- the answer is a linear map of the last query over `config.id2label`. Answers are classes here, not words, so
  the paper's tie of the answer matrix to the last embedding set does not apply.

Linear start (no softmax in the hops early in training, which the paper found to avoid poor local minima) is the
Trainer's `linear_start_steps`, off by default, for a fixed number of steps where the paper switched when the
validation loss stopped falling.

Our choices and omissions: the paper keeps only the 50 most recent sentences; we keep them all, and ages of
`MAX_SENTENCE_AGE` - 1 and more share the last temporal embedding. Random noise (10% empty memories added in
training) and the paper's SGD schedule are left out. The width is `config.input_feature_dim` (the sentence
encoder's); of the encoder config only the vocabulary size and padding id are used, and the memory machine's fields
not at all.
"""

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.utils.generic import can_return_tuple

from .configuration_rehearsal_memory import RehearsalMemoryConfig
from .layers_rehearsal_memory import init_weights
from .modeling_rehearsal_memory import (
    RehearsalMemoryCheckpointMixin,
    RehearsalMemoryQuestionAnsweringOutput,
    RehearsalMemorySentenceEncoder,
    check_qa_batch,
)
from .rehearsal import task_loss

# Temporal embeddings: the paper's bAbI memory held the 50 most recent sentences.
MAX_SENTENCE_AGE = 50
# The paper's start for every embedding: N(0, 0.1).
EMBEDDING_INIT_STD = 0.1


def sentence_ages(mask: torch.Tensor) -> torch.Tensor:
    """(B, N) bool, True for real sentences -> (B, N) long: the number of real sentences after each one, capped at
    `MAX_SENTENCE_AGE` - 1. Counting real sentences (not positions) leaves ages unchanged by padding."""
    later = mask.flip(-1).long().cumsum(-1).flip(-1) - mask.long()
    return later.clamp(max=MAX_SENTENCE_AGE - 1)


def attend(
    query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, linear: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """One hop's read: query (B, D), keys and values (B, N, D), mask (B, N) bool -> what it read (B, D) and its
    attention over the sentences (B, N). `linear`: the raw scores weigh the sentences (the paper's linear start)."""
    scores = torch.einsum("bd,bnd->bn", query, keys)
    if linear:
        weights = scores * mask
    else:  # a finite fill, then zeroed: a story with no real sentence reads nothing instead of NaN
        weights = scores.masked_fill(~mask, torch.finfo(scores.dtype).min).softmax(-1) * mask
    return torch.einsum("bn,bnd->bd", weights, values), weights


class MemN2NSentenceEncoder(RehearsalMemorySentenceEncoder):
    """The Rehearsal Memory head's sentence encoder, started at a tenth of its scale."""

    def init_weights_from_config(self, config):
        # Words start at unit scale (`RehearsalMemoryEmbedding`): weighting every position by 0.1 starts each word at
        # the paper's N(0, 0.1). At unit scale a question-sentence score spreads over tens, the softmax saturates
        # from the first step and some seeds stall (200 steps at learning rate 1e-2 on 400 generated stories of 8
        # sentences, 3 seeds: test accuracy 0.43-0.96 at unit scale, 0.95-0.97 at 0.1).
        init.constant_(self.position_weights, EMBEDDING_INIT_STD)


class MemN2NEmbedding(nn.Module):
    """One of MemN2N's embedding sets: a sentence's position-weighted bag of words plus the embedding of its age."""

    def __init__(self, config: RehearsalMemoryConfig):
        super().__init__()
        self.sentences = MemN2NSentenceEncoder(config)
        self.ages = nn.Parameter(torch.empty(MAX_SENTENCE_AGE, config.input_feature_dim))

    def init_weights_from_config(self, config):
        init.normal_(self.ages, std=EMBEDDING_INIT_STD)

    def forward(self, input_ids: torch.Tensor, ages: torch.Tensor) -> torch.Tensor:
        # input_ids (B, N, W), ages (B, N) -> (B, N, D)
        return self.sentences(input_ids, "input_ids") + self.ages[ages]


class MemN2NForQuestionAnswering(RehearsalMemoryCheckpointMixin, PreTrainedModel):
    """MemN2N over story sentences: every question reads every sentence (cost O(story) per question)."""

    config: RehearsalMemoryConfig
    base_model_prefix = "memn2n"
    main_input_name = "input_ids"

    def __init__(self, config: RehearsalMemoryConfig):
        super().__init__(config)
        if config.story_items != "sentences":
            raise ValueError(
                f"MemN2NForQuestionAnswering reads sentence items: RehearsalMemoryConfig.story_items must be "
                f"'sentences', got {config.story_items!r}."
            )
        self.embeddings = nn.ModuleList(MemN2NEmbedding(config) for _ in range(config.num_reasoning_hops + 1))
        self.classifier = nn.Linear(config.input_feature_dim, config.num_labels)
        self.linear_reading = False  # the Trainer's linear start (RehearsalTrainingArguments.linear_start_steps)
        self.post_init()

    def _init_weights(self, module):
        init_weights(self, module)  # the package's one rule: a module's own `init_weights_from_config`, else HF's

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        question_input_ids: torch.LongTensor | None = None,
        question_attention_mask: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        fragment_weights: torch.FloatTensor | None = None,
        output_attentions: bool | None = None,
    ) -> RehearsalMemoryQuestionAnsweringOutput:
        r"""
        input_ids (`(batch_size, sentences, sentence_length)`), attention_mask (`(batch_size, sentences)`): the story,
            one sentence per row, as [`RehearsalMemoryForQuestionAnswering`] takes it with `story_items="sentences"`;
            without `attention_mask`, a sentence is real if it has a token other than padding.
        question_input_ids (`(batch_size, question_length)`): the questions. `question_attention_mask` is accepted
            and not needed: padding embeds to zero.
        labels (`(batch_size,)`): answer ids in `config.id2label`.
        fragment_weights: accepted (the collator gives them for Rehearsal Memory's sampler) and ignored.
        output_attentions (`bool`): also return each hop's attention over the story sentences, `attentions`: one
            `(batch_size, sentences)` tensor per hop, 0 on padding.
        """
        mask = self._story_mask(input_ids, attention_mask, question_input_ids, labels)
        ages = sentence_ages(mask)
        story = [embedding(input_ids, ages) for embedding in self.embeddings]  # K + 1 x (B, N, D)
        query = self.embeddings[0].sentences(question_input_ids, "question_input_ids")  # (B, D)
        attentions = []
        for keys, values in zip(story[:-1], story[1:]):  # adjacent tying: hop k reads with set k + 1
            read, weights = attend(query, keys, values, mask, self.linear_reading)
            query = query + read
            attentions.append(weights)
        logits = self.classifier(query)  # (B, num_labels)
        loss = task_loss(logits, labels) if labels is not None else None
        return RehearsalMemoryQuestionAnsweringOutput(
            loss=loss, logits=logits, attentions=tuple(attentions) if output_attentions else None
        )

    @torch.no_grad()
    def sentence_importance(self, input_ids, attention_mask, question_input_ids, **batch) -> torch.Tensor:
        """How much each story sentence matters to the question, by this (trained) model's reading: its attention
        summed over the hops, (B, N), 0 on padding. A question that needs two facts (bAbI qa2: who took the
        object, then where that person went) finds one per hop, so both weigh. These are the per-item weights
        that Rehearsal Memory's `sampler_mode="external"` draws fragments from: the paper's two-stage teacher,
        a full-access model trained first whose attention says what to rehearse. Takes a `QACollator` batch
        (`**batch`: its other keys are not needed)."""
        outputs = self(
            input_ids=input_ids,
            attention_mask=attention_mask,
            question_input_ids=question_input_ids,
            output_attentions=True,
        )
        return torch.stack(outputs.attentions).sum(0)

    def _story_mask(self, input_ids, attention_mask, question_input_ids, labels) -> torch.Tensor:
        """Check the batch and return which sentences are real, (B, N) bool."""
        if input_ids is None or input_ids.dim() != 3:
            raise ValueError(
                "`input_ids` must be the story as sentences, shape (batch, sentences, sentence_length), got "
                f"{None if input_ids is None else tuple(input_ids.shape)}."
            )
        if question_input_ids is not None and question_input_ids.dim() != 2:
            raise ValueError(
                f"`question_input_ids` must have shape (batch, question_length), got {tuple(question_input_ids.shape)}."
            )
        # the Rehearsal Memory head's checks of the question, the batch sizes and the labels
        check_qa_batch(input_ids, question_input_ids, labels, self.config.num_labels)
        if attention_mask is None:
            return (input_ids != self.embeddings[0].sentences.word_embeddings.padding_idx).any(-1)
        if attention_mask.shape != input_ids.shape[:2]:
            raise ValueError(
                f"`attention_mask` must have shape (batch, sentences) = {tuple(input_ids.shape[:2])}, "
                f"got {tuple(attention_mask.shape)}."
            )
        return attention_mask.bool()


__all__ = ["MemN2NForQuestionAnswering"]
