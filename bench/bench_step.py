"""Where a Rehearsal Memory training step spends its CPU, and what reading a block of segments at once saves.

On real bAbI batches, `run_qa.py`'s model for a task (sentence items, 4 per segment, rehearsal on, then
`--model_flags`) is trained in two copies of the same initial weights, side by side step by step so they share the
machine's load, each with AdamW (fused, the Trainer's default):
- `block_reads`: the model as it is. With key addressing (`--slot_addressing key`) what a slot reads of a segment
  does not depend on its state, so the slot memory reads every segment of a block in one call (`read_segments`) and
  only the gated GRU updates run in order;
- `per_segment_reads`: the same model reading each segment at its own write, as content addressing must.
Per mode: the median CPU milliseconds (one torch thread) of a step and of its forward, backward and optimizer
step, and the forward's parts: encoding the segments, the block reads, the segment writes, the rehearsal
objective. Before training, the eval-mode logits of `per_segment_reads` on one batch are compared with
`block_reads`' (`max_abs_logit_difference`).

    python bench/bench_step.py --babi_dir ../shared/data/babi \
        --model_flags "--num_memory_slots 32 --slot_addressing key --link_previous_item true"

Writes bench/results/step.json (or --output).
"""

import argparse
import copy
import functools
import json
import shlex
import statistics
import time
from collections import defaultdict
from pathlib import Path

import torch
from bench_compile import babi_batches
from cost_utils import RESULTS, provenance

from rm_hf.rehearsal import combine_losses

MODES = ("block_reads", "per_segment_reads")


def timed_parts(model) -> dict[str, float]:
    """Wraps the forward's parts of `model` (in place) to add their CPU seconds to the returned dict."""
    seconds = defaultdict(float)
    memory = model.rehearsal_memory
    parts = {"encode_segments": (memory, "_encode_segments"), "block_reads": (memory.bank, "read_segments"),
             "segment_writes": (memory, "_write_segment")}  # fmt: skip
    if model.rehearsal is not None:
        parts["rehearsal"] = (model.rehearsal, "forward")
    for name, (owner, method) in parts.items():
        function = getattr(owner, method)

        @functools.wraps(function)
        def timed(*args, _function=function, _name=name, **kwargs):
            start = time.process_time()
            result = _function(*args, **kwargs)
            seconds[_name] += time.process_time() - start
            return result

        setattr(owner, method, timed)
    return seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--babi_dir", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/babi")
    parser.add_argument("--task", type=int, default=2)
    parser.add_argument("--model_flags", default="", help="more run_qa.py model flags, e.g. '--slot_addressing key'")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=40, help="distinct batches, cycled")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps per mode first")
    parser.add_argument("--steps", type=int, default=100, help="timed rounds, one step of every mode each")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=RESULTS / "step.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    batches, model = babi_batches(args, shlex.split(args.model_flags))
    models = {mode: copy.deepcopy(model) for mode in MODES}
    models["per_segment_reads"].rehearsal_memory.bank.read_segments = lambda items, item_mask: None
    with torch.no_grad():
        logits = {mode: m.eval()(**batches[0]).logits for mode, m in models.items()}
    difference = (logits["per_segment_reads"] - logits["block_reads"]).abs().max().item()
    optimizers = {mode: torch.optim.AdamW(m.train().parameters(), lr=1e-3, fused=True) for mode, m in models.items()}
    parts = {mode: timed_parts(m) for mode, m in models.items()}
    times = {mode: defaultdict(list) for mode in MODES}

    def step(mode: str, batch: dict) -> dict[str, float]:
        start = time.process_time()
        outputs = models[mode](**batch)
        forward = time.process_time()
        combine_losses(outputs).backward()
        backward = time.process_time()
        optimizers[mode].step()
        optimizers[mode].zero_grad(set_to_none=True)
        end = time.process_time()
        return {
            "step": end - start,
            "forward": forward - start,
            "backward": backward - forward,
            "optimizer": end - backward,
        }

    for i in range(args.warmup):
        for mode in MODES:
            step(mode, batches[i % len(batches)])
    for seconds in parts.values():
        seconds.clear()  # the parts count timed steps only
    for i in range(args.steps):
        for mode in MODES:
            for name, value in step(mode, batches[(args.warmup + i) % len(batches)]).items():
                times[mode][name].append(value)
    block = statistics.median(times["block_reads"]["step"])
    result = {
        **provenance(),
        "settings": {
            name: getattr(args, name) for name in ("task", "model_flags", "batch_size", "batches", "warmup", "steps")
        }
        | {"story_items": "sentences", "segment_length": 4, "torch_threads": 1, "optimizer": "AdamW (fused)"},
        "max_abs_logit_difference": difference,
        "modes": {
            mode: {
                **{f"median_{name}_ms": 1000 * statistics.median(values) for name, values in times[mode].items()},
                "step_time_ratio_to_block_reads": statistics.median(times[mode]["step"]) / block,
                "forward_parts_mean_ms": {
                    name: round(1000 * value / args.steps, 2) for name, value in parts[mode].items()
                },
            }
            for mode in MODES
        },
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    for mode, row in result["modes"].items():
        print(f"{mode:18s} step {row['median_step_ms']:6.1f} ms (x{row['step_time_ratio_to_block_reads']:.2f}): forward "
              f"{row['median_forward_ms']:.1f}, backward {row['median_backward_ms']:.1f}, optimizer "
              f"{row['median_optimizer_ms']:.1f}; forward parts {row['forward_parts_mean_ms']}")  # fmt: skip
    print(f"largest logit difference between the modes: {difference:.2e}")


if __name__ == "__main__":
    main()
