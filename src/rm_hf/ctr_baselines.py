"""Click-prediction baselines that read the raw history at request time, to compare with Rehearsal Memory.

Both take the inputs and return the outputs of `RehearsalMemoryForClickPrediction` (loss, logits (B,)), are
built from the same `RehearsalMemoryConfig` (vocabulary sizes, `item_embedding_dim`, `memory_dim` as the MLP
width, `num_memory_heads`) and featurise behaviours the same way, so they train with
`RehearsalMemoryTrainer` unchanged (they have no rehearsal terms) and compare like for like:

- `MeanPoolClickModel`: the mean of the history's behaviour embeddings; blind to which behaviour matters.
- `TargetAttentionClickModel`: DIN-style (Zhou et al., KDD 2018) target attention: the candidate attends
  over every raw behaviour. Multi-head scaled dot-product attention stands in for DIN's MLP activation
  unit [our choice]. A request costs O(history), where a stored memory costs O(K).

Both score `[target, read, target * read]` with an MLP, like the Rehearsal Memory head.
"""

import torch
from transformers import PreTrainedModel
from transformers.utils.generic import can_return_tuple

from .configuration_rehearsal_memory import RehearsalMemoryConfig
from .layers_rehearsal_memory import RehearsalMemoryAttention, RehearsalMemoryBehaviorEmbedding, init_weights
from .modeling_rehearsal_memory import (
    RehearsalMemoryCheckpointMixin,
    RehearsalMemoryClickPredictionOutput,
    RehearsalMemoryForClickPrediction,
    click_scorer,
)
from .rehearsal import task_loss


class ClickBaselinePreTrainedModel(RehearsalMemoryCheckpointMixin, PreTrainedModel):
    """Embeddings, scorer and forward shared by the baselines; subclasses define `read_history`."""

    config: RehearsalMemoryConfig
    base_model_prefix = "click_baseline"
    main_input_name = "history_items"

    def __init__(self, config: RehearsalMemoryConfig):
        super().__init__(config)
        self.embeddings = RehearsalMemoryBehaviorEmbedding(config)  # the Rehearsal Memory head's featurisation
        self.scorer = click_scorer(6 * config.item_embedding_dim, config.memory_dim)

    def _init_weights(self, module):
        init_weights(self, module)  # the Rehearsal Memory head's scales, so every model starts alike

    def read_history(self, history: torch.Tensor, mask: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """history (B, T, 2d), mask (B, T) bool, targets (B, C, 2d) -> what each target reads: (B, C, 2d)."""
        raise NotImplementedError

    def score_candidates(
        self,
        history_items,
        history_categories=None,
        history_behaviors=None,
        attention_mask=None,
        candidate_items=None,
        candidate_categories=None,
    ) -> torch.Tensor:
        """Click logits (B, C) of C candidates per user, reading each user's raw history once."""
        history = self.embeddings.history(history_items, history_categories, history_behaviors)  # (B, T, 2d)
        mask = torch.ones_like(history_items, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        targets = self.embeddings.items(candidate_items, candidate_categories)  # (B, C, 2d)
        read = self.read_history(history, mask, targets)
        return self.scorer(torch.cat([targets, read, targets * read], dim=-1)).squeeze(-1)

    @can_return_tuple
    def forward(
        self,
        history_items: torch.LongTensor | None = None,
        history_categories: torch.LongTensor | None = None,
        history_behaviors: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        target_item: torch.LongTensor | None = None,
        target_category: torch.LongTensor | None = None,
        labels: torch.FloatTensor | None = None,
    ) -> RehearsalMemoryClickPredictionOutput:
        r"""Arguments as for [`RehearsalMemoryForClickPrediction`]: (B, T) histories, (B,) targets and labels."""
        RehearsalMemoryForClickPrediction.check_click_inputs(
            history_items,
            target_item,
            labels,
            history_categories=history_categories,
            history_behaviors=history_behaviors,
            attention_mask=attention_mask,
            target_category=target_category,
        )
        logits = self.score_candidates(
            history_items,
            history_categories,
            history_behaviors,
            attention_mask,
            target_item[:, None],
            None if target_category is None else target_category[:, None],
        ).squeeze(1)  # (B,)
        loss = task_loss(logits, labels) if labels is not None else None
        return RehearsalMemoryClickPredictionOutput(loss=loss, logits=logits)


class MeanPoolClickModel(ClickBaselinePreTrainedModel):
    """Every candidate reads the mean of the history's behaviour embeddings."""

    def __init__(self, config: RehearsalMemoryConfig):
        super().__init__(config)
        self.post_init()

    def read_history(self, history, mask, targets):
        weights = mask.unsqueeze(-1).to(history.dtype)  # (B, T, 1)
        pooled = (history * weights).sum(1) / weights.sum(1).clamp_min(1)  # (B, 2d); an empty history reads 0
        return pooled.unsqueeze(1).expand_as(targets)


class TargetAttentionClickModel(ClickBaselinePreTrainedModel):
    """Every candidate attends over the raw history (DIN-style target attention)."""

    def __init__(self, config: RehearsalMemoryConfig):
        super().__init__(config)
        dim = 2 * config.item_embedding_dim
        if dim % config.num_memory_heads:
            raise ValueError(
                f"2 * item_embedding_dim ({dim}) must be divisible by num_memory_heads ({config.num_memory_heads})."
            )
        self.attention = RehearsalMemoryAttention(dim, dim, config.num_memory_heads)
        self.post_init()

    def read_history(self, history, mask, targets):
        # An empty history would leave nothing to attend to (NaN); it attends to its zero padding item instead.
        empty = ~mask.any(dim=1, keepdim=True)  # (B, 1)
        first = torch.arange(mask.shape[1], device=mask.device) == 0  # (T,)
        return self.attention(targets, history, mask | (empty & first))  # (B, C, 2d)


__all__ = ["ClickBaselinePreTrainedModel", "MeanPoolClickModel", "TargetAttentionClickModel"]
