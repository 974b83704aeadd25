"""History sampler S: chooses which fragments of the input the rehearsal model rehearses (training only).

Modes (RehearsalMemoryConfig.sampler_mode):
- `uniform`: fragment starts uniform over valid starts (the ablation baseline);
- `external`: per-item importance weights given with the data (e.g. bAbI supporting facts);
- `teacher`: a one-stage form of the paper's "what to rehearse" teacher. A full-access teacher
  (`RehearsalMemoryTeacher`) attends from the query to every candidate fragment's summary and is trained by
  the task loss; a query-agnostic scorer learns to match the teacher's distribution (KL) and is what
  fragments are drawn from, since at write time no query exists yet.
Starts are drawn without replacement by Gumbel top-k over a distribution mixed with a uniform floor, so
every valid fragment keeps some chance of being rehearsed. Inputs are right-padded.
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


def fragment_summaries(item_features: torch.Tensor, attention_mask: torch.Tensor, length: int) -> torch.Tensor:
    """Mean encoder feature of the fragment starting at each item: (B, T, E) -> (B, T, E)."""
    features = item_features * attention_mask.unsqueeze(-1)
    counts = window_sums(attention_mask.float(), length).clamp_min(1)  # (B, T)
    return window_sums(features, length) / counts.unsqueeze(-1)


class RehearsalMemoryTeacher(nn.Module):
    """The full-access teacher of `sampler_mode="teacher"`: it sees every fragment and the task's query, attends from
    the query to the fragments' summaries and answers the task from what it attended to, trained by the task loss.
    Its attention says which fragments matter. Training only, and it shapes nothing the task model uses: the
    summaries and the query reach it detached."""

    def __init__(self, config, num_outputs: int):
        super().__init__()
        hidden = config.encoder_config.hidden_size
        self.query_projection = nn.Linear(config.memory_dim, hidden)
        self.head = nn.Linear(hidden + config.memory_dim, num_outputs)

    def forward(self, summaries, starts_ok, query):
        # summaries (B, T, E) detached, starts_ok (B, T), query (B, D) detached
        # -> attention over fragment starts (B, T) and task logits (B, num_outputs)
        q = self.query_projection(query)  # (B, E)
        scores = torch.einsum("bte,be->bt", summaries, q) / q.shape[-1] ** 0.5
        attention = scores.masked_fill(~starts_ok, float("-inf")).softmax(dim=1)
        readout = torch.einsum("bt,bte->be", attention, summaries)  # (B, E)
        return attention, self.head(torch.cat([readout, query], dim=-1))


class RehearsalMemoryHistorySampler(nn.Module):
    """Draws the fragment starts to rehearse from a distribution over valid starts: uniform, the data's importance
    weights (`external`), or a query-agnostic scorer that learns to match the teacher's attention (`teacher`): at
    write time no query exists yet, so the scorer, not the teacher, is what fragments are drawn from."""

    def __init__(self, config):
        super().__init__()
        self.mode = config.sampler_mode
        self.num_fragments = config.num_rehearsal_fragments
        self.fragment_length = config.rehearsal_fragment_length
        self.temperature = config.sampler_temperature
        self.uniform_floor = config.sampler_uniform_floor
        if self.mode == "teacher":
            hidden = config.encoder_config.hidden_size
            self.scorer = nn.Sequential(nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, 1))

    def forward(self, attention_mask, fragment_weights=None, summaries=None, teacher_attention=None):
        """Fragment starts (B, J) and the scorer's loss (KL to the teacher's attention; None for other modes).

        fragment_weights (B, T): per-item importance, for `external`; summaries (B, T, E) and teacher_attention
        (B, T): the fragments' summaries and the teacher's attention over them, for `teacher`.
        """
        starts_ok = valid_starts(attention_mask, self.fragment_length)  # (B, T)
        sampler_loss = None
        if self.mode == "uniform":
            scores = torch.zeros(starts_ok.shape, device=starts_ok.device)
        elif self.mode == "external":
            scores = self.external_scores(fragment_weights, attention_mask)
        else:
            scorer_logits = self.scorer(summaries).squeeze(-1).masked_fill(~starts_ok, float("-inf"))  # (B, T)
            log_scorer = scorer_logits.log_softmax(dim=1).masked_fill(~starts_ok, 0.0)
            target = teacher_attention.detach()
            sampler_loss = (target * (torch.log(target.clamp_min(1e-12)) - log_scorer)).sum(dim=1).mean()
            scores = scorer_logits.detach()
        log_probs = self.mix_with_floor(scores / self.temperature, starts_ok)
        return draw_fragment_starts(log_probs, starts_ok, self.num_fragments), sampler_loss

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
