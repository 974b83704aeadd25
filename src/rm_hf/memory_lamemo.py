"""Look-ahead memory (LaMemo; Ji et al., NAACL 2022), `memory_type="lamemo"`.

A FIFO keeps the inputs of the last M = `memory_capacity` real items, each with its cached attention result C and
per-head log-normaliser z. When a segment is written:
1. every memory entry attends to the new items on its right (look-ahead), giving C_new and z_new;
2. the cached and new results are merged as one softmax over both key sets would merge them:
   alpha = exp(z) / (exp(z) + exp(z_new)), C = alpha * C + (1 - alpha) * C_new, z = logaddexp(z, z_new);
3. the new items attend to the memory inputs and to each other, and join the FIFO with their own (C, z).
A reader sees each entry as LayerNorm(input + W_o C) followed by a feed-forward block. The cost per segment is
linear in M; there is no auxiliary loss.

Our choices: one attention block (the paper stacks one per Transformer-XL layer); the look-ahead reads the
whole new segment, since the memory is read only after writing (the paper stops at the current token to keep a
language model causal); recency comes from a learned age encoding instead of relative position biases.
"""

import math

import torch
from torch import nn

from .layers_rehearsal_memory import RehearsalMemoryProjection
from .memory_interface import RehearsalMemoryAgeEncoding, RehearsalMemoryBank, item_positions, keep_entries


class RehearsalMemoryLaMemo(RehearsalMemoryBank):
    """State: `inputs` (B, M, D) item inputs, `context` (B, M, D) cached attention results (heads side by side),
    `log_norm` (B, M, H) float32 log-normalisers, `position` (B, M), `valid` (B, M) bool, `clock` (B,)."""

    def __init__(self, config):
        super().__init__()
        self.capacity, self.dim, self.heads = config.memory_capacity, config.memory_dim, config.num_memory_heads
        dim = config.memory_dim
        self.item_projection = RehearsalMemoryProjection(config.encoder_config.hidden_size, dim)
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = (RehearsalMemoryProjection(dim, dim) for _ in range(4))
        self.attention_norm = nn.LayerNorm(dim)
        self.feed_forward = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.output_norm = nn.LayerNorm(dim)
        self.age_encoding = RehearsalMemoryAgeEncoding(dim)

    def init_state(self, batch_size):
        device = self.q_proj.weight.device
        pair = torch.zeros(batch_size, self.capacity, device=device)
        return {
            "inputs": torch.zeros(batch_size, self.capacity, self.dim, device=device),
            "context": torch.zeros(batch_size, self.capacity, self.dim, device=device),
            "log_norm": torch.zeros(batch_size, self.capacity, self.heads, device=device),
            "position": pair.long(),
            "valid": pair.bool(),
            "clock": torch.zeros(batch_size, dtype=torch.long, device=device),
        }

    def attend(self, queries, keys, key_mask):
        """Attention results (B, Q, D) and per-head log-normalisers (B, Q, H) float32; every row has a real key."""
        batch, heads = queries.shape[0], self.heads

        def split(x):  # (B, n, D) -> (B, H, n, D/H)
            return x.view(batch, x.shape[1], heads, -1).transpose(1, 2)

        q, k, v = split(self.q_proj(queries)), split(self.k_proj(keys)), split(self.v_proj(keys))
        scores = (q @ k.transpose(-1, -2)).float() / math.sqrt(q.shape[-1])  # (B, H, Q, N)
        scores = scores.masked_fill(~key_mask[:, None, None, :], -torch.inf)
        log_norm = scores.logsumexp(-1)  # (B, H, Q)
        out = (scores - log_norm[..., None]).exp().to(v.dtype) @ v  # (B, H, Q, D/H)
        return out.transpose(1, 2).reshape(batch, -1, self.dim), log_norm.transpose(1, 2)

    def write(self, state, items, item_mask, values=None):
        new = self.item_projection(items)  # (B, S, D)
        # 1-2. look-ahead from the memory to the new items, merged with the cached result by the normalisers
        ahead, ahead_norm = self.attend(state["inputs"], new, item_mask)  # (B, M, D), (B, M, H)
        alpha = torch.sigmoid(state["log_norm"] - ahead_norm)[..., None]  # exp(z) / (exp(z) + exp(z_new))
        split = (*ahead.shape[:2], self.heads, -1)
        context = alpha * state["context"].view(split) + (1 - alpha) * ahead.view(split)
        context = context.flatten(2).to(new.dtype)
        log_norm = torch.logaddexp(state["log_norm"], ahead_norm)
        # 3. the new items attend to the memory inputs and to each other
        keys = torch.cat([state["inputs"], new], dim=1)
        key_mask = torch.cat([state["valid"], item_mask], dim=1)
        new_context, new_norm = self.attend(new, keys, key_mask)
        # 4. FIFO: the last M real items stay
        merged = {
            "inputs": torch.cat([state["inputs"], new], dim=1),
            "context": torch.cat([context, new_context], dim=1),
            "log_norm": torch.cat([log_norm, new_norm], dim=1),
            "position": torch.cat([state["position"], item_positions(state["clock"], item_mask)], dim=1),
            "valid": key_mask,
        }
        kept = keep_entries(merged, merged["position"].masked_fill(~key_mask, -1), self.capacity)
        # the log-normalisers of empty entries stay finite (0), so step 2 never meets inf - inf
        kept["log_norm"] = kept["log_norm"].masked_fill(~kept["valid"][..., None], 0.0)
        kept["clock"] = state["clock"] + item_mask.sum(1)
        return kept, None

    def view(self, state, query=None):
        hidden = self.attention_norm(state["inputs"] + self.o_proj(state["context"]))
        entries = self.output_norm(hidden + self.feed_forward(hidden))  # (B, M, D)
        return self.age_encoding(entries, state["position"], state["clock"]), state["valid"]
