"""Choose a trained model's `slot_write_threshold` on validation questions, never on the test ones.

The threshold tau zeroes the write gate of a slot whose relevance to a segment is at most tau (memory_slots.py): on
a long story the many segments of book text a slot barely opens for stop adding up to overwriting it. It changes no
weight, so it is chosen after training: each model kept by `bench_babilong.py --models_dir` streams the validation
questions at one long length once per candidate tau (as the benchmark does, `logits_from_memory`), and the tau of the
best accuracy is kept (on a tie, the one of the lowest mean answer loss; 0, the model as trained, is always a
candidate). A rerun into the same --output with more thresholds measures only the new ones and chooses among all.
The test set is then run at that tau with `bench_babilong.py --models_dir ... --test_config
slot_write_threshold=TAU`.

Validation questions come from the training books (their bAbI stories from bAbI's training file, as in training,
but with other book text around them and at lengths never trained on): a train split at a long length, written by
`prepare_babilong.py` with another seed, e.g.

    python examples/prepare_babilong.py --babi_dir ../shared/data/babi --tasks 2-5 --lengths 128k --seed 1 \
        --num_train_samples 100 --num_test_samples 1 --max_train_length 128k --output_dir outputs/babilong_val_qa2-5
    python bench/calibrate_write_threshold.py --data_dir outputs/babilong_val_qa2-5 --task 2 \
        --models qa2=outputs/models/qa2-5_lr1e-3/rm_qa2_seed1 --length 128k --num_samples 50
"""

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from bench_babilong import logits_from_memory
from cost_utils import RESULTS, provenance
from diagnose_write_gate import kept_model_arguments, load_kept

from rm_hf.babilong import length_name, parse_length


def parse_thresholds(text: str) -> list[float]:
    thresholds = sorted({0.0, *(float(piece) for piece in text.split(","))})
    if not all(0 <= tau < 1 for tau in thresholds):
        raise argparse.ArgumentTypeError(f"--thresholds lie in [0, 1), got {text}")
    return thresholds


def calibrate(folder: Path, data_dir: Path, task: int, length: int, split: str, num: int, thresholds, earlier) -> dict:
    """Accuracy and answer loss at each threshold not measured in `earlier` (the stored run, or {}), merged with
    those that were, and the choice among all of them."""
    model, tokenizer, samples = load_kept(folder, data_dir, task, length, split, num)
    accuracy, loss = dict(earlier.get("accuracy", {})), dict(earlier.get("answer_loss", {}))
    for tau in (tau for tau in thresholds if str(tau) not in accuracy):
        model.config.slot_write_threshold = tau  # read at every write
        logits = torch.cat([logits_from_memory(model, sample, tokenizer.pad_token_id, 1024) for sample in samples])
        labels = torch.tensor([sample["labels"] for sample in samples])
        accuracy[str(tau)] = (logits.argmax(-1) == labels).float().mean().item()
        loss[str(tau)] = F.cross_entropy(logits, labels).item()
        print(f"{folder} at tau {tau}: accuracy {accuracy[str(tau)]:.3f}, loss {loss[str(tau)]:.3f}", flush=True)
    best = max(accuracy, key=lambda tau: (accuracy[tau], -loss[tau]))
    return {"accuracy": accuracy, "answer_loss": loss, "num_samples": len(samples), "chosen": float(best)}


def main(argv: list[str] | None = None) -> dict:
    parser = kept_model_arguments(__doc__)
    parser.add_argument("--length", type=parse_length, default="128k")
    parser.add_argument("--split", default="train", help="the split of --data_dir to validate on (default: train)")
    parser.add_argument("--num_samples", type=int, default=50)
    parser.add_argument("--thresholds", type=parse_thresholds, default="0.1,0.2,0.3,0.4,0.5,0.6")
    parser.add_argument("--output", type=Path, default=RESULTS / "babilong" / "write_threshold" / "calibration.json")
    args = parser.parse_args(argv)
    models = dict(args.models)
    torch.set_num_threads(1)
    results = json.loads(args.output.read_text()) if args.output.exists() else {"runs": {}}
    for name, folder in models.items():
        key = f"{name}, qa{args.task}, {length_name(args.length)} {args.split}"
        earlier = results["runs"].get(key, {})
        same = {"model": str(folder), "data_dir": str(args.data_dir), "num_samples": args.num_samples}
        if any(earlier.get(field) != value for field, value in same.items()):
            earlier = {}  # measured on other questions or another model: measure again
        results["runs"][key] = {
            "model": str(folder),
            "data_dir": str(args.data_dir),
            **calibrate(
                folder, args.data_dir, args.task, args.length, args.split, args.num_samples, args.thresholds, earlier
            ),  # fmt: skip
            "date": time.strftime("%Y-%m-%d"),
            **provenance(),
        }
        print(f"{key}: chosen tau {results['runs'][key]['chosen']}", flush=True)
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
