"""Lifelong key-value memory (Kaiser, Nachum, Roy and Bengio, "Learning to Remember Rare Events", ICLR 2017),
`memory_type="key_value"`.

Each sequence has N = `memory_capacity` entries of a unit-length key, a discrete value and an age. Every real item
is written in turn: its key is q = normalize(W h); the nearest key (cosine) is found; if its value equals the
item's value the key moves to normalize(q + key) and its age resets, otherwise q and the value overwrite the
oldest entry (empty entries first). All other ages grow by one. Writing also gives the margin loss
max(0, q.k_neg - q.k_pos + margin) between the nearest key with the item's value and the nearest with another.

Values are ids the task provides: token ids for token inputs, each sentence's last word with
`story_items="sentences"` (the place or object of a bAbI fact), item ids for click histories. A reader sees each
entry as embedding(value) + projection(key); a query retrieves its `key_value_top_k` nearest keys and weights them by
softmax(key_value_inverse_temperature * cosine), so the heads stay differentiable (the embedding read-out is our
deviation from the paper's hard read). The search is exact over the N entries; the paper's top-k pool only
matters for speed at its memory sizes. Ages break ties by entry index, not by random noise, so writing is
deterministic and streaming equals one pass.
"""

import torch
import torch.nn.functional as F
from torch import nn

from .layers_rehearsal_memory import RehearsalMemoryProjection
from .memory_interface import RehearsalMemoryBank


class RehearsalMemoryKeyValue(RehearsalMemoryBank):
    """State: `keys` (B, N, D) unit vectors, `values` (B, N) ids (-1 = empty) and `age` (B, N)."""

    takes_values = True

    def __init__(self, config):
        super().__init__()
        self.capacity, self.dim = config.memory_capacity, config.memory_dim
        self.top_k, self.margin = config.key_value_top_k, config.key_value_margin
        self.inverse_temperature = config.key_value_inverse_temperature
        self.value_vocab_size = config.item_vocab_size or config.encoder_config.vocab_size
        self.key_projection = RehearsalMemoryProjection(config.encoder_config.hidden_size, config.memory_dim)
        self.query_projection = RehearsalMemoryProjection(config.memory_dim, config.memory_dim)
        self.value_embeddings = nn.Embedding(self.value_vocab_size, config.memory_dim)
        self.entry_projection = RehearsalMemoryProjection(config.memory_dim, config.memory_dim)

    def init_state(self, batch_size):
        device = self.key_projection.weight.device
        return {
            "keys": torch.zeros(batch_size, self.capacity, self.dim, device=device),
            "values": torch.full((batch_size, self.capacity), -1, dtype=torch.long, device=device),
            "age": torch.zeros(batch_size, self.capacity, device=device),
        }

    def write(self, state, items, item_mask, values=None):
        queries = F.normalize(self.key_projection(items), dim=-1)  # (B, S, D)
        keys, stored, age = state["keys"], state["values"], state["age"]
        rows = torch.arange(keys.shape[0], device=keys.device)
        loss_sum = queries.new_zeros(())
        for step in range(queries.shape[1]):  # one item after another: each write sees the previous ones
            query, value, real = queries[:, step], values[:, step], item_mask[:, step]  # (B, D), (B,), (B,)
            filled = stored >= 0
            similarity = torch.einsum("bnd,bd->bn", keys, query)  # (B, N)
            same = filled & (stored == value[:, None])
            other = filled & ~same
            positive = similarity.masked_fill(~same, -2).amax(-1)  # cosines lie in [-1, 1]
            negative = similarity.masked_fill(~other, -2).amax(-1)
            scored = real & same.any(-1) & other.any(-1)
            loss_sum = loss_sum + (F.relu(negative - positive + self.margin) * scored).sum()

            nearest = similarity.masked_fill(~filled, -2).argmax(-1)  # (B,)
            hit = real & filled.any(-1) & (stored[rows, nearest] == value)
            oldest = age.masked_fill(~filled, torch.inf).argmax(-1)  # empty entries first
            slot = torch.where(hit, nearest, oldest)
            chosen = F.one_hot(slot, self.capacity).bool() & real[:, None]  # (B, N)
            new_key = torch.where(hit[:, None], F.normalize(query + keys[rows, nearest], dim=-1), query)
            keys = torch.where(chosen[..., None], new_key[:, None], keys)
            stored = torch.where(chosen, value[:, None], stored)
            age = torch.where(chosen, 0.0, age + real[:, None])
        return {"keys": keys, "values": stored, "age": age}, loss_sum

    def view(self, state, query=None):
        filled = state["values"] >= 0
        entries = self.value_embeddings(state["values"].clamp_min(0)) + self.entry_projection(state["keys"])
        if query is None:
            return entries, filled
        # the query's k nearest keys, weighted by a softmax of their cosines: (B, N) or (B, Q, N)
        q = F.normalize(self.query_projection(query), dim=-1)
        keys = state["keys"] if query.dim() == 2 else state["keys"][:, None]
        similarity = (keys @ q.unsqueeze(-1)).squeeze(-1)
        similarity = similarity.masked_fill(~(filled if query.dim() == 2 else filled[:, None]), -torch.inf)
        top = similarity.topk(min(self.top_k, self.capacity), dim=-1)
        scores = torch.full_like(similarity, -torch.inf).scatter(-1, top.indices, top.values)
        # an empty memory has no finite score: its row gets zero weights (a softmax over -inf alone is NaN)
        blind = ~torch.isfinite(scores).any(-1, keepdim=True)
        weights = torch.softmax(self.inverse_temperature * scores.masked_fill(blind, 0.0), dim=-1)
        return entries, weights.masked_fill(blind, 0.0)
