"""History sampler S: chooses which fragments of the input the rehearsal model rehearses (training only).

Modes (RehearsalMemoryConfig.sampler_mode):
- `uniform`: fragment starts uniform over valid starts (the ablation baseline);
- `external`: per-item importance weights given with the data (e.g. bAbI supporting facts);
- `teacher`: a one-stage form of the paper's "what to rehearse" teacher. A full-access teacher attends
  from the query to every candidate fragment's summary and is trained by the head's task loss; a
  query-agnostic scorer learns to match the teacher's distribution (KL) and is what fragments are drawn
  from, since at write time no query exists yet.
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


class RehearsalMemoryHistorySampler(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.mode = config.sampler_mode
        self.num_fragments = config.num_rehearsal_fragments
        self.fragment_length = config.rehearsal_fragment_length
        self.temperature = config.sampler_temperature
        self.uniform_floor = config.sampler_uniform_floor
        if self.mode == "teacher":
            hidden = config.encoder_config.hidden_size
            self.teacher_query = nn.Linear(config.memory_dim, hidden)
            self.scorer = nn.Sequential(nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, 1))

    def forward(self, attention_mask, item_features=None, fragment_weights=None, query=None):
        """Return fragment starts (B, J), the sampler loss (or None) and the teacher's readout (or None).

        item_features (B, T, E): encoder features, needed by `teacher`; fragment_weights (B, T): needed by
        `external`; query (B, D): the task's query, needed by `teacher`.
        """
        starts_ok = valid_starts(attention_mask, self.fragment_length)  # (B, T)
        uniform = torch.zeros(starts_ok.shape, device=starts_ok.device)
        sampler_loss = teacher_readout = None
        if self.mode == "uniform":
            scores = uniform
        elif self.mode == "external":
            if fragment_weights is None:
                raise ValueError(
                    "sampler_mode='external' needs `fragment_weights` (per-item importance) in the batch."
                )
            if fragment_weights.shape != attention_mask.shape:
                raise ValueError(
                    f"`fragment_weights` shape {tuple(fragment_weights.shape)} does not match the input's "
                    f"(batch, length) = {tuple(attention_mask.shape)}."
                )
            if not (torch.isfinite(fragment_weights) & (fragment_weights >= 0)).all():
                raise ValueError("`fragment_weights` must be finite and non-negative.")
            weight = window_sums(fragment_weights.float() * attention_mask, self.fragment_length)  # (B, T)
            scores = torch.log(weight + 1e-6)
        else:
            if query is None:
                raise ValueError("sampler_mode='teacher' needs a task query (the head passes it).")
            scores, sampler_loss, teacher_readout = self.teacher(item_features, attention_mask, starts_ok, query)
        log_probs = self.mix_with_floor(scores / self.temperature, starts_ok)
        starts = draw_fragment_starts(log_probs, starts_ok, self.num_fragments)
        return starts, sampler_loss, teacher_readout

    def mix_with_floor(self, scores, starts_ok):
        probs = scores.masked_fill(~starts_ok, float("-inf")).softmax(dim=1)
        uniform = starts_ok.float() / starts_ok.sum(dim=1, keepdim=True)
        return torch.log((1 - self.uniform_floor) * probs + self.uniform_floor * uniform + 1e-12)

    def teacher(self, item_features, attention_mask, starts_ok, query):
        # The teacher sees everything but must not shape the memory: features are detached.
        features = item_features.detach() * attention_mask.unsqueeze(-1)  # (B, T, E)
        counts = window_sums(attention_mask.float(), self.fragment_length).clamp_min(1)  # (B, T)
        summaries = window_sums(features, self.fragment_length) / counts.unsqueeze(-1)  # (B, T, E)
        q = self.teacher_query(query)  # (B, E)
        teacher_logits = torch.einsum("bte,be->bt", summaries, q) / q.shape[-1] ** 0.5
        teacher_logits = teacher_logits.masked_fill(~starts_ok, float("-inf"))
        teacher_probs = teacher_logits.softmax(dim=1)  # (B, T)
        readout = torch.einsum("bt,bte->be", teacher_probs, summaries)  # (B, E)
        scorer_logits = self.scorer(summaries).squeeze(-1).masked_fill(~starts_ok, float("-inf"))  # (B, T)
        log_scorer = scorer_logits.log_softmax(dim=1).masked_fill(~starts_ok, 0.0)
        target = teacher_probs.detach()
        kl = (target * (torch.log(target.clamp_min(1e-12)) - log_scorer)).sum(dim=1).mean()
        return scorer_logits.detach(), kl, readout
