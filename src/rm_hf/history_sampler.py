"""History sampler S: chooses which fragments of the input the rehearsal model rehearses (training only).

Modes (RehearsalMemoryConfig.sampler_mode):
- `uniform`: fragment starts uniform over valid starts (the ablation baseline);
- `external`: per-item importance weights given with the data (e.g. bAbI supporting facts, or the attention of a
  separately trained full-access model: the paper's two-stage teacher);
- `teacher`: a one-stage form of the paper's "what to rehearse" teacher. A full-access teacher
  (`RehearsalMemoryTeacher`) attends from the task's query to every candidate fragment, knowing each fragment's
  content and how far back it lies, and is trained by the task loss; fragments are drawn from its attention.
Starts are drawn without replacement by Gumbel top-k over a distribution mixed with a uniform floor, so
every valid fragment keeps some chance of being rehearsed. Inputs are right-padded.

Why the teacher draws with the query. Rehearsal runs in training only, after the whole input is written, when the
batch's query is known; the memory wrote without it either way, so choosing fragments by the query tells the memory
nothing at write time: over many batches it learns to keep what questions tend to need. An earlier form drew from a
query-agnostic scorer distilled from the teacher; it could not tell which of many similar fragments a question
needs (in a story of moves, the last one of the asked person), and on generated 100-sentence stories covered
supporting facts less often than uniform drawing (7.3% against 8.2%).
"""

import torch
from torch import nn


def window_sums(values: torch.Tensor, width: int) -> torch.Tensor:
    """Sum of `values` over the window [s, s + width) (cut at the end) for every start s: (B, T, ...) -> same."""
    length = values.shape[1]
    prefix = torch.cat([torch.zeros_like(values[:, :1]), values.cumsum(dim=1)], dim=1)  # (B, T + 1, ...)
    ends = (torch.arange(length, device=values.device) + width).clamp(max=length)
    return prefix[:, ends] - prefix[:, :length]


def valid_starts(attention_mask: torch.Tensor, fragment_length: int) -> torch.Tensor:
    """(B, T) bool: starts whose fragment lies inside the real items (a short row keeps start 0)."""
    lengths = attention_mask.sum(dim=1, keepdim=True)  # (B, 1)
    last_start = (lengths - fragment_length).clamp(min=0)
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return positions.unsqueeze(0) <= last_start


def draw_fragment_starts(log_probs: torch.Tensor, starts_ok: torch.Tensor, num_fragments: int) -> torch.Tensor:
    """Gumbel top-k: `num_fragments` distinct starts per row, (B, T) -> (B, J). Rows with fewer valid starts
    than J repeat start 0."""
    gumbel = -torch.log(-torch.log(torch.rand_like(log_probs).clamp_min(1e-20)))
    keys = (log_probs + gumbel).masked_fill(~starts_ok, float("-inf"))
    k = min(num_fragments, keys.shape[1])
    values, starts = keys.topk(k, dim=1)
    starts = torch.where(torch.isfinite(values), starts, torch.zeros_like(starts))
    if k < num_fragments:
        starts = torch.cat([starts, starts.new_zeros(starts.shape[0], num_fragments - k)], dim=1)
    return starts


# How far back a fragment lies, in buckets: exact below 8 items, then two per doubling (the last from ~6M items back).
EXACT_AGES = 8
NUM_AGE_BUCKETS = 48


def age_buckets(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, T) mask -> (B, T) long: the bucket of each start's distance, in items, to the row's last real item."""
    last = attention_mask.sum(dim=1, keepdim=True) - 1  # (B, 1)
    ages = (last - torch.arange(attention_mask.shape[1], device=attention_mask.device)).clamp(min=0)
    octaves = torch.log2(ages.clamp(min=EXACT_AGES).float() / EXACT_AGES)
    buckets = torch.where(ages < EXACT_AGES, ages, EXACT_AGES + (2 * octaves).long())
    return buckets.clamp(max=NUM_AGE_BUCKETS - 1)


def fragment_summaries(item_features: torch.Tensor, attention_mask: torch.Tensor, length: int) -> torch.Tensor:
    """Mean encoder feature of the fragment starting at each item: (B, T, E) -> (B, T, E)."""
    features = item_features * attention_mask.unsqueeze(-1)
    counts = window_sums(attention_mask.float(), length).clamp_min(1)  # (B, T)
    return window_sums(features, length) / counts.unsqueeze(-1)


class RehearsalMemoryTeacher(nn.Module):
    """The full-access teacher of `sampler_mode="teacher"`: it sees every fragment and the task's query, attends from
    the query to the fragments (their summaries plus an embedding of how far back they lie: "the last mention" is
    a matter of position) and answers the task from what it attended to, trained by the task loss. Its attention
    says which fragments matter. Training only, and it shapes nothing the task model uses: the summaries and the
    query reach it detached."""

    def __init__(self, config, num_outputs: int):
        super().__init__()
        hidden = config.encoder_config.hidden_size
        self.query_projection = nn.Linear(config.memory_dim, hidden)
        self.age_embeddings = nn.Embedding(NUM_AGE_BUCKETS, hidden)
        self.head = nn.Linear(hidden + config.memory_dim, num_outputs)

    def forward(self, summaries, starts_ok, query, ages):
        # summaries (B, T, E) detached, starts_ok (B, T), query (B, D) detached, ages (B, T) buckets
        # -> attention scores over fragment starts (B, T), -inf where no fragment starts, and task logits (B, C)
        q = self.query_projection(query)  # (B, E)
        keys = summaries + self.age_embeddings(ages)  # (B, T, E)
        scores = (torch.einsum("bte,be->bt", keys, q) / q.shape[-1] ** 0.5).masked_fill(~starts_ok, float("-inf"))
        readout = torch.einsum("bt,bte->be", scores.softmax(dim=1), keys)  # (B, E)
        return scores, self.head(torch.cat([readout, query], dim=-1))


class RehearsalMemoryHistorySampler(nn.Module):
    """Draws the fragment starts to rehearse from a distribution over valid starts: uniform, the data's importance
    weights (`external`), or the teacher's attention (`teacher`)."""

    def __init__(self, config):
        super().__init__()
        self.mode = config.sampler_mode
        self.num_fragments = config.num_rehearsal_fragments
        self.fragment_length = config.rehearsal_fragment_length
        self.temperature = config.sampler_temperature
        self.uniform_floor = config.sampler_uniform_floor

    def forward(self, attention_mask, fragment_weights=None, teacher_scores=None):
        """Fragment starts (B, J). fragment_weights (B, T): per-item importance, for `external`; teacher_scores
        (B, T): the teacher's attention scores over fragment starts (before its softmax), for `teacher`."""
        starts_ok = valid_starts(attention_mask, self.fragment_length)  # (B, T)
        if self.mode == "uniform":
            scores = torch.zeros(starts_ok.shape, device=starts_ok.device)
        elif self.mode == "external":
            scores = self.external_scores(fragment_weights, attention_mask)
        else:
            scores = teacher_scores.detach()
        log_probs = self.mix_with_floor(scores / self.temperature, starts_ok)
        return draw_fragment_starts(log_probs, starts_ok, self.num_fragments)

    def external_scores(self, fragment_weights, attention_mask):
        if fragment_weights is None:
            raise ValueError("sampler_mode='external' needs `fragment_weights` (per-item importance) in the batch.")
        if fragment_weights.shape != attention_mask.shape:
            raise ValueError(
                f"`fragment_weights` shape {tuple(fragment_weights.shape)} does not match the input's "
                f"(batch, length) = {tuple(attention_mask.shape)}."
            )
        if not (torch.isfinite(fragment_weights) & (fragment_weights >= 0)).all():
            raise ValueError("`fragment_weights` must be finite and non-negative.")
        weight = window_sums(fragment_weights.float() * attention_mask, self.fragment_length)  # (B, T)
        return torch.log(weight + 1e-6)

    def mix_with_floor(self, scores, starts_ok):
        probs = scores.masked_fill(~starts_ok, float("-inf")).softmax(dim=1)
        uniform = starts_ok.float() / starts_ok.sum(dim=1, keepdim=True)
        return torch.log((1 - self.uniform_floor) * probs + self.uniform_floor * uniform + 1e-12)
