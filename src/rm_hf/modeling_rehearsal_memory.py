"""Rehearsal Memory models (Zhang et al., ICML 2021, arXiv 2106.01096).

The memory machine G reads a long input once, segment by segment, into K memory slots and forgets the
input; task heads answer from the slots alone, so query cost does not depend on the input length.
Notable choices:
- a pluggable Hugging Face encoder backbone encodes each segment (token ids through its embeddings,
  continuous features through a linear projection into `inputs_embeds`);
- the memory itself is pluggable (`config.memory_type`, see `memory_interface`): the Rehearsal Memory slots
  (`memory_slots`, the default) or Expire-Span, LaMemo and the lifelong key-value memory, all read by the same
  heads and rehearsal model;
- `write(memory, segment)` and the whole-sequence `forward` share one code path, so streaming a sequence
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

from .configuration_rehearsal_memory import RehearsalMemoryConfig
from .history_sampler import RehearsalMemoryHistorySampler
from .layers_rehearsal_memory import (
    RehearsalMemoryAttention,
    RehearsalMemoryEmbedding,
    RehearsalMemoryProjection,
    check_id_range,
    init_scaled_module,
)
from .memory_expire_span import RehearsalMemoryExpireSpanMemory
from .memory_interface import reorder_memory, replace_rows
from .memory_key_value import RehearsalMemoryKeyValueMemory
from .memory_lamemo import RehearsalMemoryLookAheadMemory
from .memory_slots import RehearsalMemorySlotMemory
from .rehearsal import RehearsalMemoryRehearser

# Checkpoints saved before memory types existed kept the slot memory's weights at the top of the base model.
LEGACY_WEIGHT_NAMES = re.compile(r"^((?:rehearsal_memory\.)?)(initial_memory$|writer\.)")

MEMORY_CLASSES = {
    "rehearsal": RehearsalMemorySlotMemory,
    "expire_span": RehearsalMemoryExpireSpanMemory,
    "lamemo": RehearsalMemoryLookAheadMemory,
    "kv": RehearsalMemoryKeyValueMemory,
}


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


def legacy_state_dict(checkpoint, subfolder: str = "") -> dict[str, torch.Tensor] | None:
    """The weights of a local single-file checkpoint saved before memory types existed, renamed to today's names
    (`initial_memory` -> `memory.initial_memory`, `writer.*` -> `memory.writer.*`); None for any other checkpoint."""
    path = os.path.join(checkpoint, subfolder, "model.safetensors") if checkpoint is not None else None
    if path is None or not os.path.isfile(path):
        return None
    try:
        names = load_state_dict(path, map_location="meta").keys()  # reads the header only
    except Exception:  # noqa: BLE001 - a damaged file is reported by from_pretrained
        return None
    if not any(LEGACY_WEIGHT_NAMES.match(name) for name in names):
        return None
    return {LEGACY_WEIGHT_NAMES.sub(r"\1memory.\2", name): w for name, w in load_state_dict(path).items()}


class RehearsalMemorySentenceEncoder(nn.Module):
    """A sentence as one item (`story_items="sentences"`): the sum of its word embeddings, each weighted by a
    learned vector for its position in the sentence (MemN2N's position encoding, learned). Word order inside a
    sentence survives, and who-did-what is bound within the item, which a token-level encoder trained from
    scratch learns only slowly."""

    def __init__(self, config: RehearsalMemoryConfig):
        super().__init__()
        self.max_tokens = config.max_sentence_tokens
        # the encoder's padding id, so the story's and the question's padding embed to zero
        padding = getattr(config.encoder_config, "pad_token_id", None) or 0
        self.word_embeddings = RehearsalMemoryEmbedding(
            config.encoder_config.vocab_size, config.input_feature_dim, padding_idx=padding
        )
        self.position_weights = nn.Parameter(torch.empty(config.max_sentence_tokens, config.input_feature_dim))

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


class RehearsalMemoryReader(nn.Module):
    """Reads the memory with a query: a few hops of query-to-slot attention, each refining the query."""

    def __init__(self, config: RehearsalMemoryConfig):
        super().__init__()
        dim = config.memory_dim
        self.hops = nn.ModuleList(
            RehearsalMemoryAttention(dim, dim, config.num_memory_heads) for _ in range(config.num_reasoning_hops)
        )
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(config.num_reasoning_hops))

    def forward(self, query: torch.Tensor, entries: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        # query (B, D) or (B, C, D), entries (B, N, D) with weights (B, N) / (B, C, N) from a memory's `view` ->
        # the query's shape. C queries about one memory (several click candidates) are read together; each
        # attends to the entries on its own, as if read alone.
        state = query if query.dim() == 3 else query.unsqueeze(1)  # (B, C, D)
        for attention, norm in zip(self.hops, self.norms):
            state = norm(state + attention(state, entries, weights))
        return state if query.dim() == 3 else state.squeeze(1)


@dataclass
class RehearsalOutput:
    """Training-time rehearsal terms of one batch (see `RehearsalMemoryModel.rehearse`)."""

    recollection_loss: torch.Tensor
    familiarity_loss: torch.Tensor
    sampler_loss: torch.Tensor | None = None
    teacher_readout: torch.Tensor | None = None


@dataclass
class RehearsalMemoryModelOutput(ModelOutput):
    """
    Args:
        memory_loss (`torch.FloatTensor` of shape `()`, *optional*):
            The memory type's own loss, averaged over the items written (Expire-Span's span loss, the key-value
            memory's margin loss); None for the others.
        memory (`torch.FloatTensor` of shape `(batch_size, num_memory_slots, memory_dim)`, or a dict of tensors):
            The memory after reading the whole input: the slots for `memory_type="rehearsal"`, the memory type's
            state (a dict of per-sequence tensors) for the others.
        item_features (`torch.FloatTensor` of shape `(batch_size, sequence_length, encoder_hidden_size)`, *optional*):
            Encoder features of every item, segment by segment; returned with `output_item_features=True`.
        item_embeddings (`torch.FloatTensor` of shape `(batch_size, sequence_length, encoder_hidden_size)`, *optional*):
            Context-free input embeddings of every item (the rehearsal model's inputs); returned with
            `output_item_features=True`.
    """

    # memory_loss comes first: ModelOutput unpacks a dict given as the only non-None first field into fields
    memory_loss: torch.FloatTensor | None = None
    memory: torch.FloatTensor | dict | None = None
    item_features: torch.FloatTensor | None = None
    item_embeddings: torch.FloatTensor | None = None


class RehearsalMemoryPreTrainedModel(PreTrainedModel):
    config: RehearsalMemoryConfig
    base_model_prefix = "rehearsal_memory"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _no_split_modules = ["RehearsalMemoryWriter"]

    def save_pretrained(self, save_directory, *args, **kwargs):
        # Every checkpoint also loads as its base through `AutoModel`, installed or as remote code, heads
        # without an Auto class of their own (click prediction) included.
        shipping_code = RehearsalMemoryModel._auto_class is not None  # set by `import rm_hf`
        if shipping_code:
            entry = f"{__name__.rsplit('.', 1)[-1]}.RehearsalMemoryModel"
            self.config.auto_map = {**(getattr(self.config, "auto_map", None) or {}), "AutoModel": entry}
        super().save_pretrained(save_directory, *args, **kwargs)
        if shipping_code and self._auto_class is None:
            custom_object_save(self, save_directory)  # copy the code the `auto_map` entry points to

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        legacy = legacy_state_dict(pretrained_model_name_or_path, kwargs.get("subfolder", ""))
        if legacy is not None and "state_dict" not in kwargs:
            config = kwargs.pop("config", None) or cls.config_class.from_pretrained(
                pretrained_model_name_or_path, subfolder=kwargs.get("subfolder", "")
            )
            kwargs.pop("subfolder", None)
            return super().from_pretrained(None, *args, config=config, state_dict=legacy, **kwargs)
        try:
            return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        except Exception as error:
            # transformers reports a damaged weights file as "Error while deserializing header: ..." without
            # saying which file; name it
            damaged = damaged_weights_file(pretrained_model_name_or_path, kwargs.get("subfolder", ""))
            if damaged is None:
                raise
            raise ValueError(
                f"{damaged}: cannot read the weights, the file is truncated or corrupt ({error})."
            ) from error

    def rehearsal_terms(self, outputs, query, teacher_loss, **inputs):
        """(recollection, familiarity, sampler) losses of a training batch. `teacher_loss` maps the teacher
        head's logits to its task loss (None without labels)."""
        rehearsal = self.rehearsal_memory.rehearse(outputs, query=query, **inputs)
        sampler_loss = rehearsal.sampler_loss
        if rehearsal.teacher_readout is not None and teacher_loss is not None:
            teacher_logits = self.teacher_head(torch.cat([rehearsal.teacher_readout, query.detach()], dim=-1))
            sampler_loss = sampler_loss + teacher_loss(teacher_logits)
        return rehearsal.recollection_loss, rehearsal.familiarity_loss, sampler_loss

    @torch.no_grad()
    def _init_weights(self, module):
        # `from_pretrained` builds on the meta device: whatever a checkpoint lacks is set here, never in __init__.
        if init_scaled_module(module):
            return
        super()._init_weights(module)
        if hasattr(module, "init_weights_from_config"):  # memory modules with start values of their own
            module.init_weights_from_config(self.config)
        elif isinstance(module, RehearsalMemoryRehearser):
            init.normal_(module.mask_embedding, std=1.0)  # unit scale, like the normalised items
            init.normal_(module.cls_embedding, std=1.0)
        elif isinstance(module, RehearsalMemorySentenceEncoder):
            init.ones_(module.position_weights)  # start as a bag of words
        elif isinstance(module, nn.GRUCell):
            bound = module.hidden_size**-0.5
            for weight in (module.weight_ih, module.weight_hh, module.bias_ih, module.bias_hh):
                init.uniform_(weight, -bound, bound)


class RehearsalMemoryModel(RehearsalMemoryPreTrainedModel):
    """The memory machine G(X) -> M. `forward` reads a whole sequence; `init_memory` + `write` stream it."""

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
        self.memory = MEMORY_CLASSES[config.memory_type](config)
        if config.use_rehearsal:  # training-only modules; inference never runs them
            self.rehearser = RehearsalMemoryRehearser(config)
            self.history_sampler = RehearsalMemoryHistorySampler(config)
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
        for `memory_type="rehearsal"`, the memory type's empty state (a dict of tensors) for the others."""
        return self.memory.init_state(batch_size)

    def view_memory(self, memory, query=None):
        """What a reader attends to: entries (B, N, memory_dim) and their weights (None, (B, N) or, given a query
        (B, C, D), (B, C, N)); see `RehearsalMemoryBaseMemory.view`."""
        return self.memory.view(memory, query)

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
        """Write a chunk of a sequence into `memory`, segment by segment, and return the new memory."""
        return self._read_sequence(memory, input_ids, input_features, attention_mask, memory_values)[0]

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        input_features: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        memory: torch.FloatTensor | dict | None = None,
        memory_values: torch.LongTensor | None = None,
        output_item_features: bool = False,
        return_dict: bool | None = None,
    ) -> RehearsalMemoryModelOutput | tuple:
        r"""
        input_ids (`torch.LongTensor` of shape `(batch_size, sequence_length)`):
            Token ids of the input sequence. Give either these or `input_features`.
        input_features (`torch.FloatTensor` of shape `(batch_size, sequence_length, input_feature_dim)`):
            Continuous item features (video clip features, behaviour embeddings).
        attention_mask (`torch.Tensor` of shape `(batch_size, sequence_length)`):
            1 for real items, 0 for padding. Pad on the right: segments start at position 0.
        memory (`torch.FloatTensor` of shape `(batch_size, num_memory_slots, memory_dim)`, or a dict of tensors):
            Memory to continue writing into (a memory type's state for the others than `rehearsal`); the initial
            memory when omitted.
        memory_values (`torch.LongTensor` of shape `(batch_size, sequence_length)`):
            One id per item for `memory_type="kv"` (the values it stores); the token ids when omitted.
        output_item_features (`bool`):
            Also return per-item encoder features and input embeddings (training-time heads need them).
        """
        memory, memory_loss, item_features, item_embeddings = self._read_sequence(
            memory, input_ids, input_features, attention_mask, memory_values, keep_items=output_item_features
        )
        output = RehearsalMemoryModelOutput(
            memory=memory, memory_loss=memory_loss, item_features=item_features, item_embeddings=item_embeddings
        )
        use_dict = return_dict if return_dict is not None else self.config.return_dict
        return output if use_dict else output.to_tuple()

    def rehearse(
        self, outputs, input_ids=None, input_features=None, attention_mask=None, fragment_weights=None, query=None
    ):
        """Rehearsal losses for a batch just read with `output_item_features=True`.

        fragment_weights (B, T): per-item importance for `sampler_mode="external"`; query (B, memory_dim):
        the task query, for `sampler_mode="teacher"`.
        """
        targets = input_features if input_features is not None else input_ids
        if attention_mask is None:
            attention_mask = torch.ones(targets.shape[:2], dtype=torch.long, device=targets.device)
        starts, sampler_loss, teacher_readout = self.history_sampler(
            attention_mask, outputs.item_features, fragment_weights, query
        )
        token_table = None if input_features is not None else self.get_input_embeddings().weight
        entries, weights = self.memory.view(outputs.memory)
        losses = self.rehearser(
            entries, weights, outputs.item_embeddings, targets, attention_mask, starts, token_table
        )
        return RehearsalOutput(losses.recollection, losses.familiarity, sampler_loss, teacher_readout)

    def _read_sequence(self, memory, input_ids, input_features, attention_mask, memory_values, keep_items=False):
        inputs = self._check_inputs(memory, input_ids, input_features, attention_mask)
        batch_size, length = inputs.shape[:2]
        if attention_mask is None:
            attention_mask = torch.ones(batch_size, length, dtype=torch.long, device=inputs.device)
        if self.memory.takes_values:
            memory_values = self._check_values(memory_values, input_ids, inputs.shape[:2])
        if memory is None:
            memory = self.init_memory(batch_size)
        segment = self.config.segment_length
        features, embeddings, loss_sum = [], [], None
        for start in range(0, length, segment):
            chunk = inputs[:, start : start + segment]
            chunk_mask = attention_mask[:, start : start + segment].bool()
            chunk_values = None if memory_values is None else memory_values[:, start : start + segment]
            memory, chunk_loss, chunk_features, chunk_embeddings = self._write_segment(
                memory, chunk, chunk_mask, chunk_values, is_features=input_features is not None, keep_items=keep_items
            )
            if chunk_loss is not None:
                loss_sum = chunk_loss if loss_sum is None else loss_sum + chunk_loss
            if keep_items:
                features.append(chunk_features)
                embeddings.append(chunk_embeddings)
        # the memory type's loss per written item
        memory_loss = None if loss_sum is None else loss_sum / attention_mask.sum().clamp_min(1)
        if not keep_items:
            return memory, memory_loss, None, None
        return memory, memory_loss, torch.cat(features, dim=1), torch.cat(embeddings, dim=1)

    def _write_segment(self, memory, chunk, chunk_mask, chunk_values, is_features, keep_items):
        # chunk (B, S) ids or (B, S, F) features, chunk_mask (B, S) bool, chunk_values (B, S) ids or None
        # Only rows with at least one real item are encoded; the others keep their memory unchanged and
        # never see an all-masked softmax (whose NaNs would poison the gradients).
        active = chunk_mask.any(dim=1).nonzero(as_tuple=True)[0]  # (A,)
        if active.numel() == 0:
            if not keep_items:
                return memory, None, None, None
            hidden = self.config.encoder_config.hidden_size
            empty = torch.zeros(chunk.shape[0], chunk.shape[1], hidden, device=chunk.device, dtype=self.dtype)
            return memory, None, empty, empty
        embeds = self.embed_items(**{"input_features" if is_features else "input_ids": chunk[active]})  # (A, S, E)
        mask = chunk_mask[active]
        items = self.encoder(inputs_embeds=embeds, attention_mask=mask.long()).last_hidden_state  # (A, S, E)
        values = None if chunk_values is None else chunk_values[active]
        new_rows, loss_sum = self.memory.write(reorder_memory(memory, active), items, mask, values)
        memory = replace_rows(memory, active, new_rows)
        if not keep_items:
            return memory, loss_sum, None, None
        # scatter the active rows' items back into a full-batch tensor; padded items and rows are zero
        keep = mask.unsqueeze(-1).to(items.dtype)
        full = items.new_zeros(chunk.shape[0], chunk.shape[1], items.shape[-1])
        return memory, loss_sum, full.index_copy(0, active, items * keep), full.index_copy(0, active, embeds * keep)

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
        check_id_range(memory_values, self.memory.value_vocab_size, "memory_values", "the key-value memory's values")
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
            self.memory.check_state(memory, inputs.shape[0])
        return inputs


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
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    recollection_loss: torch.FloatTensor | None = None
    familiarity_loss: torch.FloatTensor | None = None
    sampler_loss: torch.FloatTensor | None = None
    memory_loss: torch.FloatTensor | None = None


class RehearsalMemoryForQuestionAnswering(RehearsalMemoryPreTrainedModel):
    """Answers questions about a story from its memory alone: the story is written into memory, the question
    is encoded by the same backbone and mean-pooled, a few hops of attention read the slots, and a classifier
    scores the answer vocabulary (`config.id2label`)."""

    def __init__(self, config: RehearsalMemoryConfig):
        super().__init__(config)
        self.rehearsal_memory = RehearsalMemoryModel(config)
        sentences = config.story_items == "sentences"
        self.sentence_encoder = RehearsalMemorySentenceEncoder(config) if sentences else None
        question_width = config.input_feature_dim if sentences else config.encoder_config.hidden_size
        self.question_projection = nn.Linear(question_width, config.memory_dim)
        self.reader = RehearsalMemoryReader(config)
        self.classifier = nn.Linear(config.memory_dim, config.num_labels)
        if config.use_rehearsal and config.sampler_mode == "teacher":
            # the full-access teacher answers from its attended fragments; trained by the task loss
            self.teacher_head = nn.Linear(config.encoder_config.hidden_size + config.memory_dim, config.num_labels)
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
        """With `story_items="sentences"`: (B, N, W) story sentences, each padded to W tokens, -> (B, N, D) items,
        to stream with `rehearsal_memory.write(memory, input_features=...)`."""
        if sentence_ids.dim() != 3:
            raise ValueError(
                "With story_items='sentences', `input_ids` must have shape (batch, sentences, sentence_length), "
                f"got {tuple(sentence_ids.shape)}."
            )
        return self.sentence_encoder(sentence_ids, "input_ids")

    def answer(self, memory, question_input_ids, question_attention_mask=None) -> torch.Tensor:
        """Answer logits (B, num_labels) for questions against stored memories, without the story. Several
        questions about one story: repeat its memory, `rehearsal_memory.reorder_memory(memory, index)` with
        `index = torch.zeros(num_questions, dtype=torch.long)` (or `memory.expand(num_questions, -1, -1)` for the
        slot memory)."""
        self.rehearsal_memory.memory.check_state(memory, question_input_ids.shape[0])  # one memory per question
        return self.read(memory, self.encode_question(question_input_ids, question_attention_mask))

    def read(self, memory, query: torch.Tensor) -> torch.Tensor:
        # query (B, D) -> answer logits (B, num_labels)
        entries, weights = self.rehearsal_memory.view_memory(memory, query)
        return self.classifier(self.reader(query, entries, weights))

    def sentence_values(self, sentence_ids: torch.Tensor) -> torch.Tensor:
        """The id a key-value memory stores for each sentence (B, N, W) -> (B, N): its last word, which in a bAbI
        fact is the place or object (padding sentences give the pad id)."""
        pad = self.sentence_encoder.word_embeddings.padding_idx
        last = ((sentence_ids != pad).sum(-1, keepdim=True) - 1).clamp_min(0)
        return sentence_ids.gather(-1, last).squeeze(-1)

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
        return_dict: bool | None = None,
    ) -> RehearsalMemoryQuestionAnsweringOutput | tuple:
        r"""
        input_ids / input_features, attention_mask: the story, as for [`RehearsalMemoryModel`]; with
            `story_items="sentences"`, `input_ids` is `(batch_size, sentences, sentence_length)` and
            `attention_mask` `(batch_size, sentences)`.
        question_input_ids, question_attention_mask (`(batch_size, question_length)`): the questions.
        labels (`torch.LongTensor` of shape `(batch_size,)`): answer ids in `config.id2label`.
        memory: memory to continue writing the story into (streaming); the initial memory when omitted.
        fragment_weights (`(batch_size, sequence_length)`): per-item importance for `sampler_mode="external"`.
        """
        if question_input_ids is None:
            raise ValueError("`question_input_ids` is required: the question to answer from memory.")
        story = input_ids if input_ids is not None else input_features
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
            check_id_range(labels, self.config.num_labels, "labels", "config.id2label")
        memory_values = None
        if self.sentence_encoder is not None and input_ids is not None:
            if attention_mask is None and input_ids.dim() == 3:  # a sentence is real if it has a real token
                attention_mask = (input_ids != self.sentence_encoder.word_embeddings.padding_idx).any(-1).long()
            features = self.embed_sentences(input_ids)
            if self.rehearsal_memory.memory.takes_values:
                memory_values = self.sentence_values(input_ids)
            input_ids, input_features = None, features
        rehearsing = self.training and self.config.use_rehearsal
        outputs = self.rehearsal_memory(
            input_ids,
            input_features,
            attention_mask,
            memory=memory,
            memory_values=memory_values,
            output_item_features=rehearsing,
        )
        query = self.encode_question(question_input_ids, question_attention_mask)  # (B, D)
        logits = self.read(outputs.memory, query)
        loss = F.cross_entropy(logits, labels) if labels is not None else None

        recollection_loss = familiarity_loss = sampler_loss = None
        if rehearsing:
            recollection_loss, familiarity_loss, sampler_loss = self.rehearsal_terms(
                outputs,
                query,
                None if labels is None else (lambda teacher_logits: F.cross_entropy(teacher_logits, labels)),
                input_ids=input_ids,
                input_features=input_features,
                attention_mask=attention_mask,
                fragment_weights=fragment_weights,
            )

        output = RehearsalMemoryQuestionAnsweringOutput(
            loss=loss,
            logits=logits,
            recollection_loss=recollection_loss,
            familiarity_loss=familiarity_loss,
            sampler_loss=sampler_loss,
            memory_loss=outputs.memory_loss if self.training else None,
        )
        use_dict = return_dict if return_dict is not None else self.config.return_dict
        return output if use_dict else output.to_tuple()


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
    """Click prediction from a user's behaviour memory: behaviours ([item ; category] embeddings plus a
    behaviour-type embedding) are written into memory as features; the target item reads the memory by
    attention; an MLP over [target, read, target * read] gives one logit. A user's memory can be kept and
    updated as behaviours arrive (see `rm_hf.memory_store`), so a request costs O(K), not O(history)."""

    def __init__(self, config: RehearsalMemoryConfig):
        super().__init__(config)
        if config.item_vocab_size is None or config.category_vocab_size is None:
            raise ValueError("Click prediction needs RehearsalMemoryConfig.item_vocab_size and category_vocab_size.")
        if config.input_feature_dim != 2 * config.item_embedding_dim:
            raise ValueError(
                f"RehearsalMemoryConfig.input_feature_dim ({config.input_feature_dim}) must be "
                f"2 * item_embedding_dim ({2 * config.item_embedding_dim}) for click prediction."
            )
        dim = config.item_embedding_dim
        self.item_embeddings = RehearsalMemoryEmbedding(config.item_vocab_size, dim, padding_idx=0)
        self.category_embeddings = RehearsalMemoryEmbedding(config.category_vocab_size, dim, padding_idx=0)
        self.behavior_embeddings = RehearsalMemoryEmbedding(config.behavior_vocab_size, 2 * dim, padding_idx=0)
        self.rehearsal_memory = RehearsalMemoryModel(config)
        self.target_projection = RehearsalMemoryProjection(2 * dim, config.memory_dim)
        self.reader = RehearsalMemoryReader(config)
        self.scorer = click_scorer(3 * config.memory_dim, config.memory_dim)
        if config.use_rehearsal and config.sampler_mode == "teacher":
            self.teacher_head = nn.Linear(config.encoder_config.hidden_size + config.memory_dim, 1)
        self.post_init()

    def embed_behaviors(self, history_items, history_categories=None, history_behaviors=None) -> torch.Tensor:
        """(B, T) ids -> (B, T, 2 * item_embedding_dim) features for the memory machine."""
        self.check_ids(history_items, self.config.item_vocab_size, "history_items")
        categories = history_categories if history_categories is not None else torch.zeros_like(history_items)
        self.check_ids(categories, self.config.category_vocab_size, "history_categories")
        features = torch.cat([self.item_embeddings(history_items), self.category_embeddings(categories)], dim=-1)
        if history_behaviors is not None:
            self.check_ids(history_behaviors, self.config.behavior_vocab_size, "history_behaviors")
            features = features + self.behavior_embeddings(history_behaviors)
        return features

    def encode_target(self, target_item, target_category=None) -> torch.Tensor:
        """(B,) or (B, C) target ids -> (B, memory_dim) or (B, C, memory_dim) queries."""
        categories = target_category if target_category is not None else torch.zeros_like(target_item)
        self.check_ids(target_item, self.config.item_vocab_size, "target_item")
        self.check_ids(categories, self.config.category_vocab_size, "target_category")
        target = torch.cat([self.item_embeddings(target_item), self.category_embeddings(categories)], dim=-1)
        return self.target_projection(target)

    def score(self, memory, target_item, target_category=None) -> torch.Tensor:
        """Click logits of targets against stored memories, without the history: (B,) for one target per memory,
        (B, C) for C candidates per memory (`target_item` (B, C)), each memory read once per hop for all its
        candidates rather than copied C times."""
        if target_item.dim() not in (1, 2):
            raise ValueError(
                f"`target_item` must have shape (batch,) or (batch, candidates), got {tuple(target_item.shape)}."
            )
        self.rehearsal_memory.memory.check_state(memory, target_item.shape[0])  # one memory per row of targets
        return self.score_query(self.encode_target(target_item, target_category), memory)

    def score_query(self, query, memory):
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

    @staticmethod
    def check_ids(ids, vocab_size, name):
        check_id_range(ids, vocab_size, name, "map unknown ids to 0 with the data's vocabulary")

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
        return_dict: bool | None = None,
    ) -> RehearsalMemoryClickPredictionOutput | tuple:
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
        features = self.embed_behaviors(history_items, history_categories, history_behaviors)  # (B, T, 2d)
        rehearsing = self.training and self.config.use_rehearsal
        outputs = self.rehearsal_memory(
            input_features=features,
            attention_mask=attention_mask,
            memory=memory,
            memory_values=history_items if self.rehearsal_memory.memory.takes_values else None,
            output_item_features=rehearsing,
        )
        query = self.encode_target(target_item, target_category)
        logits = self.score_query(query, outputs.memory)
        loss = F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype)) if labels is not None else None

        recollection_loss = familiarity_loss = sampler_loss = None
        if rehearsing:
            recollection_loss, familiarity_loss, sampler_loss = self.rehearsal_terms(
                outputs,
                query,
                None
                if labels is None
                else (
                    lambda teacher_logits: F.binary_cross_entropy_with_logits(
                        teacher_logits.squeeze(-1), labels.to(logits.dtype)
                    )
                ),
                input_features=features,
                attention_mask=attention_mask,
                fragment_weights=fragment_weights,
            )

        output = RehearsalMemoryClickPredictionOutput(
            loss=loss,
            logits=logits,
            recollection_loss=recollection_loss,
            familiarity_loss=familiarity_loss,
            sampler_loss=sampler_loss,
            memory_loss=outputs.memory_loss if self.training else None,
        )
        use_dict = return_dict if return_dict is not None else self.config.return_dict
        return output if use_dict else output.to_tuple()


__all__ = [
    "RehearsalMemoryForClickPrediction",
    "RehearsalMemoryClickPredictionOutput",
    "RehearsalMemoryPreTrainedModel",
    "RehearsalMemoryModel",
    "RehearsalMemoryModelOutput",
    "RehearsalMemoryForQuestionAnswering",
    "RehearsalMemoryQuestionAnsweringOutput",
]
