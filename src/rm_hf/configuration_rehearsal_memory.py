"""Configuration of Rehearsal Memory models (Zhang et al., "Learning to Rehearse in Long Sequence
Memorization", ICML 2021).

This file is copied next to saved checkpoints for `trust_remote_code=True` loading, so it imports
nothing from `rm_hf`.
"""

from typing import Literal, get_args

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

# The memory a sequence is written into; each key names a `memory_<key>.py` file and its class. "slots": K learned
# slots (the method); the others keep item states: Expire-Span, LaMemo's look-ahead FIFO and the lifelong key-value
# memory of Kaiser et al. (2017).
MemoryType = Literal["slots", "expire_span", "lamemo", "key_value"]
MEMORY_TYPES = get_args(MemoryType)
# keys of configs saved before 0.2, when "rehearsal" named the slot memory as well as the training objective
MEMORY_TYPE_ALIASES = {"rehearsal": "slots", "kv": "key_value"}
StoryItems = Literal["tokens", "sentences"]
SentencePositionStart = Literal["memn2n", "uniform"]
SlotAddressing = Literal["content", "key"]
SamplerMode = Literal["uniform", "teacher", "external"]
SAMPLER_MODES = get_args(SamplerMode)

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
    # field names before 0.2
    attribute_map = {"kv_top_k": "key_value_top_k", "kv_margin": "key_value_margin",
                     "kv_inverse_temperature": "key_value_inverse_temperature"}  # fmt: skip
    sub_configs_defaults = {
        "encoder_config": SubConfigSpec(config_class=AutoConfig, model_type="bert", init_kwargs=DEFAULT_ENCODER),
    }

    encoder_config: dict | PreTrainedConfig | None = None
    # memory machine
    num_memory_slots: int = 16
    memory_dim: int | None = None  # None: the encoder's hidden size
    num_memory_heads: int = 4
    segment_length: int = 32
    # truncated back-propagation through the memory: gradients reach back at most this many segment writes (the
    # memory is detached between blocks of them), bounding a long input's activation memory; None: the whole input
    backprop_segments: int | None = None
    # slots: a slot takes a segment in only as far as its attention finds something there (see memory_slots.py);
    # configs saved without this field predate it and load with False, so old checkpoints compute what they did
    slot_write_gate: bool = True
    # slots, with the gate: a relevance at or below this writes nothing (the rest is rescaled to reach 1), so the
    # many segments a slot barely opens for cannot add up to overwriting it over thousands of writes; 0: off. A
    # setting of reading as much as of training: it can be set on a trained model (see memory_slots.py)
    slot_write_threshold: float | int = 0.0
    # slots: what a slot's write attention asks with. "content": the slot's own state (the paper's); "key": a learned
    # vector of the slot's own that writing never changes, so what a slot takes in cannot drift with what it holds
    # (EntNet's keys without content; our choice, see memory_slots.py). Configs without the field load as "content"
    slot_addressing: SlotAddressing = "content"
    input_feature_dim: int | None = None  # set for feature inputs (video clips, behaviour embeddings)
    # each item of a segment gets a learned linear map of the item before it added before the encoder (zero at
    # start), so an item that refers back ("Then they went ...") carries what it refers to; off in configs without it
    link_previous_item: bool = False
    initial_memory_std: float | int = 0.5  # slot-distinct M_0; same order as a GRU state in (-1, 1)
    initializer_range: float | int = 0.02
    memory_type: MemoryType | Literal["rehearsal", "kv"] = "slots"  # the last two: MEMORY_TYPE_ALIASES
    memory_capacity: int = 128  # entries kept by expire_span, lamemo and key_value (slots keep num_memory_slots)
    expire_span_max_span: int = 1024  # L: the longest span, in items
    expire_span_ramp: int = 32  # R: items over which an expiring entry fades out
    expire_span_init_fraction: float | int = 0.1  # every span starts at this share of L
    expire_span_loss_coef: float | int = 0.01  # weight of mean(span / L) in memory_loss
    key_value_top_k: int = 16  # entries a query retrieves from the key-value memory
    key_value_margin: float | int = 0.1  # margin of the key-value memory's loss
    key_value_inverse_temperature: float | int = 40.0  # sharpness of the softmax over retrieved cosines
    # question answering head
    num_reasoning_hops: int = 3
    # each reasoning hop ends with a feed-forward layer (a Transformer block's, 4x wide), so the reader can combine
    # what its hops found nonlinearly (bAbI path finding: which side of a fact the asked place is on decides the
    # direction); off in configs without it, which read by attention and a linear answer only
    reader_feed_forward: bool = False
    # "tokens": every story token is an item; "sentences": each sentence becomes one item, the position-weighted
    # sum of its word embeddings, written as a feature (much faster to learn on bAbI, see the README)
    story_items: StoryItems = "tokens"
    max_sentence_tokens: int = 16  # longest sentence (or question) with story_items="sentences"
    # story_items="sentences": where the learned per-position, per-dimension word weights start. "memn2n": MemN2N's
    # position encoding (Sukhbaatar et al., 2015), so word order tells who gave what to whom from the first step;
    # "uniform": all ones, a bag of words that must learn word order (the start of every model before 2026-12-06)
    sentence_position_start: SentencePositionStart = "memn2n"
    # click prediction head: behaviour items enter as features [item embedding ; category embedding]
    item_vocab_size: int | None = None  # contiguous item ids, 0 = padding
    category_vocab_size: int | None = None
    behavior_vocab_size: int = 5  # 0 padding, pv, cart, fav, buy
    item_embedding_dim: int = 32
    # the rehearsal objective (training only: inference never builds or runs it)
    use_rehearsal: bool = True
    num_rehearsal_fragments: int = 4  # J fragments per sequence
    rehearsal_batch_fraction: float | int = 1.0  # share of a batch's sequences rehearsed per step (cost scales)
    rehearsal_fragment_length: int = 8  # R consecutive real items per fragment
    rehearsal_mask_ratio: float | int = 0.5  # recollection: share of fragment items masked
    rehearsal_replace_ratio: float | int = 0.5  # familiarity: share of unmasked items replaced in negatives
    rehearsal_hidden_size: int | None = None  # None: memory_dim
    rehearsal_num_layers: int = 2
    rehearsal_num_heads: int = 4
    infonce_temperature: float | int = 0.1  # recollection of feature inputs
    # history sampler: which fragments to rehearse
    sampler_mode: SamplerMode = "uniform"
    sampler_temperature: float | int = 1.0
    sampler_uniform_floor: float | int = 0.1  # share of probability spread uniformly over valid fragments

    @classmethod
    def from_dict(cls, config_dict, **kwargs):
        if "transformers_version" in config_dict and "slot_write_gate" not in config_dict:  # saved before the gate
            config_dict = {**config_dict, "slot_write_gate": False}
        return super().from_dict(config_dict, **kwargs)

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        self.memory_type = MEMORY_TYPE_ALIASES.get(self.memory_type, self.memory_type)
        if self.memory_dim is None:
            self.memory_dim = self.encoder_config.hidden_size
        if self.item_vocab_size is not None and self.input_feature_dim is None:
            self.input_feature_dim = 2 * self.item_embedding_dim
        if self.story_items == "sentences" and self.input_feature_dim is None:
            self.input_feature_dim = self.encoder_config.hidden_size
        if self.rehearsal_hidden_size is None:
            self.rehearsal_hidden_size = self.memory_dim

    # Class validators: run once at construction (types and choices are checked field by field before) and again
    # inside `save_pretrained`, so a value assigned later is caught too.
    def validate_sizes(self):
        """Counts and widths: at least 1, divisible by their heads, within the encoder's positions."""
        positive = (
            "item_embedding_dim", "behavior_vocab_size", "num_memory_slots", "memory_dim", "num_memory_heads",
            "segment_length", "num_reasoning_hops", "max_sentence_tokens", "num_rehearsal_fragments",
            "rehearsal_fragment_length", "rehearsal_hidden_size", "rehearsal_num_layers", "rehearsal_num_heads",
            "memory_capacity", "expire_span_max_span", "expire_span_ramp", "key_value_top_k", "input_feature_dim",
            "backprop_segments",
        )  # fmt: skip
        for name in positive:
            if (value := getattr(self, name)) is not None and value < 1:
                raise ValueError(f"RehearsalMemoryConfig.{name} must be >= 1, got {value}.")
        for name in ("item_vocab_size", "category_vocab_size"):
            if (value := getattr(self, name)) is not None and value < 2:
                raise ValueError(f"RehearsalMemoryConfig.{name} must be None or >= 2 (id 0 is padding), got {value}.")
        for width, heads in (("memory_dim", "num_memory_heads"), ("rehearsal_hidden_size", "rehearsal_num_heads")):
            if getattr(self, width) % getattr(self, heads):
                raise ValueError(
                    f"RehearsalMemoryConfig.{width} ({getattr(self, width)}) must be divisible by "
                    f"{heads} ({getattr(self, heads)})."
                )
        max_positions = getattr(self.encoder_config, "max_position_embeddings", None)
        if max_positions is not None and self.segment_length > max_positions:
            raise ValueError(
                f"RehearsalMemoryConfig.segment_length ({self.segment_length}) must be <= the encoder's "
                f"max_position_embeddings ({max_positions})."
            )

    def validate_rates(self):
        """Shares, temperatures and loss coefficients within their ranges."""
        share = (lambda v: 0 < v <= 1, "lie in (0, 1]")
        open_share = (lambda v: 0 < v < 1, "lie in (0, 1)")
        below_one = (lambda v: 0 <= v < 1, "lie in [0, 1)")
        probability = (lambda v: 0 <= v <= 1, "lie in [0, 1]")
        positive = (lambda v: v > 0, "be > 0")
        weight = (lambda v: v >= 0, "be >= 0")
        rules = {
            "rehearsal_mask_ratio": share, "rehearsal_replace_ratio": share, "rehearsal_batch_fraction": share,
            "expire_span_init_fraction": open_share, "slot_write_threshold": below_one,
            "sampler_uniform_floor": probability, "sampler_temperature": positive, "infonce_temperature": positive,
            "key_value_inverse_temperature": positive, "initial_memory_std": positive,
            "expire_span_loss_coef": weight, "key_value_margin": weight,
        }  # fmt: skip
        for name, (allowed, text) in rules.items():
            if not allowed(getattr(self, name)):
                raise ValueError(f"RehearsalMemoryConfig.{name} must {text}, got {getattr(self, name)}.")
        if self.slot_write_threshold and not self.slot_write_gate:
            raise ValueError(
                f"RehearsalMemoryConfig.slot_write_threshold ({self.slot_write_threshold}) thresholds the slot write "
                "gate, which is off (slot_write_gate=False): turn the gate on or leave the threshold at 0."
            )


__all__ = ["RehearsalMemoryConfig"]
