"""Building blocks shared by the memory types, the task heads and the click baselines: scaled projections and
embeddings, the behaviour embedding of click prediction, the link from an item to the one before it, multi-head
attention over a weighted set of memory entries, an id range check, and the one weight-initialisation rule.

This file is copied next to saved checkpoints for `trust_remote_code=True`: it imports only torch and transformers.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init


def check_id_range(ids: torch.Tensor, vocab_size: int, name: str, vocabulary: str) -> None:
    """ValueError naming `name` when an id lies outside [0, vocab_size): an embedding lookup would fail deep inside
    PyTorch with an index error that names neither the input nor the vocabulary."""
    if ids.dtype not in (torch.int64, torch.int32):  # the only index types an embedding lookup takes
        raise ValueError(f"`{name}` must be integer ids (torch.long or torch.int), got {ids.dtype}.")
    if ids.numel() and (ids.min() < 0 or ids.max() >= vocab_size):
        raise ValueError(
            f"`{name}` must lie in [0, {vocab_size}) ({vocabulary}), "
            f"got values in [{ids.min().item()}, {ids.max().item()}]."
        )


class RehearsalMemoryProjection(nn.Linear):
    """A linear layer outside the encoder (attention projections, feature and target projections, click scorer),
    initialised with fan-in scaling so it keeps its inputs' scale."""

    def init_weights_from_config(self, config):
        # At the 0.02 default, slot queries barely differ, every slot reads the average item and the slots
        # take long to specialise (bAbI qa1, 400 steps: loss 1.09 with fan-in scaling and gradient clipping,
        # 1.52 with neither; not a clean ablation). For click prediction, 0.02 on the scorer and projections
        # and on the embeddings left behaviour features 1,000 times smaller than the encoder's position
        # embeddings: test AUC 0.55 after 400 steps of the click test task, 0.80-0.96 (four seeds) with
        # these scales.
        init.normal_(self.weight, std=self.in_features**-0.5)
        init.zeros_(self.bias)


class RehearsalMemoryPreviousItemLink(nn.Module):
    """Adds to each item of a segment a learned linear map of the item before it (nothing to a segment's first
    item), so that an item referring back carries what it refers to: "Then they went to the kitchen." gets the
    names of the sentence before it. The segment's encoder could learn this from its position embeddings, but on
    bAbI's coreference tasks it did not (see the README). The map starts at zero, so a new model reads as it would
    without the link and learns how much of the item before to take. Started as the identity (the sum of the two),
    it made RM overfit bAbI task 2 on two seeds of two (49-55% error; from zero 4.7%; README, "Tasks 11 and 13")."""

    def __init__(self, width: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(width, width))

    def init_weights_from_config(self, config):
        init.zeros_(self.weight)

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        # items (A, S, E): A segments of S items, right-padded, so a real item's predecessor is real
        previous = F.pad(items[:, :-1], (0, 0, 1, 0))  # (A, S, E), zeros for each segment's first item
        return items + previous @ self.weight.T


class RehearsalMemoryEmbedding(nn.Embedding):
    """An item, category or behaviour embedding, initialised at unit scale like a normalised input (id 0, padding,
    stays zero)."""

    def init_weights_from_config(self, config):
        init.normal_(self.weight, std=1.0)
        # the slice loses the loaded-weight flag, so check it here (as PreTrainedModel._init_weights does)
        if self.padding_idx is not None and not getattr(self.weight, "_is_hf_initialized", False):
            init.zeros_(self.weight[self.padding_idx])


@torch.no_grad()
def init_weights(model, module: nn.Module) -> None:
    """The one initialisation rule of every model in this package (`_init_weights`): a module that sets its own
    start values defines `init_weights_from_config(config)`; any other gets transformers' defaults.

    `from_pretrained` builds on the meta device, so whatever a checkpoint lacks is set here, never in __init__;
    `transformers.initialization` leaves loaded weights alone.
    """
    if hasattr(module, "init_weights_from_config"):
        module.init_weights_from_config(model.config)
    else:
        PreTrainedModel._init_weights(model, module)


UNKNOWN_IDS = "map unknown ids to 0 with the data's vocabulary"


class RehearsalMemoryBehaviorEmbedding(nn.Module):
    """Behaviours and candidates of click prediction as features: [item embedding ; category embedding], plus a
    behaviour-type embedding for history items. Shared by the click head and its baselines, so every model sees
    the same inputs; ids are checked against their vocabularies first."""

    def __init__(self, config):
        super().__init__()
        if config.item_vocab_size is None or config.category_vocab_size is None:
            raise ValueError("Click prediction needs RehearsalMemoryConfig.item_vocab_size and category_vocab_size.")
        dim = config.item_embedding_dim
        self.item_embeddings = RehearsalMemoryEmbedding(config.item_vocab_size, dim, padding_idx=0)
        self.category_embeddings = RehearsalMemoryEmbedding(config.category_vocab_size, dim, padding_idx=0)
        self.behavior_embeddings = RehearsalMemoryEmbedding(config.behavior_vocab_size, 2 * dim, padding_idx=0)

    def items(self, items, categories=None, names=("target_item", "target_category")) -> torch.Tensor:
        """(...) item ids and their categories (0 when omitted) -> (..., 2 * item_embedding_dim)."""
        categories = categories if categories is not None else torch.zeros_like(items)
        check_id_range(items, self.item_embeddings.num_embeddings, names[0], UNKNOWN_IDS)
        check_id_range(categories, self.category_embeddings.num_embeddings, names[1], UNKNOWN_IDS)
        return torch.cat([self.item_embeddings(items), self.category_embeddings(categories)], dim=-1)

    def history(self, history_items, history_categories=None, history_behaviors=None) -> torch.Tensor:
        """(B, T) behaviour ids -> (B, T, 2 * item_embedding_dim) features."""
        features = self.items(history_items, history_categories, names=("history_items", "history_categories"))
        if history_behaviors is not None:
            check_id_range(
                history_behaviors, self.behavior_embeddings.num_embeddings, "history_behaviors", UNKNOWN_IDS
            )
            features = features + self.behavior_embeddings(history_behaviors)
        return features


def attention_mask_from_weights(key_weights: torch.Tensor, dtype: torch.dtype):
    """(B, N) or (B, Q, N) key visibility -> (SDPA mask (B, 1, Q or 1, N), rows that see nothing (B, 1, Q or 1, 1)).

    Boolean weights hide keys; float weights in [0, 1] scale each key's attention weight before renormalising
    (Expire-Span's soft ramp, top-k retrieval), which is the softmax of the scores plus log(weight). A query that
    sees no key at all (an empty memory) would give NaN; it attends to everything instead and its output is
    zeroed by the caller.
    """
    weights = key_weights[:, None] if key_weights.dim() == 3 else key_weights[:, None, None]
    visible = weights > 0 if weights.is_floating_point() else weights
    blind = ~visible.any(dim=-1, keepdim=True)
    if not weights.is_floating_point():
        return visible | blind, blind
    bias = torch.where(visible, weights.to(dtype).clamp_min(1e-30).log(), -math.inf)
    return bias.masked_fill(blind, 0.0), blind


def set_linear_reading(model: nn.Module, linear: bool) -> None:
    """Switch every reader in `model` (the modules with a `linear_reading` flag: Rehearsal Memory's reader, MemN2N)
    to raw-score attention (True, a linear start) or back to the softmax (False)."""
    for module in model.modules():
        if hasattr(module, "linear_reading"):
            module.linear_reading = linear


class RehearsalMemoryAttention(nn.Module):
    """Multi-head attention from a few queries (memory slots or a question) to a set of keys/values."""

    def __init__(self, query_dim: int, key_dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.q_proj = RehearsalMemoryProjection(query_dim, query_dim)
        self.k_proj = RehearsalMemoryProjection(key_dim, query_dim)
        self.v_proj = RehearsalMemoryProjection(key_dim, query_dim)
        self.o_proj = RehearsalMemoryProjection(query_dim, query_dim)

    def forward(
        self,
        queries: torch.Tensor,
        keys: torch.Tensor,
        key_weights: torch.Tensor | None = None,
        return_log_mass: bool = False,
        linear: bool = False,
    ):
        # queries (B, Q, D), keys (B, N, Dk), key_weights (B, N) or (B, Q, N): bool (True = visible) or float in
        # [0, 1] (see `attention_mask_from_weights`) -> (B, Q, D), and with `return_log_mass` also the log of each
        # head's softmax normaliser, logsumexp over the visible keys' scores (B, h, Q): how strongly a query
        # matches anything at all, which the softmax itself hides. `linear`: weigh each key by its raw score
        # (times its visibility) instead of the softmax, as a reader does during a linear start
        batch, num_queries, dim = queries.shape
        heads = self.num_heads

        def split(x):  # (B, n, D) -> (B, h, n, D/h)
            return x.view(batch, -1, heads, dim // heads).transpose(1, 2)

        q, k, v = split(self.q_proj(queries)), split(self.k_proj(keys)), split(self.v_proj(keys))
        mask = blind = None
        if key_weights is not None and key_weights.dtype == torch.bool and key_weights.all():
            key_weights = None  # every key visible (a full segment): masking the scores would only cost a pass
        if key_weights is not None:
            mask, blind = attention_mask_from_weights(key_weights, q.dtype)
        log_mass = None
        if linear or return_log_mass:  # written out: SDPA has neither raw weights nor its normaliser to give
            scores = q @ k.transpose(-1, -2) * (dim // heads) ** -0.5  # (B, h, Q, N)
        if linear:  # no normaliser: a key's weight grows with its match, so every hop gets gradient from the answer
            if mask is not None:  # the mask is log(visibility) for float weights
                scores = scores * (mask.exp() if mask.is_floating_point() else mask)
            out = scores @ v  # (B, h, Q, D/h)
        elif return_log_mass:
            if mask is not None:
                scores = scores + mask if mask.is_floating_point() else scores.masked_fill(~mask, -math.inf)
            log_mass = scores.logsumexp(-1)  # (B, h, Q)
            out = torch.exp(scores - log_mass.unsqueeze(-1)) @ v  # the softmax, from its normaliser: (B, h, Q, D/h)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, h, Q, D/h)
        if blind is not None:
            out = out.masked_fill(blind, 0.0)
        out = self.o_proj(out.transpose(1, 2).reshape(batch, num_queries, dim))
        return (out, log_mass) if return_log_mass else out
