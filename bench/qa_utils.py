"""Helpers shared by `bench_rehearsal.py`, `bench_forgetting.py` and `bench_babilong.py`: the small QA task and
model, --config overrides of its config, a plain training loop, batched predictions under `torch.inference_mode()`,
the sampler's supporting-fact coverage, and trained models kept in --models_dir with their training record."""

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from rm_hf import RehearsalMemoryConfig, RehearsalMemoryForQuestionAnswering
from rm_hf.babi import answer_vocabulary
from rm_hf.qa_data import QACollator, encode_qa_dataset
from rm_hf.rehearsal import LOSS_WEIGHTS, combine_losses
from rm_hf.tokenization import build_word_tokenizer

BATCH_SIZE = 32  # stories per training step


def build_task(train_raw, test_raw):
    """Word tokenizer (from the training stories), answer list, and the encoded train and test rows."""
    tokenizer = build_word_tokenizer(s for row in train_raw for s in (*row["story"], row["question"]))
    answers = answer_vocabulary([train_raw, test_raw])
    label2id = {a: i for i, a in enumerate(answers)}
    train = list(encode_qa_dataset(train_raw, tokenizer, label2id))
    test = list(encode_qa_dataset(test_raw, tokenizer, label2id))
    return tokenizer, answers, train, test


# the segment encoder of the benchmarks' models; `--config encoder.FIELD=VALUE` changes a field
ENCODER_DEFAULTS = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 256,
                    "max_position_embeddings": 64}  # fmt: skip
ENCODER_PREFIX = "encoder."


def make_model(tokenizer, answers, story_items="tokens", **overrides):
    """A small QA model; with `story_items="sentences"` each sentence is one item, written 4 per segment (the
    setting that learns bAbI task 1), otherwise tokens, 32 per segment; `overrides` may change either, and keys
    `encoder.FIELD` change the segment encoder (`encoder.num_hidden_layers=0`: no attention among a segment's
    items)."""
    encoder = {
        key.removeprefix(ENCODER_PREFIX): value for key, value in overrides.items() if key.startswith(ENCODER_PREFIX)
    }
    fields = {key: value for key, value in overrides.items() if not key.startswith(ENCODER_PREFIX)}
    config = RehearsalMemoryConfig(
        encoder_config={"vocab_size": len(tokenizer), **ENCODER_DEFAULTS, **encoder},
        id2label=dict(enumerate(answers)), story_items=story_items,
        **{"segment_length": 4 if story_items == "sentences" else 32, **fields},
    )  # fmt: skip
    return RehearsalMemoryForQuestionAnswering(config)


def parse_override(text: str) -> tuple[str, object]:
    """KEY=VALUE, the value read as JSON where it parses (numbers, true/false), else as a string."""
    key, sep, value = text.partition("=")
    if not (sep and key):
        raise argparse.ArgumentTypeError(
            f"a config override is KEY=VALUE (e.g. rehearsal_replace_ratio=1.0), got {text!r}"
        )
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def check_overrides(overrides: dict, encoder: bool = False) -> dict:
    """`overrides` if every key is a `RehearsalMemoryConfig` field (or with `encoder`, `encoder.FIELD` for a field of
    `ENCODER_DEFAULTS`): the config keeps an unknown keyword as a plain attribute, so a misspelt override would change
    nothing and say nothing."""
    known = {field.name for field in dataclasses.fields(RehearsalMemoryConfig)}
    if encoder:
        known |= {ENCODER_PREFIX + name for name in ENCODER_DEFAULTS}
    if unknown := sorted(set(overrides) - known):
        hint = (
            f"; encoder fields as encoder.FIELD, FIELD one of {', '.join(sorted(ENCODER_DEFAULTS))}" if encoder else ""
        )
        raise ValueError(f"--config: not RehearsalMemoryConfig fields: {', '.join(unknown)}{hint}")
    return overrides


def differing(settings: dict, stored: dict) -> list[str]:
    """The keys whose values differ between two settings dicts (either may lack a key)."""
    return sorted(key for key in settings.keys() | stored.keys() if settings.get(key) != stored.get(key))


# a model kept in --models_dir: its folder (save_pretrained's files and the tokenizer's) holds this record too,
# written last, so a folder without it holds no finished model
KEPT_RECORD = "training_record.json"


def kept_run(folder: Path, training: dict) -> dict | None:
    """The training record of the model kept in `folder` (--models_dir), None if none is kept there; stops if that
    model was trained with other settings rather than test it under this run's name."""
    path = folder / KEPT_RECORD
    if not path.exists():
        return None
    kept = json.loads(path.read_text())
    if kept["settings"] != training:
        sys.exit(f"{folder} keeps a model trained with other settings ({', '.join(differing(training, kept['settings']))}"
                 f"): choose another --models_dir")  # fmt: skip
    print(f"testing the model kept in {folder} (trained earlier, not retrained)", flush=True)
    return kept["run"]


def keep_model(folder: Path, model, tokenizer, training: dict, run: dict) -> None:
    """Save a trained model and its tokenizer in `folder`, then the record `kept_run` reads back."""
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / KEPT_RECORD).write_text(json.dumps({"settings": training, "run": run}, indent=2) + "\n")


def load_kept_model(model_class, folder, test_config: dict):
    """A kept model loaded for testing with `test_config`'s config fields set (e.g. slot_write_threshold, read at
    every write); they are checked here, as from_pretrained sets its keyword arguments without checking them."""
    model = model_class.from_pretrained(folder, **test_config).eval()
    model.config.validate()
    return model


def start_from_kept_model(model, tokenizer, answers: list[str], folder: Path) -> None:
    """Give a new `model` the weights of the model kept in `folder` (an earlier run's --models_dir entry), so that a
    run can continue another's training, e.g. on other question types: tensors of the same shape are copied, and
    those whose rows follow the vocabulary (word embeddings) or the answers (the answer layer) row by row for the
    words and answers both have; the others keep their fresh values. Stops when a weight has no counterpart."""
    source = RehearsalMemoryForQuestionAnswering.from_pretrained(folder)
    source_vocab = type(tokenizer).from_pretrained(folder).get_vocab()
    source_answers = {source.config.id2label[i]: i for i in range(source.config.num_labels)}
    vocab = tokenizer.get_vocab()
    by_word = [(i, source_vocab[word]) for word, i in vocab.items() if word in source_vocab]
    by_answer = [(i, source_answers[answer]) for i, answer in enumerate(answers) if answer in source_answers]
    # (new row, kept row) pairs of the tensors whose rows follow the words or the answers: even at one size, the two
    # tokenizers number their words by frequency in their own stories
    rows_of = {"word_embeddings.weight": by_word, "classifier.weight": by_answer, "classifier.bias": by_answer}
    kept, mismatched = source.state_dict(), []
    with torch.no_grad():
        for name, weight in model.state_dict().items():
            rows = next((pairs for end, pairs in rows_of.items() if name.endswith(end)), None)
            given = kept.get(name)
            if given is None or given.shape[1:] != weight.shape[1:] or (rows is None and given.shape != weight.shape):
                mismatched.append(f"{name} {tuple(weight.shape)} (kept: {given is not None and tuple(given.shape)})")
            elif rows is None:
                weight.copy_(given)
            else:
                new_rows, kept_rows = zip(*rows) if rows else ((), ())
                weight[list(new_rows)] = given[list(kept_rows)]
    if mismatched:
        sys.exit(f"--init_from {folder}: its model is not this run's model with other words or answers; "
                 f"no counterpart for {', '.join(mismatched)}")  # fmt: skip


def choose_kept_model(folder: Path) -> dict:
    """The model a run starts from with --init_from FOLDER, and what it cost: FOLDER itself if it keeps a model, else
    of the models kept in its entries (an earlier run's --models_dir, one per seed) the one whose training ended with
    the lowest answer loss, with every entry's loss and CPU seconds (the seeds not chosen cost as much). The first
    stage of a warm start is such a draw: a seed finds a write that keeps what is asked about, or not, and that loss
    tells them apart (README, Results, "Warm start")."""
    if (folder / KEPT_RECORD).exists():
        run = json.loads((folder / KEPT_RECORD).read_text())["run"]
        return {"model": str(folder), "train_cpu_seconds": run.get("train_cpu_seconds")}
    runs = {path.parent: json.loads(path.read_text())["run"] for path in sorted(folder.glob(f"*/{KEPT_RECORD}"))}
    if not runs:
        sys.exit(f"--init_from {folder}: keeps no model ({KEPT_RECORD}), and none of its entries does")
    among = {path.name: {"answer_loss": run["final_losses"]["loss"], "train_cpu_seconds": run["train_cpu_seconds"]}
             for path, run in runs.items()}  # fmt: skip
    best = min(runs, key=lambda path: among[path.name]["answer_loss"])
    losses = ", ".join(f"{name} {run['answer_loss']:.3f}" for name, run in among.items())
    print(f"--init_from {folder}: starting from {best.name}, the lowest final answer loss of {losses}", flush=True)
    return {"model": str(best), "train_cpu_seconds": among[best.name]["train_cpu_seconds"], "chosen_among": among}


def collator(model) -> QACollator:
    return QACollator(sentence_items=model.config.story_items == "sentences")


def train(model, train_rows, steps, seed, batch_size=BATCH_SIZE, lr=2e-3, final_steps=50, schedule="constant") -> dict:
    """`train_stages` on one stage."""
    return train_stages(model, [(train_rows, steps)], seed, batch_size, lr, final_steps, schedule)


def train_stages(
    model,
    stages,
    seed,
    batch_size=BATCH_SIZE,
    lr=2e-3,
    final_steps=50,
    schedule="constant",
    rename=None,
    fragment_teacher=None,
) -> dict:
    """Plain AdamW loop through `stages` [(rows, steps), ...] in order, each read in shuffled passes (the Trainer's
    loss: task + recollection + 0.5 familiarity + sampler + the memory type's own loss). `schedule`: a constant
    learning rate, or "linear": 5% warm-up, then linear decay to 0 at the last step of the last stage (one optimizer
    and one schedule across the stages). `rename` (a `NamePermutation`) renames each training example's names at
    random every time it is read. `fragment_teacher` (a trained `MemN2NForQuestionAnswering`) gives each batch's
    fragment weights, for `sampler_mode="external"` (the two-stage teacher). Leaves the model in eval mode and
    returns the median step time of the last stage, the training's process CPU seconds, and each loss term averaged
    over the last `final_steps` steps; under "stages", the same three for each stage."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    collate = collator(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    total = sum(steps for _, steps in stages)
    warmup = max(1, total // 20)
    if schedule == "linear":
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: min((step + 1) / warmup, max(0.0, (total - step) / max(1, total - warmup)))
        )
    elif schedule == "constant":
        scheduler = None
    else:
        raise ValueError(f"schedule must be constant or linear, got {schedule!r}")
    records = []
    model.train()
    for rows, steps in stages:
        step_times, terms = [], {}
        cpu_start = time.process_time()
        # batches in a shuffled order, reshuffled after each pass: every story is read once before any is read again
        order = []
        for _ in tqdm(range(steps), desc="train", leave=False):
            while len(order) < batch_size:
                order += torch.randperm(len(rows)).tolist()
            examples = [rows[i] for i in order[:batch_size]]
            batch = collate(examples if rename is None else [rename(example, rng) for example in examples])
            if fragment_teacher is not None:
                batch["fragment_weights"] = fragment_teacher.sentence_importance(**batch)
            del order[:batch_size]
            start = time.perf_counter()
            outputs = model(**batch)
            loss = combine_losses(outputs)  # the Trainer's default weights
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            step_times.append(time.perf_counter() - start)
            for name in ("loss", *LOSS_WEIGHTS):
                if outputs.get(name) is not None:
                    terms.setdefault(name, []).append(outputs[name].item())
        records.append({
            "median_step_seconds": statistics.median(step_times) if step_times else float("nan"),
            "train_cpu_seconds": time.process_time() - cpu_start,
            "final_losses": {name: statistics.fmean(values[-final_steps:]) for name, values in terms.items()},
        })  # fmt: skip
    model.eval()
    return {**records[-1], "train_cpu_seconds": sum(r["train_cpu_seconds"] for r in records), "stages": records}


def predict(model, rows, batch_size=128):
    """Predicted answer id per row, reading each story into memory and answering from the memory alone."""
    collate = collator(model)
    model.eval()
    predictions = []
    with torch.inference_mode():
        for first in range(0, len(rows), batch_size):
            batch = collate(rows[first : first + batch_size])
            batch.pop("fragment_weights")
            batch.pop("labels")
            predictions += model(**batch).logits.argmax(-1).tolist()
    return predictions


def train_and_test(model, train_rows, test_rows, steps, seed, batch_size=BATCH_SIZE, lr=2e-3):
    """Train, then return (test accuracy, median training-step seconds)."""
    step_time = train(model, train_rows, steps, seed, batch_size, lr)["median_step_seconds"]
    predictions = predict(model, test_rows)
    correct = sum(p == int(row["labels"]) for p, row in zip(predictions, test_rows))
    return correct / len(test_rows), step_time


def fragment_coverage(model, rows, draws=5, fragment_teacher=None):
    """Share of fragments drawn by the model's sampler that contain a supporting-fact item (token or sentence).
    `fragment_teacher`: the two-stage teacher the model was trained with, whose weights an external sampler draws
    from (without one, an external sampler draws from the supporting facts themselves)."""
    collate = collator(model)
    length = model.config.rehearsal_fragment_length
    covered = total = 0
    with torch.no_grad():
        for first in range(0, len(rows), 64):
            batch = collate(rows[first : first + 64])
            story = model.story_to_items(batch["input_ids"], batch["attention_mask"])
            written = model.rehearsal_memory(**story, output_item_features=True)
            query = model.encode_question(batch["question_input_ids"], batch["question_attention_mask"])
            support = batch["fragment_weights"]  # (B, T) 1 on supporting-fact items
            weights = support if fragment_teacher is None else fragment_teacher.sentence_importance(**batch)
            for _ in range(draws):
                starts, _ = model.rehearsal.draw_fragments(
                    written.item_features, story["attention_mask"], query, fragment_weights=weights
                )
                positions = (starts.unsqueeze(-1) + torch.arange(length)).clamp(max=support.shape[1] - 1)
                hits = support.gather(1, positions.flatten(1)).view_as(positions).amax(-1)  # (B, J)
                covered += hits.sum().item()
                total += hits.numel()
    return covered / total
