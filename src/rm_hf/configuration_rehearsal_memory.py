"""Configuration of Rehearsal Memory models (Zhang et al., "Learning to Rehearse in Long Sequence
Memorization", ICML 2021).

This file is copied next to saved checkpoints for `trust_remote_code=True` loading, so it imports
nothing from `rm_hf`.
"""

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

SAMPLER_MODES = ("uniform", "teacher", "external")
# "rehearsal": K learned slots (the method); the others keep item states: Expire-Span, LaMemo's look-ahead FIFO and
# the lifelong key-value memory of Kaiser et al. (2017). See the memory_*.py files.
MEMORY_TYPES = ("rehearsal", "expire_span", "lamemo", "kv")
STORY_ITEMS = ("tokens", "sentences")

# A tiny BERT: fast enough for tests and for bAbI on a laptop CPU.
DEFAULT_ENCODER = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 128,
    "max_position_embeddings": 512,
    "vocab_size": 1000,
}


@strict
class RehearsalMemoryConfig(PreTrainedConfig):
    r"""
    Configuration of [`RehearsalMemoryModel`] and its task heads.

    The encoder backbone is any Hugging Face encoder, stored as the nested `encoder_config` so a saved
    checkpoint is self-describing. Inputs are token ids (through the encoder's embeddings) or continuous
    item features of size `input_feature_dim` (through a linear projection into `inputs_embeds`).

    Example:

    ```python
    >>> from rm_hf import RehearsalMemoryConfig, RehearsalMemoryModel
    >>> config = RehearsalMemoryConfig(num_memory_slots=8, segment_length=32)
    >>> model = RehearsalMemoryModel(config)
    ```
    """

    model_type = "rehearsal_memory"
    sub_configs_defaults = {
        "encoder_config": SubConfigSpec(config_class=AutoConfig, model_type="bert", init_kwargs=DEFAULT_ENCODER),
    }

    encoder_config: dict | PreTrainedConfig | None = None
    # memory machine
    num_memory_slots: int = 16
    memory_dim: int | None = None  # None: the encoder's hidden size
    num_memory_heads: int = 4
    segment_length: int = 32
    input_feature_dim: int | None = None  # set for feature inputs (video clips, behaviour embeddings)
    initial_memory_std: float | int = 0.5  # slot-distinct M_0; same order as a GRU state in (-1, 1)
    initializer_range: float | int = 0.02
    memory_type: str = "rehearsal"  # one of MEMORY_TYPES
    memory_capacity: int = 128  # entries kept by expire_span, lamemo and kv (the slot memory has num_memory_slots)
    expire_span_max_span: int = 1024  # L: the longest span, in items
    expire_span_ramp: int = 32  # R: items over which an expiring entry fades out
    expire_span_init_fraction: float | int = 0.1  # every span starts at this share of L
    expire_span_loss_coef: float | int = 0.01  # weight of mean(span / L) in memory_loss
    kv_top_k: int = 16  # entries a query retrieves from the key-value memory
    kv_margin: float | int = 0.1  # margin of the key-value memory's loss
    kv_inverse_temperature: float | int = 40.0  # sharpness of the softmax over retrieved cosines
    # question answering head
    num_reasoning_hops: int = 3
    # "tokens": every story token is an item; "sentences": each sentence becomes one item, the position-weighted
    # sum of its word embeddings, written as a feature (much faster to learn on bAbI, see the README)
    story_items: str = "tokens"  # one of STORY_ITEMS
    max_sentence_tokens: int = 16  # longest sentence (or question) with story_items="sentences"
    # click prediction head: behaviour items enter as features [item embedding ; category embedding]
    item_vocab_size: int | None = None  # contiguous item ids, 0 = padding
    category_vocab_size: int | None = None
    behavior_vocab_size: int = 5  # 0 padding, pv, cart, fav, buy
    item_embedding_dim: int = 32
    # self-supervised rehearsal (training only; the modules are not run at inference)
    use_rehearsal: bool = True
    num_rehearsal_fragments: int = 4  # J fragments per sequence
    rehearsal_fragment_length: int = 8  # R consecutive real items per fragment
    rehearsal_mask_ratio: float | int = 0.5  # recollection: share of fragment items masked
    rehearsal_replace_ratio: float | int = 0.5  # familiarity: share of unmasked items replaced in negatives
    rehearsal_hidden_size: int | None = None  # None: memory_dim
    rehearsal_num_layers: int = 2
    rehearsal_num_heads: int = 4
    infonce_temperature: float | int = 0.1  # recollection of feature inputs
    # history sampler: which fragments to rehearse
    sampler_mode: str = "uniform"  # one of SAMPLER_MODES
    sampler_temperature: float | int = 1.0
    sampler_uniform_floor: float | int = 0.1  # share of probability spread uniformly over valid fragments

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.memory_dim is None:
            self.memory_dim = self.encoder_config.hidden_size
        if self.item_vocab_size is not None and self.input_feature_dim is None:
            self.input_feature_dim = 2 * self.item_embedding_dim
        if self.story_items == "sentences" and self.input_feature_dim is None:
            self.input_feature_dim = self.encoder_config.hidden_size
        if self.rehearsal_hidden_size is None:
            self.rehearsal_hidden_size = self.memory_dim
        self.check_values()

    def check_values(self):
        """Raise `ValueError` naming the first field outside its allowed range."""
        positive = (
            "item_embedding_dim",
            "behavior_vocab_size",
            "num_memory_slots",
            "memory_dim",
            "num_memory_heads",
            "segment_length",
            "num_reasoning_hops",
            "max_sentence_tokens",
            "num_rehearsal_fragments",
            "rehearsal_fragment_length",
            "rehearsal_hidden_size",
            "rehearsal_num_layers",
            "rehearsal_num_heads",
            "memory_capacity",
            "expire_span_max_span",
            "expire_span_ramp",
            "kv_top_k",
        )
        for name in positive:
            value = getattr(self, name)
            if value < 1:
                raise ValueError(f"RehearsalMemoryConfig.{name} must be an integer >= 1, got {value}.")
        if self.memory_dim % self.num_memory_heads != 0:
            raise ValueError(
                f"RehearsalMemoryConfig.memory_dim ({self.memory_dim}) must be divisible by "
                f"num_memory_heads ({self.num_memory_heads})."
            )
        if self.input_feature_dim is not None and self.input_feature_dim < 1:
            raise ValueError(
                f"RehearsalMemoryConfig.input_feature_dim must be None (token inputs) or >= 1, "
                f"got {self.input_feature_dim}."
            )
        for name in ("item_vocab_size", "category_vocab_size"):
            if getattr(self, name) is not None and getattr(self, name) < 2:
                raise ValueError(
                    f"RehearsalMemoryConfig.{name} must be None or >= 2 (id 0 is padding), got {getattr(self, name)}."
                )
        max_positions = getattr(self.encoder_config, "max_position_embeddings", None)
        if max_positions is not None and self.segment_length > max_positions:
            raise ValueError(
                f"RehearsalMemoryConfig.segment_length ({self.segment_length}) must be <= the encoder's "
                f"max_position_embeddings ({max_positions})."
            )
        if self.rehearsal_hidden_size % self.rehearsal_num_heads != 0:
            raise ValueError(
                f"RehearsalMemoryConfig.rehearsal_hidden_size ({self.rehearsal_hidden_size}) must be divisible by "
                f"rehearsal_num_heads ({self.rehearsal_num_heads})."
            )
        for name in ("rehearsal_mask_ratio", "rehearsal_replace_ratio"):
            if not 0 < getattr(self, name) <= 1:
                raise ValueError(f"RehearsalMemoryConfig.{name} must lie in (0, 1], got {getattr(self, name)}.")
        if not 0 <= self.sampler_uniform_floor <= 1:
            raise ValueError(
                f"RehearsalMemoryConfig.sampler_uniform_floor must lie in [0, 1], got {self.sampler_uniform_floor}."
            )
        for name in ("sampler_temperature", "infonce_temperature", "kv_inverse_temperature"):
            if getattr(self, name) <= 0:
                raise ValueError(f"RehearsalMemoryConfig.{name} must be > 0, got {getattr(self, name)}.")
        if self.story_items not in STORY_ITEMS:
            raise ValueError(
                f"RehearsalMemoryConfig.story_items must be one of {STORY_ITEMS}, got {self.story_items!r}."
            )
        if self.memory_type not in MEMORY_TYPES:
            raise ValueError(
                f"RehearsalMemoryConfig.memory_type must be one of {MEMORY_TYPES}, got {self.memory_type!r}."
            )
        if not 0 < self.expire_span_init_fraction < 1:
            raise ValueError(
                "RehearsalMemoryConfig.expire_span_init_fraction must lie in (0, 1), "
                f"got {self.expire_span_init_fraction}."
            )
        for name in ("expire_span_loss_coef", "kv_margin"):
            if getattr(self, name) < 0:
                raise ValueError(f"RehearsalMemoryConfig.{name} must be >= 0, got {getattr(self, name)}.")
        if self.sampler_mode not in SAMPLER_MODES:
            raise ValueError(
                f"RehearsalMemoryConfig.sampler_mode must be one of {SAMPLER_MODES}, got {self.sampler_mode!r}."
            )
        if self.initial_memory_std <= 0:
            raise ValueError(f"RehearsalMemoryConfig.initial_memory_std must be > 0, got {self.initial_memory_std}.")

    def validate_rehearsal_memory(self):
        # Runs again inside `save_pretrained`, so a value assigned after construction is caught too.
        self.check_values()


__all__ = ["RehearsalMemoryConfig"]
