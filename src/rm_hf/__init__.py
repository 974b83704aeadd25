"""rm_hf: Rehearsal Memory (Zhang et al., ICML 2021) as Hugging Face transformers models.

Importing the package registers the config and every model class with the Auto classes, so
`AutoModel.from_pretrained(checkpoint)` works without `trust_remote_code=True`.
"""

from transformers import AutoConfig, AutoModel, AutoModelForQuestionAnswering

from .configuration_rehearsal_memory import RehearsalMemoryConfig
from .ctr_baselines import MeanPoolClickModel, TargetAttentionClickModel
from .memory_store import UserMemoryStore
from .modeling_rehearsal_memory import (
    RehearsalMemoryClickPredictionOutput,
    RehearsalMemoryForClickPrediction,
    RehearsalMemoryForQuestionAnswering,
    RehearsalMemoryModel,
    RehearsalMemoryModelOutput,
    RehearsalMemoryPreTrainedModel,
    RehearsalMemoryQuestionAnsweringOutput,
)

AutoConfig.register(RehearsalMemoryConfig.model_type, RehearsalMemoryConfig, exist_ok=True)
AutoModel.register(RehearsalMemoryConfig, RehearsalMemoryModel, exist_ok=True)
AutoModelForQuestionAnswering.register(RehearsalMemoryConfig, RehearsalMemoryForQuestionAnswering, exist_ok=True)

# Saved checkpoints carry `auto_map` and a copy of the code, for `trust_remote_code=True` without rm_hf.
RehearsalMemoryConfig.register_for_auto_class()
RehearsalMemoryModel.register_for_auto_class("AutoModel")
RehearsalMemoryForQuestionAnswering.register_for_auto_class("AutoModelForQuestionAnswering")

__version__ = "0.1.0"

__all__ = [
    "MeanPoolClickModel",
    "TargetAttentionClickModel",
    "UserMemoryStore",
    "RehearsalMemoryClickPredictionOutput",
    "RehearsalMemoryForClickPrediction",
    "RehearsalMemoryConfig",
    "RehearsalMemoryForQuestionAnswering",
    "RehearsalMemoryQuestionAnsweringOutput",
    "RehearsalMemoryModel",
    "RehearsalMemoryModelOutput",
    "RehearsalMemoryPreTrainedModel",
]
