"""The rehearsal objective (training only): a history sampler S picks fragments of the input, and a rehearsal
model H solves self-supervised tasks about them from the memory alone.

`RehearsalMemoryObjective` owns S, H and the teacher of `sampler_mode="teacher"`; a head holds one when
`config.use_rehearsal` and calls it in training with what it has (the memory machine's output, the query, the
labels); it returns every loss term in one `RehearsalMemoryObjectiveOutput`. `combine_losses` weights and adds
a head's terms for any training loop (the Trainer and the benchmarks use it).

The rehearsal model H reads `[CLS] + fragment items` with a small bidirectional transformer and
cross-attends to the memory of the fragment's own sequence (fragments are paired with memories by `repeat_interleave`; `repeat` would pair
them with other sequences' memories).
- Recollection: a fraction of the fragment's items is replaced by a learned [MASK] vector and
  reconstructed: token ids by cross-entropy through the tied input embeddings, feature vectors by
  InfoNCE against the other masked items of the batch (copies of the item's own target left out).
- Familiarity: a negative copy of the masked fragment has a fraction of its unmasked items replaced by
  items of another sequence that its own sequence does not hold **[our choice: otherwise, in long generated
  stories, nearly every replacement is a sentence of the story itself]** (with batch size 1, by items of
  another part of the same sequence); the [CLS] output scores "this fragment is from my memory" with a
  logistic loss -[log s+ + log(1 - s-)] (the paper prints the sign wrong).
Recollection is measured in units of its chance level **[our choice]**: each item's cross-entropy divided by the
log of its number of candidates (the vocabulary, or its InfoNCE target and negatives), so 1 means no better than
guessing whatever the vocabulary or batch size, and its weight means the same for tokens and features (raw, it
ran at 6.0 against a task loss of 0.03 at the end of the retention benchmark, and its gradient outweighed the
task's). Losses are averaged over real masked items and real fragments (rows without real items, such as empty
histories, add nothing); everything is batched over sequences and fragments.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init

from .history_sampler import (
    RehearsalMemoryHistorySampler,
    RehearsalMemoryTeacher,
    age_buckets,
    fragment_summaries,
    valid_starts,
)
from .memory_interface import reorder_memory

# Loss weights (the Trainer's defaults): a public re-implementation's 1.0 and 0.5 for recollection and familiarity;
# the paper's are unknown. The rehearsal terms may be scaled (warm-up, decay); the memory type's own loss never is.
LOSS_WEIGHTS = {"recollection_loss": 1.0, "familiarity_loss": 0.5, "sampler_loss": 1.0, "memory_loss": 1.0}
REHEARSAL_TERMS = ("recollection_loss", "familiarity_loss", "sampler_loss")


def combine_losses(outputs, weights: dict[str, float] = LOSS_WEIGHTS, rehearsal_scale: float = 1.0) -> torch.Tensor:
    """The training loss of a head's outputs: the task loss plus each extra term present, weighted (a missing
    weight counts as its default). Terms at weight 0 are still added, so every parameter keeps a gradient (DDP
    without unused parameters)."""
    loss = outputs["loss"]
    for name, default in LOSS_WEIGHTS.items():
        term = outputs.get(name)
        if term is not None:
            loss = loss + weights.get(name, default) * (rehearsal_scale if name in REHEARSAL_TERMS else 1.0) * term
    return loss


def gather_items(values: torch.Tensor, rows: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """values (B, T, ...), rows (N,) and positions (N, J, R) -> (N, J, R, ...): item positions[n, j, r] of sequence
    rows[n]. One lookup in the flattened batch, so its backward adds into one (B * T, ...) gradient, however many
    rows and fragments are read."""
    flat = (rows.view(-1, 1, 1) * values.shape[1] + positions).flatten()  # (N * J * R,)
    return values.flatten(0, 1).index_select(0, flat).view(*positions.shape, *values.shape[2:])


def identity_keys(inputs: torch.Tensor) -> torch.Tensor:
    """(B, T) ids -> themselves; (B, T, F) features -> (B, T) keys, equal for equal feature vectors: their
    projection, in float64, on a fixed random direction (two different items share a key with probability ~0)."""
    if not inputs.is_floating_point():
        return inputs
    direction = torch.randn(inputs.shape[-1], generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return inputs.detach().double() @ direction.to(inputs.device)


def random_subset(candidates: torch.Tensor, ratio: float) -> torch.Tensor:
    """Pick about `ratio` of the True entries of each row of (N, R), at least one where any exist."""
    noise = torch.rand(candidates.shape, device=candidates.device).masked_fill(~candidates, 2.0)
    count = (candidates.sum(dim=-1, keepdim=True) * ratio).round().clamp(min=1)  # (N, 1)
    rank = noise.argsort(dim=-1).argsort(dim=-1)  # rank of each entry's noise within its row
    return candidates & (rank < count)


def visible_entries(weights: torch.Tensor) -> torch.Tensor:
    """(B, N) memory weights -> (B, N) bool, every entry visible in a row that sees none (an empty memory), which
    would otherwise make the cross-attention NaN. Soft weights count as visible (the rehearser does not scale by
    them)."""
    visible = weights > 0 if weights.is_floating_point() else weights
    return visible | ~visible.any(dim=-1, keepdim=True)


class RehearsalMemoryRehearser(nn.Module):
    """H: recollection and familiarity on fragments, from the memory of the fragment's own sequence."""

    def __init__(self, config):
        super().__init__()
        hidden = config.rehearsal_hidden_size
        item_dim = config.encoder_config.hidden_size
        self.mask_ratio = config.rehearsal_mask_ratio
        self.replace_ratio = config.rehearsal_replace_ratio
        self.fragment_length = config.rehearsal_fragment_length
        self.temperature = config.infonce_temperature
        # items and memory enter at unit scale (LayerNorm), like the [MASK] and [CLS] vectors; at the
        # initializer's 0.02 scale the [CLS] state barely depends on the fragment and familiarity cannot start
        self.item_projection = nn.Sequential(nn.Linear(item_dim, hidden), nn.LayerNorm(hidden))
        self.memory_projection = nn.Sequential(nn.Linear(config.memory_dim, hidden), nn.LayerNorm(hidden))
        self.mask_embedding = nn.Parameter(torch.empty(hidden))
        self.cls_embedding = nn.Parameter(torch.empty(hidden))
        self.position_embeddings = nn.Embedding(config.rehearsal_fragment_length + 1, hidden)
        layer = nn.TransformerDecoderLayer(
            hidden, config.rehearsal_num_heads, 4 * hidden, dropout=0.0, batch_first=True, norm_first=True
        )
        self.layers = nn.TransformerDecoder(layer, config.rehearsal_num_layers, norm=nn.LayerNorm(hidden))
        self.familiarity_head = nn.Linear(hidden, 1)
        # token inputs: back to the embedding width, scored against the tied input embeddings;
        # feature inputs: into the raw feature space, scored by InfoNCE
        target_dim = config.input_feature_dim if config.input_feature_dim is not None else item_dim
        self.recollection_head = nn.Linear(hidden, target_dim)

    def init_weights_from_config(self, config):
        init.normal_(self.mask_embedding, std=1.0)  # unit scale, like the normalised items
        init.normal_(self.cls_embedding, std=1.0)

    def forward(
        self, memory, memory_weights, inputs, attention_mask, rows, starts, embed_items, token_embeddings=None
    ):
        """(recollection, familiarity) losses of the sequences `rows` (B,) of a batch. memory (B, N, D): their
        memories' entries (a memory's `view`), with their weights (None or (B, N)); inputs (B0, T) token ids or
        (B0, T, F) features of the whole batch, which recollection reconstructs (the other sequences give
        familiarity's negatives); attention_mask (B0, T); starts (B, J); embed_items: the memory machine's
        context-free item embedding (ids or features -> (..., E)), applied to the few items fragments and negatives
        hold rather than to the whole input. `token_embeddings` (V, E): the tied input embedding table, for token
        inputs."""
        batch, num_frags = starts.shape
        offsets = torch.arange(self.fragment_length, device=starts.device)
        positions = (starts.unsqueeze(-1) + offsets).clamp(max=attention_mask.shape[1] - 1)  # (B, J, R)
        valid = gather_items(attention_mask.bool(), rows, positions) & (
            starts.unsqueeze(-1) + offsets < attention_mask.shape[1]
        )
        fragment_inputs = gather_items(inputs, rows, positions)  # (B, J, R) ids or (B, J, R, F)
        items = self.item_projection(embed_items(fragment_inputs))  # (B, J, R, H)
        masked = random_subset(valid.flatten(0, 1), self.mask_ratio).view_as(valid)  # (B, J, R)
        items = torch.where(masked.unsqueeze(-1), self.mask_embedding.to(items.dtype), items)

        donors, foreign = self.donor_items(inputs, attention_mask, rows, positions)  # (B, J, R) ids or (B, J, R, F)
        # only an item its sequence does not hold makes a fragment unfamiliar: replace among those
        replaced = random_subset((valid & ~masked & foreign).flatten(0, 1), self.replace_ratio).view_as(valid)
        negatives = torch.where(replaced.unsqueeze(-1), self.item_projection(embed_items(donors)), items)

        # positives and negatives in one pass: (2 * B * J, 1 + R, H)
        fragments = torch.cat([items, negatives]).flatten(0, 1)
        cls = self.cls_embedding.to(items.dtype).expand(fragments.shape[0], 1, -1)
        hidden = torch.cat([cls, fragments], dim=1) + self.position_embeddings.weight
        key_mask = torch.cat([valid.new_ones(valid.shape[:2] + (1,)), valid], dim=-1).flatten(0, 1).repeat(2, 1)
        # each fragment attends to its own sequence's memory: (B, N, D) -> (2 * B * J, N, H)
        own_memory = self.memory_projection(memory).repeat_interleave(num_frags, dim=0).repeat(2, 1, 1)
        hidden = self.layers(
            hidden,
            own_memory,
            tgt_key_padding_mask=~key_mask,
            memory_key_padding_mask=(
                None
                if memory_weights is None
                else ~visible_entries(memory_weights).repeat_interleave(num_frags, 0).repeat(2, 1)
            ),
        )

        scores = self.familiarity_head(hidden[:, 0]).view(2, batch * num_frags)  # row 0: positives, 1: negatives
        labels = torch.stack([torch.ones_like(scores[0]), torch.zeros_like(scores[1])])
        # a fragment too short to have an item replaced has no real negative: leave it out
        real = replaced.flatten(0, 1).any(dim=-1).to(scores.dtype).expand(2, -1)
        familiarity = F.binary_cross_entropy_with_logits(scores, labels, weight=real, reduction="sum")
        familiarity = familiarity / real.sum().clamp_min(1)
        predictions = self.recollection_head(hidden[: batch * num_frags, 1:])  # (B * J, R, target_dim)
        predictions = predictions[masked.flatten(0, 1)]  # (N_masked, target_dim)
        masked_targets = fragment_inputs[masked]  # (N_masked,) ids or (N_masked, F)
        if not len(masked_targets):  # no real item in the whole batch: nothing to recollect (a mean would be NaN)
            recollection = predictions.sum()
        elif token_embeddings is not None:
            logits = predictions @ token_embeddings.t()  # (N_masked, V)
            recollection = F.cross_entropy(logits, masked_targets) / math.log(logits.shape[-1])
        else:
            # targets may be learned embeddings (click items): detached, so they are not pulled towards predictions
            recollection = self.info_nce(predictions, masked_targets.detach())
        return recollection, familiarity

    def donor_items(self, inputs, attention_mask, rows, positions):
        """Candidate replacements for familiarity's negatives, one per fragment position: (B, J, R) ids or
        (B, J, R, F), and (B, J, R) bool, whether each is foreign to the fragment's sequence. rows (B,), positions
        (B, J, R) as for `forward`.

        They come from another sequence of the batch, drawn among the items the fragment's own sequence does not
        hold: in generated stories of 1,000 sentences, 95% of another story's sentences also occur in the story
        itself (158-167 distinct sentences each), so a negative made of them is the story's own content and no
        memory can tell it apart (familiarity stayed at ln 2). With one sequence in the batch, or a partner without
        foreign items, they come from another part of the same sequence (a negative of misplaced items)."""
        batch, num_frags, length = positions.shape
        donors, foreign = rows, torch.zeros(batch, attention_mask.shape[1], dtype=torch.bool, device=rows.device)
        if len(inputs) > 1:
            donors = (rows + torch.randint(1, len(inputs), rows.shape, device=rows.device)) % len(inputs)
            keys = identity_keys(inputs)  # (B0, T): equal keys for equal items
            own_keys = keys[rows].sort(dim=1).values  # (B, T); padding included, which at worst hides a foreign item
            partner_keys = keys[donors]
            found = own_keys.gather(1, torch.searchsorted(own_keys, partner_keys).clamp(max=keys.shape[1] - 1))
            foreign = (found != partner_keys) & attention_mask[donors].bool()  # (B, T) real items the row lacks
            donors = torch.where(foreign.any(dim=1), donors, rows)
            foreign &= (donors != rows).unsqueeze(1)
        real = attention_mask[donors].float().unsqueeze(1).expand(-1, num_frags, -1)  # (B, J, T)
        outside = torch.ones(batch, num_frags, attention_mask.shape[1], device=positions.device)
        outside.scatter_(2, positions, 0.0)  # 0 on the row's own fragment
        own = (donors == rows)[:, None, None]
        weights = torch.where(own, real * outside, foreign.unsqueeze(1).float())
        # A fragment that covers its whole row draws from itself; a row without real items draws padding, which is
        # never used: it has no items to replace. (multinomial fails on all-zero weights.)
        for fallback in (real, torch.ones_like(outside)):
            weights = torch.where(weights.sum(-1, keepdim=True) > 0, weights, fallback)
        picks = torch.multinomial(weights.reshape(batch * num_frags, -1), length, replacement=True)
        picks = picks.view(batch, num_frags, length)
        usable = own | foreign.gather(1, picks.flatten(1)).view_as(picks)  # a fallback draw may not be foreign
        return gather_items(inputs, donors, picks), usable & gather_items(attention_mask.bool(), donors, picks)

    def info_nce(self, predictions, targets):
        # every other masked item of the batch is a negative for this one, except copies of its own target (the
        # same sentence or item elsewhere in the batch): counted as negatives they would put the loss's floor at
        # ln(copies) and push a right prediction away from itself
        logits = F.normalize(predictions, dim=-1) @ F.normalize(targets, dim=-1).t() / self.temperature  # (N, N)
        copy_id = torch.unique(targets, dim=0, return_inverse=True)[1]  # (N,)
        copies = copy_id.unsqueeze(0) == copy_id.unsqueeze(1)
        copies.fill_diagonal_(False)
        logits = logits.masked_fill(copies, float("-inf"))
        candidates = (~copies).sum(-1).float()  # (N,) each item's own target and its negatives
        losses = F.cross_entropy(logits, torch.arange(len(targets), device=logits.device), reduction="none")
        return (losses / torch.log(candidates.clamp_min(2))).mean()


@dataclass
class RehearsalMemoryObjectiveOutput:
    """The rehearsal objective's terms for one batch. `sampler_loss` (the teacher's task loss) exists with
    `sampler_mode="teacher"` only; `draw_fragments` says what is rehearsed."""

    recollection_loss: torch.Tensor
    familiarity_loss: torch.Tensor
    sampler_loss: torch.Tensor | None

    def loss_terms(self) -> dict[str, torch.Tensor | None]:
        """The terms under the names a head's output gives them."""
        return {name: getattr(self, name) for name in REHEARSAL_TERMS}


class RehearsalMemoryObjective(nn.Module):
    """Sampler, teacher and rehearser in one module; a head builds it with its number of task outputs (answer
    classes, or 1 for a click logit), so the teacher answers the same task."""

    def __init__(self, config, num_outputs: int):
        super().__init__()
        self.sampler = RehearsalMemoryHistorySampler(config)
        self.rehearser = RehearsalMemoryRehearser(config)
        self.teacher = RehearsalMemoryTeacher(config, num_outputs) if config.sampler_mode == "teacher" else None
        self.batch_fraction = config.rehearsal_batch_fraction

    def forward(self, machine, written, story, query=None, labels=None, fragment_weights=None):
        """Rehearse a batch that `machine` (the RehearsalMemoryModel) has just written (with `output_item_features`
        for the teacher, which reads the item features).

        written: its output; story: the inputs it wrote (`input_ids` or `input_features`, `attention_mask`);
        query (B, D): the task query, and labels, for the teacher; fragment_weights (B, T): importance per item,
        for `sampler_mode="external"`.
        """
        # the sequences rehearsed this step: a random share of the batch (all by default); everything below,
        # sampler and teacher included, sees only them, so its cost scales with the share
        inputs, attention_mask = story_targets(story)
        rows = torch.randperm(len(inputs), device=inputs.device)[: math.ceil(self.batch_fraction * len(inputs))]
        rows = rows.sort().values  # in batch order (all rows: the batch itself)
        query, labels, fragment_weights, item_features = (
            None if x is None else x[rows] for x in (query, labels, fragment_weights, written.item_features)
        )
        starts, sampler_loss = self.draw_fragments(
            item_features, attention_mask[rows], query, labels, fragment_weights
        )
        token_table = machine.get_input_embeddings().weight if story.get("input_features") is None else None
        kind = "input_ids" if token_table is not None else "input_features"
        entries, weights = machine.view_memory(reorder_memory(written.memory, rows))
        recollection, familiarity = self.rehearser(
            entries,
            weights,
            inputs,
            attention_mask,
            rows,
            starts,
            lambda items: machine.embed_items(**{kind: items}),
            token_table,
        )
        return RehearsalMemoryObjectiveOutput(recollection, familiarity, sampler_loss)

    def draw_fragments(self, item_features, attention_mask, query=None, labels=None, fragment_weights=None):
        """The fragment starts (B, J) to rehearse, and the sampler's loss (the teacher's task loss, given labels, with
        `sampler_mode="teacher"`; None otherwise). item_features (B, T, E): the memory machine's, for the teacher
        (None otherwise); attention_mask (B, T); the others as for `forward`."""
        teacher_scores = sampler_loss = None
        if self.teacher is not None:
            if query is None:
                raise ValueError("sampler_mode='teacher' needs the task query (the head passes it).")
            length = self.sampler.fragment_length
            if item_features is None:
                raise ValueError("sampler_mode='teacher' needs the item features (`output_item_features=True`).")
            summaries = fragment_summaries(item_features.detach(), attention_mask, length)  # (B, T, E)
            teacher_scores, teacher_logits = self.teacher(
                summaries, valid_starts(attention_mask, length), query.detach(), age_buckets(attention_mask)
            )
            if labels is not None:
                sampler_loss = task_loss(teacher_logits, labels)
        return self.sampler(attention_mask, fragment_weights, teacher_scores), sampler_loss


def story_targets(story: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """What recollection reconstructs (token ids (B, T) or features (B, T, F)) and the attention mask (B, T)."""
    targets = story["input_features"] if story.get("input_features") is not None else story["input_ids"]
    attention_mask = story.get("attention_mask")
    if attention_mask is None:
        attention_mask = torch.ones(targets.shape[:2], dtype=torch.long, device=targets.device)
    return targets, attention_mask


def task_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over answer classes (B, C) with class ids, or the logistic loss of one logit (B,) / (B, 1)
    with 0/1 labels: the heads' task losses, shared with the teacher."""
    if logits.dim() == 2 and logits.shape[-1] > 1:
        return F.cross_entropy(logits, labels)
    return F.binary_cross_entropy_with_logits(logits.reshape(labels.shape), labels.to(logits.dtype))
