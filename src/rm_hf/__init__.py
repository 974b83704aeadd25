"""rm_hf: Rehearsal Memory (Zhang et al., ICML 2021) as Hugging Face transformers models.

A model reads a long input once, segment by segment, into a fixed-size memory, and answers any number of later
queries from the memory alone. Heads: `RehearsalMemoryForQuestionAnswering` (stories and questions) and
`RehearsalMemoryForClickPrediction` (behaviour histories and candidate items); `RehearsalMemoryModel` is the memory
itself. Train them with `RehearsalMemoryTrainer` / `RehearsalTrainingArguments` (or `examples/run_qa.py`,
`examples/run_ctr.py`).

From a trained folder to answers (README.md, "Quick start" and "Using the models"):

    from transformers import pipeline
    qa = pipeline("rehearsal-memory-qa", model="outputs/qa", trust_remote_code=True)
    qa("Alice went to the kitchen. Bob went to the garden.", ["Where is Alice?", "Where is Bob?"])

Importing the package registers the config and the models with the Auto classes (so `AutoModel.from_pretrained`
needs no `trust_remote_code=True`) and the pipelines "rehearsal-memory-qa" and "rehearsal-memory-click" with
transformers' pipeline registry. Saved checkpoints carry a copy of the code, so they also load without rm_hf.
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
from .pipeline_rehearsal_memory import (
    RehearsalMemoryClickPipeline,
    RehearsalMemoryQuestionAnsweringPipeline,
    register_pipelines,
)
from .qa_baselines import MemN2NForQuestionAnswering

AutoConfig.register(RehearsalMemoryConfig.model_type, RehearsalMemoryConfig, exist_ok=True)
AutoModel.register(RehearsalMemoryConfig, RehearsalMemoryModel, exist_ok=True)
AutoModelForQuestionAnswering.register(RehearsalMemoryConfig, RehearsalMemoryForQuestionAnswering, exist_ok=True)

# Saved checkpoints carry `auto_map` and a copy of the code, for `trust_remote_code=True` without rm_hf.
RehearsalMemoryConfig.register_for_auto_class()
RehearsalMemoryModel.register_for_auto_class("AutoModel")
RehearsalMemoryForQuestionAnswering.register_for_auto_class("AutoModelForQuestionAnswering")

# pipeline("rehearsal-memory-qa" | "rehearsal-memory-click", model=...)
register_pipelines()

__version__ = "0.1.0"

# The Trainer classes are imported on first use: `transformers.Trainer` is slow to import and inference needs none.
_LAZY = {"RehearsalMemoryTrainer": "trainer", "RehearsalTrainingArguments": "trainer"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_LAZY])


__all__ = [
    "MeanPoolClickModel",
    "MemN2NForQuestionAnswering",
    "TargetAttentionClickModel",
    "UserMemoryStore",
    "RehearsalMemoryClickPipeline",
    "RehearsalMemoryClickPredictionOutput",
    "RehearsalMemoryForClickPrediction",
    "RehearsalMemoryConfig",
    "RehearsalMemoryForQuestionAnswering",
    "RehearsalMemoryQuestionAnsweringOutput",
    "RehearsalMemoryQuestionAnsweringPipeline",
    "RehearsalMemoryModel",
    "RehearsalMemoryModelOutput",
    "RehearsalMemoryPreTrainedModel",
    "RehearsalMemoryTrainer",
    "RehearsalTrainingArguments",
]
