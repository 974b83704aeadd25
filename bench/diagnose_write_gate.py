"""Why a trained RM loses BABILong questions in long stories: how far its write gate opens, and how accuracy depends on
how far back the facts lie, as the story grows.

For each model kept by `bench_babilong.py --models_dir` (slot memory with the write gate) and each test length, every
test story is streamed into memory as the benchmark does (`answer_from_memory`). At each segment write, each slot's
relevance r_k (how far the gate lets the slot move toward its update, `RehearsalMemoryWriter.read`) is recorded; the
largest over the slots says whether the segment was written at all. Reported per length:

- `gate`: the mean of that largest relevance for segments holding a supporting fact and for the others, by how many
  items the memory had read before the segment (bins of `POSITION_BINS`);
- `drift`: by the same bins, how far the slots have moved before the write: their mean cosine similarity to the
  initial memory M_0 and their mean norm;
- `accuracy` overall and by `last_fact_back`: items from the last supporting fact to the end of the story.

    python bench/diagnose_write_gate.py --data_dir outputs/babilong10k_qa2-5 --task 2 \
        --models qa2=outputs/models/qa2-5_lr1e-3/rm_qa2_seed1 --lengths 16k,64k,128k
"""

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from bench_babilong import answer_from_memory, encode, parse_lengths
from cost_utils import RESULTS, provenance
from qa_utils import load_kept_model
from transformers import PreTrainedTokenizerFast

from rm_hf import RehearsalMemoryForQuestionAnswering
from rm_hf.babilong import length_name, load_babilong

# items read before a segment (its position), and items from the last supporting fact to the story's end
POSITION_BINS = (0, 256, 1024, 2048, 4096)
DISTANCE_BINS = (0, 250, 500, 1000, 2000, 4000)


def bin_name(value: int, edges: tuple[int, ...]) -> str:
    index = int(np.searchsorted(edges, value, side="right")) - 1
    return f"{edges[index]}+" if index == len(edges) - 1 else f"{edges[index]}-{edges[index + 1] - 1}"


def parse_model(piece: str) -> tuple[str, Path]:
    name, sep, folder = piece.partition("=")
    if not (sep and name and folder):
        raise argparse.ArgumentTypeError(f"--models takes NAME=FOLDER, got {piece!r}")
    return name, Path(folder)


def kept_model_arguments(description: str) -> argparse.ArgumentParser:
    """The arguments of a script that reads models kept by `bench_babilong.py --models_dir` on BABILong samples."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", type=Path, required=True, help="samples written by prepare_babilong.py")
    parser.add_argument("--task", type=int, required=True)
    parser.add_argument("--models", type=parse_model, nargs="+", required=True, metavar="NAME=FOLDER")
    return parser


def load_gated_slots_model(folder: Path, test_config=None) -> RehearsalMemoryForQuestionAnswering:
    """A kept question-answering model that has the slot memory and its write gate (what the gate diagnoses read)."""
    model = load_kept_model(RehearsalMemoryForQuestionAnswering, folder, test_config or {})
    if model.config.memory_type != "slots" or not model.config.slot_write_gate:
        raise ValueError(f"{folder}: this needs the slot memory with its write gate (slot_write_gate=True)")
    return model


def load_kept(folder: Path, data_dir: Path, task: int, length: int, split: str, num: int, test_config=None) -> tuple:
    """A kept model (slot memory with its write gate; `test_config`'s fields set, as `load_kept_model` does), its
    tokenizer, and the first `num` samples of `split` at `length`, encoded as the benchmark encodes them."""
    model = load_gated_slots_model(folder, test_config)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(folder)
    label2id = {label: int(i) for i, label in model.config.id2label.items()}
    rows = load_babilong(data_dir, [task], length, split)
    rows = rows.select(range(min(num, len(rows))))
    return model, tokenizer, [encode(row, tokenizer, label2id, model.config.max_sentence_tokens) for row in rows]


def gate_recorder(model) -> tuple[list, object]:
    """A list that collects, per segment write, (the largest slot relevance, the slots' mean cosine to M_0, their
    mean norm), and the hook's handle. The model has the slot memory and its write gate (`load_kept` checks)."""
    bank = model.rehearsal_memory.bank
    records = []

    def record(module, args, output):
        memory = args[0][0]  # (K, D): a batch of one story, before this write
        cosine = torch.cosine_similarity(memory, bank.initial_memory, dim=-1).mean().item()
        records.append((module.read(*args)[1].amax(-1).item(), cosine, memory.norm(dim=-1).mean().item()))

    return records, bank.writer.register_forward_hook(record)


def diagnose(folder: Path, data_dir: Path, task: int, length: int, num_test: int, threshold: float | None) -> dict:
    test_config = {} if threshold is None else {"slot_write_threshold": threshold}
    model, tokenizer, samples = load_kept(folder, data_dir, task, length, "test", num_test, test_config)
    segment = model.config.segment_length
    records, hook = gate_recorder(model)
    gate, drift, by_distance, hits = {"fact": {}, "other": {}}, {}, {}, []
    for features in samples:
        items = features["sentence_index"]
        facts = items[np.flatnonzero(features["supporting_mask"])]  # the items holding a supporting fact
        records.clear()
        correct = answer_from_memory(model, features, tokenizer.pad_token_id, 1024) == features["labels"]
        # segment j holds items j * segment onwards: which segments hold a fact
        has_fact = np.zeros(len(records) * segment, dtype=bool)
        has_fact[facts] = True
        has_fact = has_fact.reshape(len(records), segment).any(1)
        for number, ((relevance, cosine, norm), fact) in enumerate(zip(records, has_fact)):
            position = bin_name(number * segment, POSITION_BINS)
            gate["fact" if fact else "other"].setdefault(position, []).append(relevance)
            drift.setdefault(position, []).append((cosine, norm))
        back = int(items[-1]) - int(facts.max())
        by_distance.setdefault(bin_name(back, DISTANCE_BINS), []).append(correct)
        hits.append(correct)
    hook.remove()
    return {
        "accuracy": statistics.fmean(hits),
        "num_test": len(hits),
        "gate": {
            kind: {
                name: {"mean_largest_relevance": statistics.fmean(v), "segments": len(v)} for name, v in bins.items()
            }
            for kind, bins in gate.items()
        },
        "drift": {
            name: {"cosine_to_initial": float(np.mean(v, 0)[0]), "norm": float(np.mean(v, 0)[1]), "segments": len(v)}
            for name, v in drift.items()
        },
        "accuracy_by_last_fact_back": {
            name: {"accuracy": statistics.fmean(v), "num_test": len(v)}
            for name, v in sorted(by_distance.items(), key=lambda kv: int(kv[0].split("-")[0].rstrip("+")))
        },
    }


def main(argv: list[str] | None = None) -> dict:
    parser = kept_model_arguments(__doc__)
    parser.add_argument("--lengths", default="16k,64k,128k")
    parser.add_argument("--num_test", type=int, default=100)
    parser.add_argument("--slot_write_threshold", type=float, default=None,
                        help="read with this write threshold (default: the model's own)")  # fmt: skip
    parser.add_argument("--output", type=Path, default=RESULTS / "babilong" / "write_gate" / "write_gate.json")
    args = parser.parse_args(argv)
    models = dict(args.models)
    torch.set_num_threads(1)
    results = json.loads(args.output.read_text()) if args.output.exists() else {"runs": {}}
    for name, folder in models.items():
        for length in parse_lengths(args.lengths):
            key = f"{name}, qa{args.task}, {length_name(length)}"
            key += "" if args.slot_write_threshold is None else f", tau {args.slot_write_threshold}"
            results["runs"][key] = {
                "model": str(folder),
                **diagnose(folder, args.data_dir, args.task, length, args.num_test, args.slot_write_threshold),
                "date": time.strftime("%Y-%m-%d"),
                **provenance(),
            }
            print(key, json.dumps(results["runs"][key]["gate"]), flush=True)
            args.output.parent.mkdir(parents=True, exist_ok=True)
            args.output.write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
