"""Rehearsal Memory models (Zhang et al., ICML 2021, arXiv 2106.01096).

The memory machine G (`RehearsalMemoryModel`) reads a long input once, segment by segment, into a fixed-size
memory and forgets the input; task heads answer from the memory alone, so query cost does not depend on the
input length. Each head owns its two halves, `write(memory, raw inputs)` and a reader (`answer` / `score`), and
in training holds the rehearsal objective (`rehearsal.RehearsalMemoryObjective`): its `forward` is
write -> read -> task loss -> objective. Notable choices:
- a pluggable Hugging Face encoder backbone encodes each segment (token ids through its embeddings,
  continuous features through a linear projection into `inputs_embeds`);
- the memory itself is pluggable (`config.memory_type`, the module `bank`; see `memory_interface`): the
  Rehearsal Memory slots (`memory_slots`, the default) or Expire-Span, LaMemo and the lifelong key-value
  memory, all read by the same heads and rehearsed by the same objective;
- `write(memory, chunk)` and the whole-sequence `forward` share one code path, so streaming a sequence
  gives exactly the memory of one pass.

This file is copied next to saved checkpoints for `trust_remote_code=True`: it imports only torch,
transformers and single-dot siblings.
"""

import os
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, PreTrainedModel
from transformers import initialization as init
from transformers.dynamic_module_utils import custom_object_save
from transformers.modeling_utils import load_state_dict
from transformers.utils import ModelOutput
from transformers.utils.generic import can_return_tuple

from .configuration_rehearsal_memory import RehearsalMemoryConfig
from .layers_rehearsal_memory import (
    RehearsalMemoryAttention,
    RehearsalMemoryBehaviorEmbedding,
    RehearsalMemoryEmbedding,
    RehearsalMemoryPreviousItemLink,
    RehearsalMemoryProjection,
    check_id_range,
    init_weights,
)
from .memory_expire_span import RehearsalMemoryExpireSpan
from .memory_interface import detach_memory, reorder_memory, replace_rows
from .memory_key_value import RehearsalMemoryKeyValue
from .memory_lamemo import RehearsalMemoryLaMemo
from .memory_slots import RehearsalMemorySlots
from .pipeline_rehearsal_memory import custom_pipeline_for
from .rehearsal import RehearsalMemoryObjective, task_loss

MEMORY_CLASSES = {
    "slots": RehearsalMemorySlots,
    "expire_span": RehearsalMemoryExpireSpan,
    "lamemo": RehearsalMemoryLaMemo,
    "key_value": RehearsalMemoryKeyValue,
}

# Segments encoded per encoder call (`_encode_segments`): one call instead of one per segment, while what a call
# holds stays bounded however long the input (a streamed million-token input is still encoded a block at a time).
SEGMENTS_PER_ENCODER_CALL = 64

# Weight names of earlier checkpoints -> today's (None: no longer kept). First match wins.
RENAMED_WEIGHTS = [
    # before memory types (0.1): the slot memory's weights at the top of the base model
    (re.compile(r"^((?:rehearsal_memory\.)?)(initial_memory$|writer\.)"), r"\1bank.\2"),
    # before 0.2: the memory type module was `memory`, the rehearsal objective lived in the base model and the head
    (re.compile(r"^((?:rehearsal_memory\.)?)memory\."), r"\1bank."),
    (re.compile(r"^rehearsal_memory\.rehearser\."), "rehearsal.rehearser."),
    (re.compile(r"^rehearsal_memory\.history_sampler\.teacher_query\."), "rehearsal.teacher.query_projection."),
    # the teacher sampler once drew from a query-agnostic scorer (training only, no longer built)
    (re.compile(r"^(rehearsal_memory\.history_sampler|rehearsal\.sampler)\.scorer\."), None),
    (re.compile(r"^teacher_head\."), "rehearsal.teacher.head."),
    (re.compile(r"^(rehearser|history_sampler)\."), None),  # a base model's training-only modules
    (re.compile(r"^(item|category|behavior)_embeddings\."), r"embeddings.\1_embeddings."),  # click models
]


def renamed_weight(name: str) -> str | None:
    for pattern, replacement in RENAMED_WEIGHTS:
        if pattern.match(name):
            return None if replacement is None else pattern.sub(replacement, name)
    return name


def damaged_weights_file(checkpoint, subfolder: str = "") -> str | None:
    """The first safetensors file of a local checkpoint folder that does not open (truncated or corrupt), if any."""
    folder = os.path.join(checkpoint, subfolder) if checkpoint is not None else None
    if folder is None or not os.path.isdir(folder):
        return None
    for name in sorted(os.listdir(folder)):
        if name.endswith(".safetensors"):
            try:
                load_state_dict(os.path.join(folder, name), map_location="meta")  # reads the header only
            # safetensors' own error type cannot be imported here: this file ships with checkpoints and
            # imports only torch and transformers
            except Exception:  # noqa: BLE001
                return os.path.join(folder, name)
    return None


def renamed_state_dict(checkpoint, subfolder: str = "") -> dict[str, torch.Tensor] | None:
    """The weights of a local single-file checkpoint saved with earlier weight names, under today's names
    (`RENAMED_WEIGHTS`); None for any other checkpoint."""
    path = os.path.join(checkpoint, subfolder, "model.safetensors") if checkpoint is not None else None
    if path is None or not os.path.isfile(path):
        return None
    try:
        names = load_state_dict(path, map_location="meta").keys()  # reads the header only
    except Exception:  # noqa: BLE001 - a damaged file is reported by from_pretrained
        return None
    if all(renamed_weight(name) == name for name in names):
        return None
    renamed = ((renamed_weight(name), weight) for name, weight in load_state_dict(path).items())
    return {name: weight for name, weight in renamed if name is not None}


class RehearsalMemoryCheckpointMixin:
    """`from_pretrained` that also loads checkpoints saved under earlier weight names, and names a damaged weights
    file (transformers reports "Error while deserializing header" without saying which file)."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        subfolder = kwargs.get("subfolder", "")
        renamed = renamed_state_dict(pretrained_model_name_or_path, subfolder)
        if renamed is not None and "state_dict" not in kwargs:
            config = kwargs.pop("config", None) or cls.config_class.from_pretrained(
                pretrained_model_name_or_path, subfolder=subfolder
            )
            kwargs.pop("subfolder", None)
            return super().from_pretrained(None, *args, config=config, state_dict=renamed, **kwargs)
        try:
            return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        except Exception as error:
            damaged = damaged_weights_file(pretrained_model_name_or_path, subfolder)
            if damaged is None:
                raise
            raise ValueError(
                f"{damaged}: cannot read the weights, the file is truncated or corrupt ({error})."
            ) from error


def memn2n_position_encoding(num_positions: int, dim: int) -> torch.Tensor:
    """MemN2N's position encoding (Sukhbaatar et al., 2015, section 4.1) for sentences of `num_positions` words,
    (num_positions, dim): word j of J weighs dimension k by (1 - j/J) - (k/d)(1 - 2j/J), so the same words in
    another order sum to another vector. J is the longest sentence, not each sentence's own length: the weights
    are per position and learned from there."""
    j = torch.arange(1, num_positions + 1, dtype=torch.float32).unsqueeze(1) / num_positions  # (J, 1)
    k = torch.arange(1, dim + 1, dtype=torch.float32) / dim  # (d,)
    return (1 - j) - k * (1 - 2 * j)


class RehearsalMemorySentenceEncoder(nn.Module):
    """A sentence as one item (`story_items="sentences"`): the sum of its word embeddings, each weighted by a
    learned vector for its position in the sentence (MemN2N's position encoding, learned from there by default:
    `config.sentence_position_start`). Word order inside a sentence survives, and who-did-what is bound within the
    item, which a token-level encoder trained from scratch learns only slowly."""

    def __init__(self, config: RehearsalMemoryConfig):
        super().__init__()
        self.max_tokens = config.max_sentence_tokens
        # the encoder's padding id, so the story's and the question's padding embed to zero
        padding = getattr(config.encoder_config, "pad_token_id", None) or 0
        self.word_embeddings = RehearsalMemoryEmbedding(
            config.encoder_config.vocab_size, config.input_feature_dim, padding_idx=padding
        )
        self.position_weights = nn.Parameter(torch.empty(config.max_sentence_tokens, config.input_feature_dim))

    def init_weights_from_config(self, config):
        if config.sentence_position_start == "uniform":
            init.ones_(self.position_weights)  # a bag of words
        else:
            init.copy_(self.position_weights, memn2n_position_encoding(*self.position_weights.shape))

    def forward(self, sentence_ids: torch.Tensor, name: str) -> torch.Tensor:
        # sentence_ids (..., W) padded with the pad id -> (..., D)
        if sentence_ids.shape[-1] > self.max_tokens:
            raise ValueError(
                f"`{name}` has sentences of {sentence_ids.shape[-1]} tokens; at most "
                f"{self.max_tokens} (RehearsalMemoryConfig.max_sentence_tokens)."
            )
        check_id_range(sentence_ids, self.word_embeddings.num_embeddings, name, "the encoder's vocabulary")
        words = self.word_embeddings(sentence_ids)  # (..., W, D)
        return (words * self.position_weights[: sentence_ids.shape[-1]]).sum(-2)


class RehearsalMemoryReaderFeedForward(nn.Module):
    """The feed-forward half of a Transformer block, residual and normalised, ending a reasoning hop."""

    def __init__(self, dim: int):
        super().__init__()
        self.up = RehearsalMemoryProjection(dim, 4 * dim)
        self.down = RehearsalMemoryProjection(4 * dim, dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        return self.norm(state + self.down(F.gelu(self.up(state))))


class RehearsalMemoryReader(nn.Module):
    """Reads the memory with a query: a few hops of query-to-slot attention, each refining the query (and with
    `config.reader_feed_forward`, each followed by a feed-forward layer). `linear_reading` (set by the Trainer during
    a linear start, `RehearsalTrainingArguments.linear_start_steps`) weighs the entries by raw scores instead."""

    def __init__(self, config: RehearsalMemoryConfig):
        super().__init__()
        dim, hops = config.memory_dim, config.num_reasoning_hops
        self.hops = nn.ModuleList(RehearsalMemoryAttention(dim, dim, config.num_memory_heads) for _ in range(hops))
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(hops))
        self.feed_forwards = nn.ModuleList(
            RehearsalMemoryReaderFeedForward(dim) if config.reader_feed_forward else nn.Identity() for _ in range(hops)
        )
        self.linear_reading = False

    def forward(self, query: torch.Tensor, entries: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        # query (B, D) or (B, C, D), entries (B, N, D) with weights (B, N) / (B, C, N) from a memory's `view` ->
        # the query's shape. C queries about one memory (several click candidates) are read together; each
        # attends to the entries on its own, as if read alone.
        state = query if query.dim() == 3 else query.unsqueeze(1)  # (B, C, D)
        for attention, norm, feed_forward in zip(self.hops, self.norms, self.feed_forwards):
            state = feed_forward(norm(state + attention(state, entries, weights, linear=self.linear_reading)))
        return state if query.dim() == 3 else state.squeeze(1)


@dataclass
class RehearsalMemoryModelOutput(ModelOutput):
    """
    Args:
        memory_loss (`torch.FloatTensor` of shape `()`, *optional*):
            The memory type's own loss, averaged over the items written (Expire-Span's span loss, the key-value
            memory's margin loss); None for the others.
        memory (`torch.FloatTensor` of shape `(batch_size, num_memory_slots, memory_dim)`, or a dict of tensors):
            The memory after reading the whole input: the slots for `memory_type="slots"`, the memory type's
            state (a dict of per-sequence tensors) for the others.
        item_features (`torch.FloatTensor` of shape `(batch_size, sequence_length, encoder_hidden_size)`, *optional*):
            Encoder features of every item, segment by segment; returned with `output_item_features=True`.
    """

    # memory_loss comes first: ModelOutput unpacks a dict given as the only non-None first field into fields
    memory_loss: torch.FloatTensor | None = None
    memory: torch.FloatTensor | dict | None = None
    item_features: torch.FloatTensor | None = None


class RehearsalMemoryPreTrainedModel(RehearsalMemoryCheckpointMixin, PreTrainedModel):
    config: RehearsalMemoryConfig
    base_model_prefix = "rehearsal_memory"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _no_split_modules = ["RehearsalMemoryWriter"]

    def save_pretrained(self, save_directory, *args, **kwargs):
        # Every checkpoint also loads as its base through `AutoModel`, installed or as remote code, heads
        # without an Auto class of their own (click prediction) included. A head's checkpoint also ships its
        # pipeline (`pipeline_rehearsal_memory.py`, named in config.json's `custom_pipelines`), so
        # `pipeline(task, model=path, trust_remote_code=True)` works without rm_hf; the click pipeline loads the
        # head itself from `architectures`, since the head has no Auto class.
        shipping_code = RehearsalMemoryModel._auto_class is not None  # set by `import rm_hf`
        shipped_pipeline = custom_pipeline_for(type(self).__name__) if shipping_code else None
        if shipping_code:
            entry = f"{__name__.rsplit('.', 1)[-1]}.RehearsalMemoryModel"
            self.config.auto_map = {**(getattr(self.config, "auto_map", None) or {}), "AutoModel": entry}
            if shipped_pipeline is not None:
                self.config.custom_pipelines = shipped_pipeline[1]
            elif hasattr(self.config, "custom_pipelines"):  # a base model sharing its head's config
                del self.config.custom_pipelines
        super().save_pretrained(save_directory, *args, **kwargs)
        if shipping_code and self._auto_class is None:
            custom_object_save(self, save_directory)  # copy the code the `auto_map` entry points to
        if shipped_pipeline is not None:
            custom_object_save(shipped_pipeline[0], save_directory)  # the pipeline file `custom_pipelines` names

    def _init_weights(self, module):
        init_weights(self, module)

    @property
    def rehearsing(self) -> bool:
        """Whether `forward` runs the rehearsal objective: in training, for a head that holds one."""
        return self.training and getattr(self, "rehearsal", None) is not None

    @property
    def rehearsal_reads_features(self) -> bool:
        """Whether `forward` asks the memory machine for item features: the teacher sampler reads them."""
        return self.rehearsing and self.rehearsal.teacher is not None

    def head_output(self, output_class, logits, labels, written, story, query, fragment_weights):
        """A head's output: the task loss given labels and, in training, the rehearsal terms and the memory type's
        own loss. `written` is the memory machine's output for `story`, `query` the head's query."""
        rehearsal = (
            self.rehearsal(self.rehearsal_memory, written, story, query, labels, fragment_weights)
            if self.rehearsing
            else None
        )
        return output_class(
            loss=task_loss(logits, labels) if labels is not None else None,
            logits=logits,
            **(rehearsal.loss_terms() if rehearsal is not None else {}),
            memory_loss=written.memory_loss if self.training else None,
        )


class RehearsalMemoryModel(RehearsalMemoryPreTrainedModel):
    """The memory machine G(X) -> M, and nothing else: `forward` reads a whole sequence, `init_memory` + `write`
    stream it. The memory type (`config.memory_type`) is the module `bank`; what a memory holds for a batch of
    sequences (its state) is what `forward` and `write` return and take."""

    # Loaded from a head's checkpoint (AutoModel, and the click pipeline on its way to the head), the base leaves
    # the head's own modules unused by design: no "unexpected weights" report for them. (The heads inherit the
    # patterns; for a head these are its own weights, so only another head's or training-only modules go unreported.)
    _keys_to_ignore_on_load_unexpected = [
        r"^(embeddings|target_projection|sentence_encoder|question_projection|reader|classifier|scorer|rehearsal)\."
    ]

    def __init__(self, config: RehearsalMemoryConfig, encoder: PreTrainedModel | None = None):
        super().__init__(config)
        self.encoder = encoder if encoder is not None else AutoModel.from_config(config.encoder_config)
        # The pooler is never used; left in, its parameters get no gradient and DDP without
        # find_unused_parameters (e.g. under activation checkpointing) fails.
        if getattr(self.encoder, "pooler", None) is not None:
            self.encoder.pooler = None
        hidden = config.encoder_config.hidden_size
        self.feature_projection = (
            RehearsalMemoryProjection(config.input_feature_dim, hidden)
            if config.input_feature_dim is not None
            else None
        )
        self.previous_item_link = RehearsalMemoryPreviousItemLink(hidden) if config.link_previous_item else None
        self.bank = MEMORY_CLASSES[config.memory_type](config)
        self.post_init()

    @classmethod
    def from_encoder_pretrained(cls, encoder_name_or_path: str, **config_kwargs):
        """Build a fresh model around a pretrained Hugging Face encoder (local path or Hub id).

        The encoder is loaded outside `__init__`: loading inside it breaks under `from_pretrained`, which
        builds models on the meta device.
        """
        encoder = AutoModel.from_pretrained(encoder_name_or_path)
        config = RehearsalMemoryConfig(encoder_config=encoder.config, **config_kwargs)
        return cls(config, encoder=encoder)

    def get_input_embeddings(self):
        return self.encoder.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.encoder.set_input_embeddings(value)

    def init_memory(self, batch_size: int):
        """The empty memory of `batch_size` sequences: the learned initial slots M_0 (batch_size, K, memory_dim)
        for `memory_type="slots"`, the memory type's empty state (a dict of tensors) for the others."""
        return self.bank.init_state(batch_size)

    def check_memory(self, memory, batch_size: int) -> None:
        """ValueError unless `memory` is this model's memory state for `batch_size` sequences."""
        self.bank.check_state(memory, batch_size)

    def view_memory(self, memory, query=None):
        """What a reader attends to: entries (B, N, memory_dim) and their weights (None, (B, N) or, given a query
        (B, C, D), (B, C, N)); see `RehearsalMemoryBank.view`."""
        return self.bank.view(memory, query)

    @staticmethod
    def reorder_memory(memory, index: torch.Tensor):
        """The memories of the sequences `index` (1-D): e.g. `torch.zeros(n, dtype=torch.long)` repeats the first
        memory n times, to ask it n questions at once. Works for every memory type."""
        return reorder_memory(memory, index)

    def embed_items(self, input_ids=None, input_features=None) -> torch.Tensor:
        """Context-free item embeddings fed to the encoder: (B, T) ids or (B, T, F) features -> (B, T, E)."""
        if input_features is not None:
            return self.feature_projection(input_features)
        return self.get_input_embeddings()(input_ids)

    def write(self, memory, input_ids=None, input_features=None, attention_mask=None, memory_values=None):
        """Write a chunk of a sequence into `memory` (None: the initial memory), segment by segment, and return the
        new memory."""
        written = self(input_ids, input_features, attention_mask, memory, memory_values, return_dict=True)
        return written.memory

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        input_features: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        memory: torch.FloatTensor | dict | None = None,
        memory_values: torch.LongTensor | None = None,
        output_item_features: bool = False,
    ) -> RehearsalMemoryModelOutput:
        r"""
        input_ids (`torch.LongTensor` of shape `(batch_size, sequence_length)`):
            Token ids of the input sequence. Give either these or `input_features`.
        input_features (`torch.FloatTensor` of shape `(batch_size, sequence_length, input_feature_dim)`):
            Continuous item features (video clip features, behaviour embeddings).
        attention_mask (`torch.Tensor` of shape `(batch_size, sequence_length)`):
            1 for real items, 0 for padding. Pad on the right: segments start at position 0.
        memory (`torch.FloatTensor` of shape `(batch_size, num_memory_slots, memory_dim)`, or a dict of tensors):
            Memory to continue writing into (a memory type's state for the others than `slots`); the initial
            memory when omitted.
        memory_values (`torch.LongTensor` of shape `(batch_size, sequence_length)`):
            One id per item for `memory_type="key_value"` (the values it stores); the token ids when omitted.
        output_item_features (`bool`):
            Also return per-item encoder features (the teacher sampler reads them).
        """
        inputs = self._check_inputs(memory, input_ids, input_features, attention_mask)
        batch_size, length = inputs.shape[:2]
        if attention_mask is None:
            attention_mask = torch.ones(batch_size, length, dtype=torch.long, device=inputs.device)
        if self.bank.takes_values:
            memory_values = self._check_values(memory_values, input_ids, inputs.shape[:2])
        if memory is None:
            memory = self.init_memory(batch_size)
        segment, truncate = self.config.segment_length, self.config.backprop_segments
        loss_sum, features = None, []
        block = segment * SEGMENTS_PER_ENCODER_CALL
        for block_start in range(0, length, block):
            span = slice(block_start, block_start + block)
            # (B, n, S, E) features, (B, n, S) mask
            items, mask = self._encode_segments(inputs[:, span], attention_mask[:, span].bool())
            values = None
            if memory_values is not None:  # (B, n, S), padded like the items
                values = memory_values[:, span]
                values = nn.functional.pad(values, (0, mask.shape[1] * segment - values.shape[1])).view(mask.shape)
            # unbind, not items[:, offset]: the backward of each such slice would allocate (and the engine add) a
            # zero gradient the size of the whole block, a cost quadratic in the number of segments
            segment_items, segment_masks = items.unbind(1), mask.unbind(1)
            reads = self.bank.read_segments(items, mask)  # what the writes read, when that needs no memory
            reads = None if reads is None else {name: tensor.unbind(1) for name, tensor in reads.items()}
            for offset in range(items.shape[1]):
                index = block_start // segment + offset
                if truncate and index and index % truncate == 0:
                    memory = detach_memory(memory)  # earlier segments get no gradient from here on
                chunk_values = None if values is None else values[:, offset]
                read = None if reads is None else {name: parts[offset] for name, parts in reads.items()}
                memory, chunk_loss = self._write_segment(
                    memory, segment_items[offset], segment_masks[offset], chunk_values, read
                )
                if chunk_loss is not None:
                    loss_sum = chunk_loss if loss_sum is None else loss_sum + chunk_loss
            if output_item_features:  # back to (B, T, E), without the last segment's padding
                features.append(items.flatten(1, 2)[:, : inputs[:, span].shape[1]])
        return RehearsalMemoryModelOutput(
            # the memory type's loss per written item
            memory_loss=None if loss_sum is None else loss_sum / attention_mask.sum().clamp_min(1),
            memory=memory,
            item_features=(features[0] if len(features) == 1 else torch.cat(features, dim=1)) if features else None,
        )

    def _encode_segments(self, inputs, mask):
        """Encode consecutive segments at once: the encoder reads each segment on its own (the memory does not enter
        it), so one call serves them all and only the memory writes run in order. inputs (B, T) ids or (B, T, F)
        features, mask (B, T) bool -> item features (B, n, S, E) (zero on padding) and the mask (B, n, S), the last
        segment padded to S items. Segments without a real item are not encoded."""
        batch, length = mask.shape
        segment = self.config.segment_length
        count = -(-length // segment)  # n segments, the last one possibly short
        pad = count * segment - length
        if pad:
            inputs = nn.functional.pad(inputs, (0, 0, 0, pad) if inputs.dim() == 3 else (0, pad))
            mask = nn.functional.pad(mask, (0, pad))
        segments = inputs.reshape(batch * count, segment, *inputs.shape[2:])  # (B * n, S) or (B * n, S, F)
        mask = mask.reshape(batch * count, segment)
        # only segments with a real item are encoded: an all-masked softmax would poison the gradients with NaNs
        active = mask.any(dim=1).nonzero(as_tuple=True)[0]  # (A,)
        every = active.numel() == batch * count  # the usual case: no gather and scatter of segments
        width = self.config.encoder_config.hidden_size
        items = None if every else torch.zeros(batch * count, segment, width, device=mask.device, dtype=self.dtype)
        if active.numel():
            kind = "input_features" if segments.is_floating_point() else "input_ids"
            active_mask = mask if every else mask[active]
            embeds = self.embed_items(**{kind: segments if every else segments[active]})  # (A, S, E)
            if self.previous_item_link is not None:
                embeds = self.previous_item_link(embeds)
            encoded = self.encoder(inputs_embeds=embeds, attention_mask=active_mask.long()).last_hidden_state
            if not active_mask.all():  # padded items read as zero
                encoded = encoded * active_mask.unsqueeze(-1)
            encoded = encoded.to(self.dtype)  # under autocast the encoder may answer in another dtype than the model
            items = encoded if every else items.index_copy(0, active, encoded)
        return items.view(batch, count, segment, width), mask.view(batch, count, segment)

    def _write_segment(self, memory, items, mask, values, read):
        """Write one encoded segment: items (B, S, E), mask (B, S) bool, values (B, S) ids or None, read the
        segment's share of `bank.read_segments` or None -> (new memory, the memory type's loss sum or None). Rows
        without a real item keep their memory."""
        active = mask.any(dim=1).nonzero(as_tuple=True)[0]  # (A,)
        extra = {} if read is None else {"read": read}
        if active.numel() == mask.shape[0]:  # every row writes (the usual case): no gather and scatter of rows
            return self.bank.write(memory, items, mask, values, **extra)
        if active.numel() == 0:
            return memory, None
        values = None if values is None else values[active]
        extra = {name: reorder_memory(rows, active) for name, rows in extra.items()}
        new_rows, loss_sum = self.bank.write(
            reorder_memory(memory, active), items[active], mask[active], values, **extra
        )
        return replace_rows(memory, active, new_rows), loss_sum

    def _check_values(self, memory_values, input_ids, shape) -> torch.Tensor:
        """The ids a key-value memory stores, one per item; the token ids by default."""
        if memory_values is None:
            if input_ids is None:
                raise ValueError(
                    f"memory_type={self.config.memory_type!r} stores one id per item: pass `memory_values` "
                    "(batch, length) with feature inputs."
                )
            memory_values = input_ids
        if tuple(memory_values.shape) != tuple(shape) or memory_values.is_floating_point():
            raise ValueError(
                f"`memory_values` must be integer ids of shape (batch, length) = {tuple(shape)}, "
                f"got {memory_values.dtype} of shape {tuple(memory_values.shape)}."
            )
        check_id_range(memory_values, self.bank.value_vocab_size, "memory_values", "the key-value memory's values")
        return memory_values

    def _check_inputs(self, memory, input_ids, input_features, attention_mask) -> torch.Tensor:
        """Validate the user's tensors and return the one that carries the sequence."""
        if (input_ids is None) == (input_features is None):
            raise ValueError("Give exactly one of `input_ids` (token inputs) or `input_features` (feature inputs).")
        if input_features is not None:
            if self.feature_projection is None:
                raise ValueError(
                    "`input_features` given, but this model was configured for token ids "
                    "(RehearsalMemoryConfig.input_feature_dim is None)."
                )
            if input_features.dim() != 3 or input_features.shape[-1] != self.config.input_feature_dim:
                raise ValueError(
                    f"`input_features` must have shape (batch, length, {self.config.input_feature_dim}), "
                    f"got {tuple(input_features.shape)}."
                )
            if not torch.isfinite(input_features).all():
                raise ValueError("`input_features` contains NaN or Inf values.")
            inputs = input_features
        else:
            if input_ids.dim() != 2:
                raise ValueError(f"`input_ids` must have shape (batch, length), got {tuple(input_ids.shape)}.")
            check_id_range(
                input_ids, self.get_input_embeddings().num_embeddings, "input_ids", "the encoder's vocabulary"
            )
            inputs = input_ids
        if inputs.shape[0] == 0 or inputs.shape[1] == 0:
            raise ValueError(f"The input sequence is empty: shape {tuple(inputs.shape)}.")
        if attention_mask is not None and tuple(attention_mask.shape) != tuple(inputs.shape[:2]):
            raise ValueError(
                f"`attention_mask` shape {tuple(attention_mask.shape)} does not match the input's "
                f"(batch, length) = {tuple(inputs.shape[:2])}."
            )
        if memory is not None:
            self.check_memory(memory, inputs.shape[0])
        return inputs


def check_qa_batch(story, question_input_ids, labels, num_labels: int) -> None:
    """A question-answering batch: a question per story, and answer ids in [0, num_labels) when given."""
    if question_input_ids is None:
        raise ValueError("`question_input_ids` is required: the question to answer from memory.")
    if story is not None and story.shape[0] != question_input_ids.shape[0]:
        raise ValueError(
            f"The story batch ({story.shape[0]}) and the question batch ({question_input_ids.shape[0]}) differ in size."
        )
    if labels is not None:
        if labels.shape != question_input_ids.shape[:1] or labels.is_floating_point():
            raise ValueError(
                f"`labels` must be integer answer ids of shape (batch,) = ({question_input_ids.shape[0]},), "
                f"got {labels.dtype} of shape {tuple(labels.shape)}."
            )
        check_id_range(labels, num_labels, "labels", "config.id2label")


@dataclass
class RehearsalMemoryQuestionAnsweringOutput(ModelOutput):
    """
    Args:
        loss (`torch.FloatTensor` of shape `()`, *optional*): answer cross-entropy, when `labels` are given.
        logits (`torch.FloatTensor` of shape `(batch_size, num_labels)`): scores over the answer vocabulary.
        recollection_loss, familiarity_loss, sampler_loss (`torch.FloatTensor` of shape `()`, *optional*):
            rehearsal terms, in training with `use_rehearsal` only; `RehearsalMemoryTrainer` weights and adds them.
        memory_loss (`torch.FloatTensor` of shape `()`, *optional*):
            the memory type's own loss (Expire-Span, key-value memory), in training only.
        attentions (`tuple(torch.FloatTensor)`, *optional*): a full-access reader's (`MemN2NForQuestionAnswering`)
            attention over the story sentences, one `(batch_size, sentences)` tensor per hop, with
            `output_attentions=True`.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    recollection_loss: torch.FloatTensor | None = None
    familiarity_loss: torch.FloatTensor | None = None
    sampler_loss: torch.FloatTensor | None = None
    memory_loss: torch.FloatTensor | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


class RehearsalMemoryForQuestionAnswering(RehearsalMemoryPreTrainedModel):
    """Answers questions about a story from its memory alone: `write` turns the story into items (tokens, or one
    item per sentence) and writes them into memory; `answer` encodes a question with the same backbone (or the
    sentence encoder), reads the memory with a few hops of attention and scores the answer vocabulary
    (`config.id2label`). `forward` is write -> answer -> task loss (-> the rehearsal objective in training)."""

    def __init__(self, config: RehearsalMemoryConfig):
        super().__init__(config)
        self.rehearsal_memory = RehearsalMemoryModel(config)
        sentences = config.story_items == "sentences"
        self.sentence_encoder = RehearsalMemorySentenceEncoder(config) if sentences else None
        question_width = config.input_feature_dim if sentences else config.encoder_config.hidden_size
        self.question_projection = nn.Linear(question_width, config.memory_dim)
        self.reader = RehearsalMemoryReader(config)
        self.classifier = nn.Linear(config.memory_dim, config.num_labels)
        self.rehearsal = RehearsalMemoryObjective(config, config.num_labels) if config.use_rehearsal else None
        self.post_init()

    def encode_question(self, question_input_ids, question_attention_mask=None) -> torch.Tensor:
        """(B, L) question tokens -> (B, memory_dim) pooled question."""
        self._check_question(question_input_ids, question_attention_mask)
        if self.sentence_encoder is not None:  # the question is one more sentence (its padding embeds to zero)
            return self.question_projection(self.sentence_encoder(question_input_ids, "question_input_ids"))
        if question_attention_mask is None:
            question_attention_mask = torch.ones_like(question_input_ids)
        features = self.rehearsal_memory.encoder(
            input_ids=question_input_ids, attention_mask=question_attention_mask
        ).last_hidden_state  # (B, L, E)
        weights = question_attention_mask.unsqueeze(-1).to(features.dtype)
        pooled = (features * weights).sum(1) / weights.sum(1).clamp_min(1)  # (B, E)
        return self.question_projection(pooled)

    def _check_question(self, question_input_ids, question_attention_mask) -> None:
        # the encoder reads a question in one piece, unlike a story, which is written segment by segment
        if question_input_ids.dim() != 2 or question_input_ids.shape[1] == 0:
            raise ValueError(
                "`question_input_ids` must have shape (batch, question_length) with at least one token, "
                f"got {tuple(question_input_ids.shape)}."
            )
        max_length = getattr(self.config.encoder_config, "max_position_embeddings", None)
        if max_length is not None and question_input_ids.shape[1] > max_length:
            raise ValueError(
                f"`question_input_ids` has {question_input_ids.shape[1]} tokens; the encoder reads at most "
                f"{max_length} (encoder_config.max_position_embeddings)."
            )
        vocab_size = self.rehearsal_memory.get_input_embeddings().num_embeddings
        check_id_range(question_input_ids, vocab_size, "question_input_ids", "the encoder's vocabulary")
        if question_attention_mask is not None and question_attention_mask.shape != question_input_ids.shape:
            raise ValueError(
                f"`question_attention_mask` shape {tuple(question_attention_mask.shape)} does not match "
                f"`question_input_ids` {tuple(question_input_ids.shape)}."
            )

    def embed_sentences(self, sentence_ids: torch.Tensor) -> torch.Tensor:
        """With `story_items="sentences"`: (B, N, W) story sentences, each padded to W tokens, -> (B, N, D) items."""
        if sentence_ids.dim() != 3:
            raise ValueError(
                "With story_items='sentences', `input_ids` must have shape (batch, sentences, sentence_length), "
                f"got {tuple(sentence_ids.shape)}."
            )
        return self.sentence_encoder(sentence_ids, "input_ids")

    def sentence_values(self, sentence_ids: torch.Tensor) -> torch.Tensor:
        """The id a key-value memory stores for each sentence (B, N, W) -> (B, N): its last word, which in a bAbI
        fact is the place or object (padding sentences give the pad id)."""
        pad = self.sentence_encoder.word_embeddings.padding_idx
        last = ((sentence_ids != pad).sum(-1, keepdim=True) - 1).clamp_min(0)
        return sentence_ids.gather(-1, last).squeeze(-1)

    def story_to_items(self, input_ids=None, attention_mask=None, input_features=None) -> dict:
        """A story as the memory machine's inputs: token ids, or with `story_items="sentences"` (B, N, W) sentences
        as one feature item each (and each sentence's value for `memory_type="key_value"`)."""
        story = {"input_ids": input_ids, "input_features": input_features, "attention_mask": attention_mask}
        if self.sentence_encoder is not None and input_ids is not None:
            if attention_mask is None and input_ids.dim() == 3:  # a sentence is real if it has a real token
                story["attention_mask"] = (input_ids != self.sentence_encoder.word_embeddings.padding_idx).any(-1)
            story |= {"input_ids": None, "input_features": self.embed_sentences(input_ids)}
            if self.rehearsal_memory.bank.takes_values:
                story["memory_values"] = self.sentence_values(input_ids)
        return story

    def write(self, memory=None, input_ids=None, attention_mask=None, input_features=None):
        """Write (a chunk of) stories into `memory` (None: the initial memory) and return the new memory; the
        inputs are those of `forward`. Streaming a story in chunks that fill whole segments of `config.segment_length`
        items (the last may be short) gives the memory of writing it at once."""
        return self.rehearsal_memory.write(memory, **self.story_to_items(input_ids, attention_mask, input_features))

    def answer(self, memory, question_input_ids, question_attention_mask=None) -> torch.Tensor:
        """Answer logits (B, num_labels) for questions against stored memories, without the story. Several
        questions about one story: repeat its memory, `rehearsal_memory.reorder_memory(memory, index)` with
        `index = torch.zeros(num_questions, dtype=torch.long)` (or `memory.expand(num_questions, -1, -1)` for the
        slot memory)."""
        self.rehearsal_memory.check_memory(memory, question_input_ids.shape[0])  # one memory per question
        return self.read(memory, self.encode_question(question_input_ids, question_attention_mask))

    def read(self, memory, query: torch.Tensor) -> torch.Tensor:
        # query (B, D) -> answer logits (B, num_labels)
        entries, weights = self.rehearsal_memory.view_memory(memory, query)
        return self.classifier(self.reader(query, entries, weights))

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        question_input_ids: torch.LongTensor | None = None,
        question_attention_mask: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        input_features: torch.FloatTensor | None = None,
        memory: torch.FloatTensor | None = None,
        fragment_weights: torch.FloatTensor | None = None,
    ) -> RehearsalMemoryQuestionAnsweringOutput:
        r"""
        input_ids / input_features, attention_mask: the story, as for [`RehearsalMemoryModel`]; with
            `story_items="sentences"`, `input_ids` is `(batch_size, sentences, sentence_length)` and
            `attention_mask` `(batch_size, sentences)`.
        question_input_ids, question_attention_mask (`(batch_size, question_length)`): the questions.
        labels (`torch.LongTensor` of shape `(batch_size,)`): answer ids in `config.id2label`.
        memory: memory to continue writing the story into (streaming); the initial memory when omitted.
        fragment_weights (`(batch_size, sequence_length)`): per-item importance for `sampler_mode="external"`.
        """
        story_batch = input_ids if input_ids is not None else input_features
        check_qa_batch(story_batch, question_input_ids, labels, self.config.num_labels)
        story = self.story_to_items(input_ids, attention_mask, input_features)
        written = self.rehearsal_memory(
            **story, memory=memory, output_item_features=self.rehearsal_reads_features, return_dict=True
        )
        query = self.encode_question(question_input_ids, question_attention_mask)  # (B, D)
        logits = self.read(written.memory, query)
        return self.head_output(
            RehearsalMemoryQuestionAnsweringOutput, logits, labels, written, story, query, fragment_weights
        )


@dataclass
class RehearsalMemoryClickPredictionOutput(ModelOutput):
    """
    Args:
        loss (`torch.FloatTensor` of shape `()`, *optional*): binary cross-entropy, when `labels` are given.
        logits (`torch.FloatTensor` of shape `(batch_size,)`): click logits.
        recollection_loss, familiarity_loss, sampler_loss (`torch.FloatTensor` of shape `()`, *optional*):
            rehearsal terms, in training with `use_rehearsal` only.
        memory_loss (`torch.FloatTensor` of shape `()`, *optional*):
            the memory type's own loss (Expire-Span, key-value memory), in training only.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    recollection_loss: torch.FloatTensor | None = None
    familiarity_loss: torch.FloatTensor | None = None
    sampler_loss: torch.FloatTensor | None = None
    memory_loss: torch.FloatTensor | None = None


def click_scorer(in_features: int, hidden: int) -> nn.Sequential:
    """The MLP that turns [target, read, target * read] into one click logit (also used by the baselines)."""
    return nn.Sequential(
        RehearsalMemoryProjection(in_features, hidden), nn.GELU(), RehearsalMemoryProjection(hidden, 1)
    )


class RehearsalMemoryForClickPrediction(RehearsalMemoryPreTrainedModel):
    """Click prediction from a user's behaviour memory: `write` embeds behaviours ([item ; category] embeddings
    plus a behaviour-type embedding) and writes them into memory as features; `score` lets each candidate item
    read the memory by attention, and an MLP over [target, read, target * read] gives one logit. `forward` is
    write -> score -> task loss (-> the rehearsal objective in training). A user's memory can be kept and updated
    as behaviours arrive (see `rm_hf.memory_store`), so a request costs O(K), not O(history)."""

    def __init__(self, config: RehearsalMemoryConfig):
        super().__init__(config)
        if config.input_feature_dim != 2 * config.item_embedding_dim:
            raise ValueError(
                f"RehearsalMemoryConfig.input_feature_dim ({config.input_feature_dim}) must be "
                f"2 * item_embedding_dim ({2 * config.item_embedding_dim}) for click prediction."
            )
        self.embeddings = RehearsalMemoryBehaviorEmbedding(config)
        self.rehearsal_memory = RehearsalMemoryModel(config)
        self.target_projection = RehearsalMemoryProjection(2 * config.item_embedding_dim, config.memory_dim)
        self.reader = RehearsalMemoryReader(config)
        self.scorer = click_scorer(3 * config.memory_dim, config.memory_dim)
        self.rehearsal = RehearsalMemoryObjective(config, num_outputs=1) if config.use_rehearsal else None
        self.post_init()

    def history_to_items(self, history_items, history_categories=None, history_behaviors=None, attention_mask=None):
        """A behaviour history as the memory machine's inputs (item ids as the values of a key-value memory)."""
        return {
            "input_features": self.embeddings.history(history_items, history_categories, history_behaviors),
            "attention_mask": attention_mask,
            "memory_values": history_items if self.rehearsal_memory.bank.takes_values else None,
        }

    def write(self, memory=None, history_items=None, history_categories=None, history_behaviors=None,
              attention_mask=None):  # fmt: skip
        """Write (B, T) new behaviours, oldest first, into users' memories (None: the initial memory) and return
        the new memories. Streaming a history in chunks gives the memory of writing it at once."""
        story = self.history_to_items(history_items, history_categories, history_behaviors, attention_mask)
        return self.rehearsal_memory.write(memory, **story)

    def encode_target(self, target_item, target_category=None) -> torch.Tensor:
        """(B,) or (B, C) target ids -> (B, memory_dim) or (B, C, memory_dim) queries."""
        return self.target_projection(self.embeddings.items(target_item, target_category))

    def score(self, memory, target_item, target_category=None) -> torch.Tensor:
        """Click logits of targets against stored memories, without the history: (B,) for one target per memory,
        (B, C) for C candidates per memory (`target_item` (B, C)), each memory read once per hop for all its
        candidates rather than copied C times."""
        if target_item.dim() not in (1, 2):
            raise ValueError(
                f"`target_item` must have shape (batch,) or (batch, candidates), got {tuple(target_item.shape)}."
            )
        self.rehearsal_memory.check_memory(memory, target_item.shape[0])  # one memory per row of targets
        return self.read(memory, self.encode_target(target_item, target_category))

    def read(self, memory, query):
        # query (B, D) or (B, C, D) -> logits (B,) or (B, C)
        entries, weights = self.rehearsal_memory.view_memory(memory, query)
        read = self.reader(query, entries, weights)
        return self.scorer(torch.cat([query, read, query * read], dim=-1)).squeeze(-1)

    @staticmethod
    def check_click_inputs(history_items, target_item, labels, **others):
        """Shapes and labels of a click batch (`others`: the other history columns and `target_category`);
        shared by the head and the baselines of `ctr_baselines`."""
        if history_items is None or target_item is None:
            raise ValueError("`history_items` and `target_item` are required.")
        if history_items.dim() != 2:
            raise ValueError(
                f"`history_items` must have shape (batch, history_length), got {tuple(history_items.shape)}."
            )
        batch = history_items.shape[:1]
        tensors = {"target_item": target_item, "labels": labels, **others}
        for name, tensor in tensors.items():
            expected = batch if name in ("target_item", "target_category", "labels") else history_items.shape
            if tensor is not None and tensor.shape != expected:
                raise ValueError(
                    f"`{name}` must have shape {tuple(expected)} to match `history_items` "
                    f"{tuple(history_items.shape)}, got {tuple(tensor.shape)}."
                )
        if labels is not None and not ((labels == 0) | (labels == 1)).all():
            raise ValueError("`labels` must be 0 (no click) or 1 (click).")

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
        memory: torch.FloatTensor | None = None,
        fragment_weights: torch.FloatTensor | None = None,
    ) -> RehearsalMemoryClickPredictionOutput:
        r"""
        history_items, history_categories, history_behaviors (`(batch_size, history_length)`): the user's
            behaviours, oldest first, right-padded with 0.
        attention_mask (`(batch_size, history_length)`): 1 for real behaviours.
        target_item, target_category (`(batch_size,)`): the candidate to score.
        labels (`(batch_size,)`): 1 for a click, 0 otherwise.
        memory: a user memory to continue writing into; the initial memory when omitted.
        """
        self.check_click_inputs(
            history_items,
            target_item,
            labels,
            history_categories=history_categories,
            history_behaviors=history_behaviors,
            attention_mask=attention_mask,
            target_category=target_category,
        )
        story = self.history_to_items(history_items, history_categories, history_behaviors, attention_mask)
        written = self.rehearsal_memory(
            **story, memory=memory, output_item_features=self.rehearsal_reads_features, return_dict=True
        )
        query = self.encode_target(target_item, target_category)
        logits = self.read(written.memory, query)
        return self.head_output(
            RehearsalMemoryClickPredictionOutput, logits, labels, written, story, query, fragment_weights
        )


__all__ = [
    "RehearsalMemoryForClickPrediction",
    "RehearsalMemoryClickPredictionOutput",
    "RehearsalMemoryPreTrainedModel",
    "RehearsalMemoryModel",
    "RehearsalMemoryModelOutput",
    "RehearsalMemoryForQuestionAnswering",
    "RehearsalMemoryQuestionAnsweringOutput",
]
