"""Per-user Rehearsal Memory for click prediction: write behaviours as they arrive, score candidates from memory.

A request then costs O(K) per candidate (K memory slots) plus at most one partial segment, whatever the
length of the user's history; the history itself is never kept.

Exactness: the memory machine writes a history in segments of `config.segment_length` starting at
position 0. The store therefore keeps, per user, the memory over all *complete* segments plus a pending
buffer of fewer than `segment_length` behaviours. `update` appends to the buffer and writes every segment
it completes; `predict` writes the buffer into a temporary copy of the memory. Scores thus equal the
model's forward pass over the whole history (to float rounding), however the behaviours were split into
updates.

At scale this class is the reference for the value layout, not the store: a user's memory (K x D floats,
e.g. 16 x 64 fp32 = 4 KiB) and pending buffer (< segment_length ids) are the value an existing feature
store or key-value service keeps under the user id. A stream consumer reading the behaviour log calls
`update` outside the request path; the ranking service fetches the value and scores its candidates.
Memories are tied to the weights that wrote them: after retraining, rebuild them by replaying the logs.
We do not build a distributed store; `save` / `load` snapshot one process's store into a safetensors file
(user ids in its metadata, whose 100 MB header limit holds a few million ids), for tests, benchmarks and
small deployments. A snapshot is replaced atomically and carries a SHA-256 of its metadata (user ids included)
and tensors, so a damaged file is refused rather than served, never one user's memory to another. Not
thread-safe.
"""

import hashlib
import json
import logging
import os
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .file_utils import atomic_path, remove_stale_temporaries
from .layers_rehearsal_memory import UNKNOWN_IDS, check_id_range
from .modeling_rehearsal_memory import RehearsalMemoryForClickPrediction

logger = logging.getLogger(__name__)

STORE_FORMAT = "rm_hf.UserMemoryStore/2"  # the checksum covers the metadata and the tensors
UNSIGNED_IDS_FORMAT = "rm_hf.UserMemoryStore/1"  # the checksum covers the tensors only: user ids are unverified


class UserMemoryStore:
    """Each user's memory over complete segments and pending behaviours, for a click-prediction model.

    Users are keyed by `str(user_id)`. An unknown user has the learned initial memory and no behaviours.
    The model is put in eval mode; every method runs without gradients.
    """

    def __init__(self, model: RehearsalMemoryForClickPrediction):
        if model.config.memory_type != "slots":
            # the saved layout is one (K, D) slot tensor per user; the other memory types keep several tensors
            raise ValueError(
                f"UserMemoryStore keeps slot memories (memory_type='slots'); this model has "
                f"memory_type={model.config.memory_type!r}."
            )
        self.model = model.eval()
        self.config = model.config
        # user -> (memory (K, D) over complete segments, pending (P, 3) item/category/behaviour ids, P < S)
        self._users: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def __len__(self) -> int:
        return len(self._users)

    def __contains__(self, user_id) -> bool:
        return str(user_id) in self._users

    @property
    def device(self) -> torch.device:
        return self.model.device

    @torch.no_grad()
    def update(self, user_id, items, categories=None, behaviors=None) -> None:
        """Append a user's new behaviours (1-D ids, oldest first) and write every segment they complete.

        Missing `categories` / `behaviors` are 0, as in the model's forward pass. Costs O(new behaviours).
        """
        new = self._behavior_rows(items, categories, behaviors)  # (N, 3)
        memory, pending = self._state(str(user_id))
        rows = torch.cat([pending, new])
        complete = rows.shape[0] // self.config.segment_length * self.config.segment_length
        if complete:
            memory = self._write(memory, rows[:complete])
        self._users[str(user_id)] = (memory, rows[complete:].clone())

    @torch.no_grad()
    def predict(self, user_id, candidate_items, candidate_categories=None) -> torch.Tensor:
        """Click probabilities (C,) of C candidates (1-D ids) for one user, from the memory alone."""
        return torch.sigmoid(self.logits(user_id, candidate_items, candidate_categories))

    @torch.no_grad()
    def logits(self, user_id, candidate_items, candidate_categories=None) -> torch.Tensor:
        """Click logits (C,) of C candidates for one user: what the model's forward pass gives as `logits`."""
        config = self.config
        items = self._ids(candidate_items, "candidate_items", config.item_vocab_size)
        categories = (
            None
            if candidate_categories is None
            else self._ids(candidate_categories, "candidate_categories", config.category_vocab_size)
        )
        if categories is not None and categories.shape != items.shape:
            raise ValueError(
                f"`candidate_categories` ({len(categories)}) and `candidate_items` ({len(items)}) differ in length."
            )
        memory, pending = self._state(str(user_id))
        if len(pending):
            memory = self._write(memory, pending)  # a temporary memory; the stored one waits for a full segment
        # one memory, C candidates: (1, K, D) and (1, C) -> (1, C)
        return self.model.score(memory[None], items[None], None if categories is None else categories[None])[0]

    def save(self, path: str | os.PathLike) -> Path:
        """Write every user's state to one safetensors file, atomically: a crash leaves the old file intact."""
        path = Path(path)
        users = list(self._users)
        config = self.config
        memories = [memory for memory, _ in self._users.values()]
        pending = [rows for _, rows in self._users.values()]
        tensors = {
            "memories": torch.stack(memories) if users else torch.empty(0, config.num_memory_slots, config.memory_dim),
            "pending": torch.cat(pending) if users else torch.empty(0, 3, dtype=torch.long),
            "pending_lengths": torch.tensor([len(rows) for rows in pending], dtype=torch.long),
        }
        tensors = {name: t.detach().cpu().contiguous() for name, t in tensors.items()}
        metadata = {
            "format": STORE_FORMAT,
            "user_ids": json.dumps(users),
            "segment_length": str(config.segment_length),
        }
        metadata["sha256"] = _digest(tensors, metadata)  # over everything above: a flipped byte cannot rename a user
        with atomic_path(path) as tmp:
            save_file(tensors, tmp, metadata=metadata)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, model: RehearsalMemoryForClickPrediction) -> "UserMemoryStore":
        """Read a store written by `save`, for the model that wrote it.

        A missing file raises FileNotFoundError; a directory, a file that is not a snapshot, or a truncated,
        corrupt or mismatched one raises ValueError naming the file. Files of the previous format
        (`UNSIGNED_IDS_FORMAT`) load with a warning; saving the store again rewrites them in the current one.
        """
        path = Path(path)
        remove_stale_temporaries(path)  # left by a save killed midway
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such file (a UserMemoryStore snapshot written by `save`).")
        if not path.is_file():  # safe_open would fail with "No such device", naming nothing
            kind = "a directory" if path.is_dir() else "a device, pipe or socket"
            raise ValueError(f"{path}: is {kind}, not a UserMemoryStore snapshot (the file `save` writes).")
        try:
            with safe_open(path, framework="pt") as f:
                metadata = f.metadata() or {}
                tensors = {name: f.get_tensor(name) for name in f.keys()}
        except SafetensorError as e:
            raise ValueError(
                f"{path}: not a readable UserMemoryStore file (truncated or corrupt, or not safetensors?): {e}"
            ) from None

        def invalid(reason: str) -> ValueError:
            return ValueError(f"{path}: not a valid UserMemoryStore file: {reason}.")

        file_format = metadata.get("format")
        if file_format not in (STORE_FORMAT, UNSIGNED_IDS_FORMAT):
            raise invalid(f"format {file_format!r}, expected {STORE_FORMAT!r}")
        # the checks below cannot see a flipped byte inside the tensors, nor one that renames a user
        signed = {name: value for name, value in metadata.items() if name != "sha256"}
        if metadata.get("sha256") != _digest(tensors, signed if file_format == STORE_FORMAT else None):
            raise invalid("its contents do not match the sha256 checksum in its metadata (corrupt?)")
        if file_format == UNSIGNED_IDS_FORMAT:
            logger.warning(
                "%s: written as %s, whose checksum does not cover the user ids: they are loaded unverified. "
                "Save the store again to write %s.",
                path,
                UNSIGNED_IDS_FORMAT,
                STORE_FORMAT,
            )
        try:
            users = json.loads(metadata["user_ids"])
        except (KeyError, json.JSONDecodeError):
            raise invalid("no readable user_ids in the metadata") from None
        if not isinstance(users, list) or not all(isinstance(user, str) for user in users):
            raise invalid("user_ids is not a list of strings")
        repeated = [user for user, count in Counter(users).items() if count > 1]
        if repeated:
            raise invalid(f"user ids {repeated[:5]} appear more than once")
        config = model.config
        if metadata.get("segment_length") != str(config.segment_length):
            raise invalid(
                f"written with segment_length {metadata.get('segment_length')}, the model has {config.segment_length}"
            )
        if tensors.keys() != {"memories", "pending", "pending_lengths"}:
            raise invalid(f"tensors {sorted(tensors)}, expected memories, pending, pending_lengths")
        memories, pending, lengths = tensors["memories"], tensors["pending"], tensors["pending_lengths"]
        expected = (len(users), config.num_memory_slots, config.memory_dim)
        if tuple(memories.shape) != expected:
            raise invalid(f"memories of shape {tuple(memories.shape)}, expected (users, K, D) = {expected}")
        if (
            lengths.shape != (len(users),)
            or pending.dim() != 2
            or pending.shape[1] != 3
            or int(lengths.sum()) != pending.shape[0]
            or bool((lengths >= config.segment_length).any())
        ):
            raise invalid("pending buffers do not match pending_lengths")

        store = cls(model)
        memories = memories.to(store.device, model.dtype)
        buffers = pending.to(store.device).split(lengths.tolist())
        store._users = {user: (memory, rows) for user, memory, rows in zip(users, memories, buffers, strict=True)}
        return store

    def _state(self, user: str) -> tuple[torch.Tensor, torch.Tensor]:
        initial = (
            self.model.rehearsal_memory.init_memory(1)[0],
            torch.empty(0, 3, dtype=torch.long, device=self.device),
        )
        return self._users.get(user, initial)

    def _write(self, memory: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        # memory (K, D), rows (N, 3) -> (K, D); N a multiple of segment_length except for the pending tail
        return self.model.write(memory[None], rows[:, 0][None], rows[:, 1][None], rows[:, 2][None])[0]

    def _behavior_rows(self, items, categories, behaviors) -> torch.Tensor:
        """Validated (N, 3) item / category / behaviour ids; ids enter the pending buffer unwritten, so they
        are checked here rather than when their segment is complete."""
        items = self._ids(items, "items", self.config.item_vocab_size)
        columns = [items]
        for values, name, vocab_size in (
            (categories, "categories", self.config.category_vocab_size),
            (behaviors, "behaviors", self.config.behavior_vocab_size),
        ):
            ids = torch.zeros_like(items) if values is None else self._ids(values, name, vocab_size)
            if ids.shape != items.shape:
                raise ValueError(f"`{name}` ({len(ids)}) and `items` ({len(items)}) differ in length.")
            columns.append(ids)
        return torch.stack(columns, dim=1)

    def _ids(self, values, name: str, vocab_size: int) -> torch.Tensor:
        """`values` as a 1-D long tensor of ids in [0, vocab_size) on the model's device, or a ValueError naming
        `name`: a plain cast would truncate 1.9 to 1, read True as 1 and turn NaN into an arbitrary id."""
        if isinstance(values, (list, tuple)) and any(isinstance(value, (bool, np.bool_)) for value in values):
            raise ValueError(f"`{name}` must hold integer ids, got a bool.")  # numpy reads [True, 5] as [1, 5]
        try:
            # through numpy, Python floats become float64: torch's float32 would round ids above 2**24
            ids = values if isinstance(values, torch.Tensor) else torch.from_numpy(np.array(values))
        except (TypeError, ValueError) as e:  # strings, None, ragged lists
            raise ValueError(f"`{name}` must be a 1-D sequence of integer ids: {e}") from None
        if ids.dtype == torch.bool or ids.is_complex():
            raise ValueError(f"`{name}` must hold integer ids, got {ids.dtype}.")
        if ids.dim() != 1:
            raise ValueError(f"`{name}` must be a 1-D sequence of ids, got shape {tuple(ids.shape)}.")
        if ids.is_floating_point():
            exact = (ids == ids.trunc()) & (ids.abs() < 2**63)  # NaN and inf fail too
            if not bool(exact.all()):
                raise ValueError(f"`{name}` must hold integer ids, got {ids[~exact][0].item()}.")
        ids = ids.to(self.device, torch.long)  # uint64 ids past 2**63 wrap negative and fail the range check
        check_id_range(ids, vocab_size, name, UNKNOWN_IDS)
        return ids


def _digest(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None) -> str:
    """SHA-256 over `metadata` (sorted JSON; None for the format that left it out) then the names, dtypes,
    shapes and bytes of CPU tensors, in name order."""
    digest = hashlib.sha256()
    if metadata is not None:
        digest.update(json.dumps(metadata, sort_keys=True).encode())
    for name in sorted(tensors):
        tensor = tensors[name].contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.view(torch.uint8).numpy().data)
    return digest.hexdigest()
