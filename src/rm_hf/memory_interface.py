"""The interface every memory type follows, and helpers for memory states.

A memory reads a sequence segment by segment and keeps a fixed-size state per sequence; heads and the rehearsal
model read it through `view`. The state is a tensor (the slot memory's (B, K, D) slots) or a dict of tensors
whose first dimension is the batch (the other memory types: entries plus validity, positions, spans, ages).

    state = memory.init_state(batch_size)
    state, loss_sum = memory.write(state, items, item_mask, values)  # items (B, S, E): one segment's features
    entries, weights = memory.view(state, query)                      # (B, N, D), (B, N) / (B, Q, N) or None
    state = reorder_memory(state, index)                              # beams, several questions per memory

This file is copied next to saved checkpoints for `trust_remote_code=True`: it imports only torch.
"""

import torch
from torch import nn

MemoryState = torch.Tensor | dict[str, torch.Tensor]


def reorder_memory(state: MemoryState, index: torch.Tensor) -> MemoryState:
    """The memories of rows `index` (1-D): reorders, drops or repeats sequences, e.g. `torch.zeros(n, dtype=long)`
    gives n copies of the first memory, to ask it n questions at once."""
    if isinstance(state, torch.Tensor):
        return state.index_select(0, index)
    return {name: tensor.index_select(0, index) for name, tensor in state.items()}


def replace_rows(state: MemoryState, index: torch.Tensor, rows: MemoryState) -> MemoryState:
    """`state` with the rows `index` replaced by `rows` (out of place, so autograd sees every step)."""
    if isinstance(state, torch.Tensor):
        return state.index_copy(0, index, rows)
    return {name: tensor.index_copy(0, index, rows[name]) for name, tensor in state.items()}


def item_positions(clock: torch.Tensor, item_mask: torch.Tensor) -> torch.Tensor:
    """Time of each item of a segment (B, S): the row's clock (B,) plus the item's rank among its real items, so
    padding is not time."""
    return clock[:, None] + (item_mask.long().cumsum(1) - 1).clamp_min(0)


def keep_entries(entries: dict[str, torch.Tensor], score: torch.Tensor, capacity: int) -> dict[str, torch.Tensor]:
    """Of every (B, N, ...) tensor, the `capacity` entries per row with the highest `score` (B, N)."""
    keep = score.topk(capacity, dim=1).indices  # (B, capacity)

    def gather(tensor):
        index = keep.view(*keep.shape, *[1] * (tensor.dim() - 2)).expand(-1, -1, *tensor.shape[2:])
        return tensor.gather(1, index)

    return {name: gather(tensor) for name, tensor in entries.items()}


def detach_memory(state: MemoryState) -> MemoryState:
    """Cut the gradient history (truncated back-propagation between calls)."""
    if isinstance(state, torch.Tensor):
        return state.detach()
    return {name: tensor.detach() for name, tensor in state.items()}


class RehearsalMemoryBank(nn.Module):
    """What the memory machine needs from a memory type. Subclasses set `takes_values` when `write` needs one
    discrete value per item (the key-value memory), and document their state."""

    takes_values = False

    def init_state(self, batch_size: int) -> MemoryState:
        raise NotImplementedError

    def write(self, state, items, item_mask, values=None) -> tuple[MemoryState, torch.Tensor | None]:
        """Write one segment into rows that have at least one real item.

        items (B, S, E) encoder features, item_mask (B, S) bool, values (B, S) ids for `takes_values` types; types
        that define `read_segments` also get `read=` this segment's share of it. Returns the new state and the sum
        over the segment's real items of the type's auxiliary loss (None when the type has none); the model divides
        by the number of real items it wrote.
        """
        raise NotImplementedError

    def read_segments(self, items, item_mask) -> dict[str, torch.Tensor] | None:
        """For a type whose write reads a segment without looking at the state: that read for a block of segments
        at once, items (B, n, S, E) and item_mask (B, n, S) -> a dict of (B, n, ...) tensors, handed to `write`
        segment by segment as `read` (a dict of (B, ...) tensors). None (the default): `write` reads itself."""
        return None

    def view(self, state, query=None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Entries to attend to (B, N, D) and their visibility: None (all visible), (B, N), or (B, Q, N) when it
        depends on the query (B, D) / (B, Q, D); bool or float weights in [0, 1]."""
        raise NotImplementedError

    def check_state(self, state, batch_size: int) -> None:
        """ValueError unless `state` is this memory type's state for `batch_size` sequences (names, shapes, dtypes),
        so a memory from another config fails here, not inside a matmul."""
        expected = self.init_state(batch_size)
        if not isinstance(state, dict) or set(state) != set(expected):
            got = sorted(state) if isinstance(state, dict) else describe(state)
            raise ValueError(f"`memory` must be this memory type's state with entries {sorted(expected)}, got {got}.")
        for name, start in expected.items():
            tensor = state[name]
            if not isinstance(tensor, torch.Tensor) or tensor.shape != start.shape or tensor.dtype != start.dtype:
                raise ValueError(f"`memory[{name!r}]` must be {describe(start)}, got {describe(tensor)}.")


def describe(value) -> str:
    """A tensor's dtype and shape, or a non-tensor's type, for error messages."""
    if isinstance(value, torch.Tensor):
        return f"{value.dtype} of shape {tuple(value.shape)}"
    return type(value).__name__


class RehearsalMemoryAgeEncoding(nn.Module):
    """Adds to each entry a learned vector for its age (items written since), bucketed on a log scale, so a reader
    can prefer recent facts; the entries of the item-keeping memories are otherwise order-free."""

    num_buckets = 16  # ages up to 2**15 items get their own bucket; older ones share the last

    def __init__(self, dim: int):
        super().__init__()
        self.embeddings = nn.Embedding(self.num_buckets, dim)

    def forward(self, entries: torch.Tensor, position: torch.Tensor, clock: torch.Tensor) -> torch.Tensor:
        # entries (B, N, D), position (B, N) the time each was written, clock (B,) now; the newest item has age 0
        age = (clock[:, None] - position - 1).clamp_min(0)
        bucket = torch.log2(age.float() + 1).floor().long().clamp(max=self.num_buckets - 1)
        return entries + self.embeddings(bucket)
