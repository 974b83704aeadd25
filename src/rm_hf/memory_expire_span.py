"""Expire-Span memory (Sukhbaatar et al., ICML 2021), `memory_type="expire_span"`.

Every real item is kept as an entry with a learned span e = L * sigmoid(w.h + b) (L = `expire_span_max_span`
items). A query at time t sees entry i with the soft ramp weight clamp(1 + (e_i - (t - i)) / R, 0, 1)
(R = `expire_span_ramp`), and attention is renormalised over those weights. Once an entry's weight reached 0 it
stays 0 (t only grows), so it is deleted at write time: memory size follows the learned spans. The auxiliary loss
`expire_span_loss_coef * mean(e_i / L)` over written items pushes spans down (the paper's alpha * sum(e_i) / T,
scaled by L so the coefficient does not depend on the maximum span).

Our choices: tensors keep a fixed capacity C = `memory_capacity` with a per-row validity mask (static shapes; a
row deletes its own entries, not the batch minimum); if more than C entries are alive, those with the least
remaining span go first. Spans are predicted once, when an item is written (the stored features never change).
No span noise during training. Time counts real items only (padding is not time).
"""

import math

import torch
from torch import nn
from transformers import initialization as init

from .layers_rehearsal_memory import RehearsalMemoryProjection
from .memory_interface import RehearsalMemoryAgeEncoding, RehearsalMemoryBank, item_positions, keep_entries


class RehearsalMemorySpanPredictor(nn.Linear):
    """w.h + b, the logit of an item's span as a share of L."""

    def init_weights_from_config(self, config):
        # called by the model's `_init_weights`: every span starts at init_fraction * L (as in the paper's code)
        init.zeros_(self.weight)
        fraction = config.expire_span_init_fraction
        init.constant_(self.bias, math.log(fraction / (1 - fraction)))


class RehearsalMemoryExpireSpan(RehearsalMemoryBank):
    """State: `entries` (B, C, D), `position` (B, C) time of each item, `span` (B, C), `valid` (B, C) bool and
    `clock` (B,) the time of the next item."""

    def __init__(self, config):
        super().__init__()
        self.capacity, self.dim = config.memory_capacity, config.memory_dim
        self.max_span, self.ramp = config.expire_span_max_span, config.expire_span_ramp
        self.loss_coef = config.expire_span_loss_coef
        self.item_projection = RehearsalMemoryProjection(config.encoder_config.hidden_size, config.memory_dim)
        self.span_predictor = RehearsalMemorySpanPredictor(config.memory_dim, 1)
        self.age_encoding = RehearsalMemoryAgeEncoding(config.memory_dim)

    def init_state(self, batch_size):
        device = self.span_predictor.weight.device
        zeros = torch.zeros(batch_size, self.capacity, device=device)
        return {
            "entries": torch.zeros(batch_size, self.capacity, self.dim, device=device),
            "position": zeros.long(),
            "span": zeros,
            "valid": zeros.bool(),
            "clock": torch.zeros(batch_size, dtype=torch.long, device=device),
        }

    def remaining(self, state, clock):
        # e_i - (t - i) for a query at time `clock` (B,) -> (B, C)
        return state["span"] - (clock[:, None] - state["position"])

    def write(self, state, items, item_mask, values=None):
        # items (B, S, E), item_mask (B, S) -> entries of real items, timed by their rank among real items
        new = self.item_projection(items)  # (B, S, D)
        span = self.max_span * torch.sigmoid(self.span_predictor(new).squeeze(-1))  # (B, S)
        merged = {
            "entries": torch.cat([state["entries"], new], dim=1),  # (B, C + S, D)
            "position": torch.cat([state["position"], item_positions(state["clock"], item_mask)], dim=1),
            "span": torch.cat([state["span"], span], dim=1),
        }
        clock = state["clock"] + item_mask.sum(1)
        # an entry whose ramp has passed is invisible to every later query: delete it
        remaining = self.remaining(merged, clock)
        merged["valid"] = torch.cat([state["valid"], item_mask], dim=1) & (remaining > -self.ramp)
        # keep the C live entries with the most remaining span (dead ones sort last and end up invalid)
        score = remaining.detach().masked_fill(~merged["valid"], -torch.inf)
        kept = keep_entries(merged, score, self.capacity)
        kept["entries"] = kept["entries"] * kept["valid"][..., None]  # a deleted item leaves nothing behind
        kept["clock"] = clock
        loss_sum = self.loss_coef * (span / self.max_span * item_mask).sum()
        return kept, loss_sum

    def view(self, state, query=None):
        remaining = self.remaining(state, state["clock"])
        weights = (1 + remaining / self.ramp).clamp(0, 1) * state["valid"]  # (B, C) soft ramp
        return self.age_encoding(state["entries"], state["position"], state["clock"]), weights
