"""Does `torch.compile` make a CPU training step of Rehearsal Memory cheaper? Measured on real bAbI batches.

The model is `run_qa.py`'s for a new bAbI task with sentence items (its default flags, 4 sentences per segment as in
`bench_babi.py`, rehearsal on). Each mode trains its own copy of the same initial weights with AdamW on the same
batches, drawn once from the task's training questions and cycled:
- `eager`: the model as it is;
- `write`: the memory type's segment write (`bank.write`, called once per segment) compiled with dynamic shapes;
- `model`: the whole head compiled with dynamic shapes (what `run_qa.py --torch_compile true` does through the
  Trainer).
The first `--warmup` steps of each mode, where compiling happens, are timed apart (`warmup_cpu_seconds`); then the
modes take turns step by step for `--steps` rounds, so they share the machine's load, and each step's process CPU
time (one torch thread) is kept. Correctness: in eval mode the compiled modes' logits on one batch are compared with
eager's (`max_abs_logit_difference`) before training starts.

    python bench/bench_compile.py --babi_dir ../shared/data/babi     # task 2, 30 warm-up steps, 100 rounds

Writes bench/results/compile.json (or --output).
"""

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from cost_utils import RESULTS, provenance
from transformers import HfArgumentParser

from rm_hf.babi import answer_vocabulary, load_babi
from rm_hf.modeling_rehearsal_memory import RehearsalMemoryForQuestionAnswering
from rm_hf.qa_data import QACollator, encode_qa_dataset
from rm_hf.rehearsal import combine_losses
from rm_hf.tokenization import build_word_tokenizer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import run_qa  # noqa: E402

MODES = ("eager", "write", "model")


def babi_batches(args, model_flags: list[str] = ()) -> tuple[list[dict], RehearsalMemoryForQuestionAnswering]:
    """`--batches` training batches of `--task` and a new model built as `run_qa.py` builds it (sentence items, 4 per
    segment, then `model_flags`: more of `run_qa.py`'s model flags)."""
    raw = load_babi(args.babi_dir, tasks=[args.task], split="train")
    tokenizer = build_word_tokenizer(s for row in raw for s in (*row["story"], row["question"], row["answer"]))
    answers = answer_vocabulary(raw)
    label2id = {answer: i for i, answer in enumerate(answers)}
    size = args.batch_size
    rows = encode_qa_dataset(raw.shuffle(seed=args.seed).select(range(args.batches * size)), tokenizer, label2id)
    collate = QACollator(pad_token_id=tokenizer.pad_token_id, sentence_items=True)
    batches = [collate([rows[i] for i in range(start, start + size)]) for start in range(0, len(rows), size)]
    parser = HfArgumentParser(run_qa.ModelArguments)
    (flags,) = parser.parse_args_into_dataclasses(
        ["--story_items", "sentences", "--segment_length", "4", *model_flags]
    )
    config = run_qa.build_config(flags, len(tokenizer), tokenizer.pad_token_id, answers)
    torch.manual_seed(args.seed)
    return batches, RehearsalMemoryForQuestionAnswering(config)


def compiled(model, mode: str):
    """A copy of `model`, compiled as `mode` says; returns (module to call, module whose parameters train)."""
    model = copy.deepcopy(model)
    if mode == "write":
        bank = model.rehearsal_memory.bank
        bank.write = torch.compile(bank.write, dynamic=True)
    return (torch.compile(model, dynamic=True) if mode == "model" else model), model


def max_logit_difference(runs: dict, batch: dict) -> dict[str, float]:
    """Eval-mode logits of each mode on one batch, against eager's."""
    logits = {}
    for mode, (call, model) in runs.items():
        model.eval()
        with torch.no_grad():
            logits[mode] = call(**batch).logits
        model.train()
    return {mode: (value - logits["eager"]).abs().max().item() for mode, value in logits.items() if mode != "eager"}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--babi_dir", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/babi")
    parser.add_argument("--task", type=int, default=2)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=40, help="distinct batches, cycled")
    parser.add_argument("--warmup", type=int, default=30, help="steps per mode before timing (compiling happens here)")
    parser.add_argument("--steps", type=int, default=100, help="timed rounds, one step of every mode each")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=RESULTS / "compile.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    modes = args.modes.split(",")
    if "eager" not in modes or set(modes) - set(MODES):
        sys.exit(f"--modes {args.modes!r}: choose among {', '.join(MODES)}, eager included (the reference)")
    batches, model = babi_batches(args)
    runs = {mode: compiled(model, mode) for mode in modes}
    optimizers = {mode: torch.optim.AdamW(m.parameters(), lr=1e-3) for mode, (_, m) in runs.items()}

    def step(mode: str, batch: dict) -> float:
        call = runs[mode][0]
        start = time.process_time()
        optimizers[mode].zero_grad(set_to_none=True)
        combine_losses(call(**batch)).backward()
        optimizers[mode].step()
        return time.process_time() - start

    # the check runs before warm-up, so its eval-mode compiling is not counted there (warm-up compiles for training)
    differences = max_logit_difference(runs, batches[0])
    warmup = {mode: sum(step(mode, batches[i % len(batches)]) for i in range(args.warmup)) for mode in modes}
    times = {mode: [] for mode in modes}
    for i in range(args.steps):
        for mode in modes:
            times[mode].append(step(mode, batches[(args.warmup + i) % len(batches)]))
    eager = statistics.median(times["eager"])
    result = {
        **provenance(),
        "settings": {
            name: getattr(args, name) for name in ("task", "batch_size", "batches", "warmup", "steps", "seed")
        }
        | {"story_items": "sentences", "segment_length": 4, "use_rehearsal": True, "torch_threads": 1},
        "modes": {
            mode: {
                "median_step_ms": 1000 * statistics.median(values),
                "mean_step_ms": 1000 * statistics.fmean(values),
                "step_time_ratio_to_eager": statistics.median(values) / eager,
                "warmup_cpu_seconds": warmup[mode],
                **({"max_abs_logit_difference": differences[mode]} if mode in differences else {}),
            }
            for mode, values in times.items()
        },
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    for mode, row in result["modes"].items():
        print(f"{mode:6s} median {row['median_step_ms']:7.1f} ms  x{row['step_time_ratio_to_eager']:.2f}  "
              f"warm-up {row['warmup_cpu_seconds']:.1f} CPU s  {row.get('max_abs_logit_difference', '')}")  # fmt: skip


if __name__ == "__main__":
    main()
