"""The Rehearsal Memory slot memory (`memory_type="slots"`): K learned slots updated by attention and a GRU.

Each write step, every slot reads the segment's items with multi-head attention and is updated by one GRU cell
shared by all slots. The initial memory M_0 is a learned, slot-distinct parameter: otherwise every slot would
receive the same input forever and the K slots would collapse into one vector. The state is the (B, K, D) slot
tensor itself; its size never depends on the input length.

The write gate (`slot_write_gate`, our choice): a softmax over a segment's items has no "nothing here" option, so
without the gate every slot absorbs every segment and a fact fades with each later write (measured: the GRU kept
about 86% of a slot per write whether the segment was relevant or filler). With it, slot k moves toward its GRU
update only by its relevance r_k = mean over heads of sigmoid(logsumexp_i(score_ki) - t_h): the probability that
the slot's query prefers one of the items to a "none of these" option with learned score t_h per head. A slot
whose query matches no item of a segment is left (almost) as it was.

"Almost" is the catch on long inputs (measured on BABILong, `bench/diagnose_write_gate.py`): trained models open the
gate by 0.003-0.3 for segments of book text, and a 128k-token story is ~1,800 segment writes; in a qa2 model the
slots drift far from where they started (cosine to M_0 0.07; their norm does not change) and the gate for a later
fact closes too (0.87 -> 0.46). `slot_write_threshold` tau (our choice, default 0 = off) cuts the leak: the gate
becomes max(r_k - tau, 0) / (1 - tau), exactly 0 for a slot that barely opens. It changes no parameter and can be set
on a model trained without it (there, qa2 at 128k tokens: 34% -> 89%).

Addressing (`slot_addressing`, our choice; default "content", the paper's): a slot's write attention asks with the
slot's state, so what a slot listens for moves with what it has taken in. With "key" each slot asks with a learned
key of its own that writing never changes (EntNet's keys, without its content term); the state only carries what
was read. Neither makes the slots keep who holds an object (measured, `bench/diagnose_slot_gates.py`): the slots
that take in "Alice picked up the key." open, for another person's pick-up of another object, 73-87% as wide as
for the same sentence again, so the next pick-up of anything writes over the last (README, Method).
"""

import torch
from torch import nn
from transformers import initialization as init

from .layers_rehearsal_memory import RehearsalMemoryAttention
from .memory_interface import RehearsalMemoryBank, describe


class RehearsalMemoryGRUCell(nn.GRUCell):
    """The slot update, initialised as PyTorch initialises a GRU (transformers' default would not)."""

    def init_weights_from_config(self, config):
        bound = self.hidden_size**-0.5
        for weight in (self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh):
            init.uniform_(weight, -bound, bound)


class RehearsalMemoryWriter(nn.Module):
    """One write step: slot-to-item attention, then a GRU update of every slot (weights shared), gated by each
    slot's relevance to the segment when `config.slot_write_gate`."""

    def __init__(self, config):
        super().__init__()
        self.attention = RehearsalMemoryAttention(
            config.memory_dim, config.encoder_config.hidden_size, config.num_memory_heads
        )
        self.gru = RehearsalMemoryGRUCell(config.memory_dim, config.memory_dim)
        self.config = config  # read at each write: the threshold may be set on a loaded model
        # t_h: the score of "none of these items", per head
        self.none_score = nn.Parameter(torch.empty(config.num_memory_heads)) if config.slot_write_gate else None
        # with slot_addressing="key": each slot's fixed write query (K, D)
        keyed = config.slot_addressing == "key"
        self.slot_keys = nn.Parameter(torch.empty(config.num_memory_slots, config.memory_dim)) if keyed else None

    def init_weights_from_config(self, config):
        if self.none_score is not None:
            init.zeros_(self.none_score)
        if self.slot_keys is not None:  # the scale of the slot states whose place in the query they take
            init.normal_(self.slot_keys, std=config.initial_memory_std)

    def read(self, memory, items, item_mask) -> tuple[torch.Tensor, torch.Tensor | None]:
        """What each slot reads from the segment (B, K, D), and with the write gate each slot's relevance r_k
        (B, K) in [0, 1], thresholded by `slot_write_threshold` (None without the gate). With key addressing the
        memory is not read and may be None."""
        queries = memory if self.slot_keys is None else self.slot_keys.expand(items.shape[0], -1, -1)  # (B, K, D)
        if self.none_score is None:
            return self.attention(queries, items, item_mask), None
        read, log_mass = self.attention(queries, items, item_mask, return_log_mass=True)  # log_mass (B, h, K)
        relevance = torch.sigmoid(log_mass - self.none_score[:, None]).mean(1)
        if threshold := self.config.slot_write_threshold:
            relevance = (relevance - threshold).clamp(min=0) / (1 - threshold)
        return read, relevance

    def forward(self, memory: torch.Tensor, items: torch.Tensor, item_mask: torch.Tensor, read=None) -> torch.Tensor:
        # memory (B, K, D), items (B, S, E), item_mask (B, S); every row has at least one real item. `read`: this
        # segment's (read, relevance) when already computed (`RehearsalMemorySlots.read_segments`)
        batch, slots, dim = memory.shape
        read, relevance = self.read(memory, items, item_mask) if read is None else read
        updated = self.gru(read.reshape(batch * slots, dim), memory.reshape(batch * slots, dim))
        updated = updated.view(batch, slots, dim)
        if relevance is None:
            return updated
        return memory + relevance.unsqueeze(-1) * (updated - memory)


class RehearsalMemorySlots(RehearsalMemoryBank):
    def __init__(self, config):
        super().__init__()
        self.num_slots, self.dim = config.num_memory_slots, config.memory_dim
        self.initial_memory = nn.Parameter(torch.empty(config.num_memory_slots, config.memory_dim))
        self.writer = RehearsalMemoryWriter(config)

    def init_weights_from_config(self, config):
        init.normal_(self.initial_memory, std=config.initial_memory_std)

    def init_state(self, batch_size: int) -> torch.Tensor:
        return self.initial_memory.unsqueeze(0).expand(batch_size, -1, -1).clone()  # (B, K, D)

    def read_segments(self, items, item_mask):
        """With key addressing what a slot reads of a segment does not depend on its state, so a block of segments
        is read at once and only the GRU updates run in order.
        items (B, n, S, E), item_mask (B, n, S) -> {"read": (B, n, K, D), "relevance": (B, n, K), the latter
        only with the write gate}; None with content addressing, where each write asks with the slots' state."""
        if self.writer.slot_keys is None:
            return None
        batch, count = item_mask.shape[:2]
        items, item_mask = items.flatten(0, 1), item_mask.flatten(0, 1)  # (B * n, S, E), (B * n, S)
        # segments without a real item are not read: an all-masked softmax would put NaNs into the gradients (the
        # model does not write those segments either)
        active = item_mask.any(dim=1).nonzero(as_tuple=True)[0]  # (A,)
        every = active.numel() == batch * count
        if not every:
            items, item_mask = items[active], item_mask[active]
        read, relevance = self.writer.read(None, items, item_mask)  # (A, K, D), (A, K) or None
        reads = {"read": read} if relevance is None else {"read": read, "relevance": relevance}

        def per_segment(tensor):  # (A, ...) -> (B, n, ...), zero for the segments not read
            if not every:
                tensor = tensor.new_zeros(batch * count, *tensor.shape[1:]).index_copy(0, active, tensor)
            return tensor.view(batch, count, *tensor.shape[1:])

        return {name: per_segment(tensor) for name, tensor in reads.items()}

    def write(self, state, items, item_mask, values=None, read=None):
        # read: this segment's share of `read_segments` (a dict of (B, ...) tensors), or None to read here
        read = None if read is None else (read["read"], read.get("relevance"))
        return self.writer(state, items, item_mask, read=read), None

    def view(self, state, query=None):
        return state, None  # every slot is always visible

    def check_state(self, state, batch_size):
        expected = (batch_size, self.num_slots, self.dim)
        dtype = self.initial_memory.dtype
        if not isinstance(state, torch.Tensor) or tuple(state.shape) != expected or state.dtype != dtype:
            raise ValueError(
                f"`memory` must be {dtype} of shape (batch, num_memory_slots, memory_dim) = "
                f"{expected}, got {describe(state)}."
            )
