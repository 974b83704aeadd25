"""The four memory types side by side: what each costs as the input grows.

For every memory type (`slots`, `expire_span`, `lamemo`, `key_value`) and input length L (random token ids;
cost does not depend on trained weights, so the models are untrained and the same size), in one process and
interleaved type by type so they share the machine's load:
- write time: `init_memory` + `write` chunk by chunk under `torch.inference_mode()` (median over repeats), as
  tokens per second;
- time per question from the written memory (`answer`), median over repeats;
- the memory's size once written: stored numbers per sequence (every tensor of its state) and, for the
  item-keeping types, how many entries are live.
Every type keeps at most 16 vectors by default (`--num_slots` for the slots, `--memory_capacity` for the others),
so the comparison is at equal memory budget. Accuracy per memory type is in bench_babi.py (`--memory_types`) and
bench_ctr.py (`--memory_types`).

    python bench/bench_memories.py                     # quick: 1k-16k tokens, about a minute on one CPU core
    python bench/bench_memories.py --lengths 1024 4096 16384 65536 262144

Writes bench/results/memories.json and bench/results/memories.png (or --output_dir).
"""

import argparse
import json
import statistics
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from cost_utils import (
    RESULTS,
    SMOKE_MODEL,
    add_model_arguments,
    build_model,
    model_spec,
    provenance,
    random_ids,
    seconds,
    stream_write,
)
from tqdm.auto import tqdm

from rm_hf.configuration_rehearsal_memory import MEMORY_TYPES


def state_size(memory) -> tuple[int, int | None]:
    """(stored numbers per sequence, live entries or None for the slot memory) of a batch-1 memory."""
    if isinstance(memory, torch.Tensor):
        return memory.numel(), None
    numbers = sum(tensor.numel() for tensor in memory.values())
    live = memory["valid"] if "valid" in memory else memory["values"] >= 0
    return numbers, int(live.sum())


def measure(models: dict, spec: dict, length: int, args) -> dict[str, dict]:
    """Write and question costs of every memory type at one length, interleaved so they share the load."""
    write_seconds = {name: [] for name in models}
    memories = {}
    for _ in range(args.write_repeats):
        for name, model in models.items():
            memories[name], elapsed = stream_write(model, spec, length)
            write_seconds[name].append(elapsed)
    question = random_ids(spec, (1, spec["question_length"]), torch.Generator().manual_seed(spec["seed"]))
    times = {name: [] for name in models}
    with torch.inference_mode():
        for name, model in models.items():  # warm-up
            model.answer(memories[name], question)
        for _ in range(args.question_repeats):
            for name, model in models.items():
                times[name].append(seconds(lambda model=model, name=name: model.answer(memories[name], question)))
    rows = {}
    for name in models:
        numbers, live = state_size(memories[name])
        write = statistics.median(write_seconds[name])
        rows[name] = {
            "length": length,
            "write_seconds": write,
            "write_tokens_per_second": length / write,
            "question_ms": 1000 * statistics.median(times[name]),
            "state_numbers": numbers,
            "live_entries": live,
        }
    return rows


def plot(results: dict, path: Path) -> None:
    fig, (question_ax, write_ax) = plt.subplots(1, 2, figsize=(10, 3.8))
    for name, rows in results.items():
        lengths = [row["length"] for row in rows]
        question_ax.plot(lengths, [row["question_ms"] for row in rows], "o-", label=name)
        write_ax.plot(lengths, [row["write_tokens_per_second"] for row in rows], "o-", label=name)
    question_ax.set(xscale="log", yscale="log", xlabel="input length (tokens)", ylabel="ms per question",
                    title="Answering from the memory")  # fmt: skip
    write_ax.set(xscale="log", yscale="log", xlabel="input length (tokens)", ylabel="tokens per second",
                 title="Writing the input")  # fmt: skip
    for ax in (question_ax, write_ax):
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096, 16384])
    parser.add_argument("--memory_types", nargs="+", default=list(MEMORY_TYPES), choices=MEMORY_TYPES)
    parser.add_argument("--write_repeats", type=int, default=3, help="Timed writes per type and length (median).")
    parser.add_argument("--question_repeats", type=int, default=30, help="Timed questions per type and length.")
    parser.add_argument("--output_dir", default=str(RESULTS))
    parser.add_argument("--smoke", action="store_true", help="Tiny model and lengths: a CI check that it runs.")
    add_model_arguments(parser)
    args = parser.parse_args()
    if args.smoke:
        vars(args).update(SMOKE_MODEL, lengths=[256, 512], write_repeats=1, question_repeats=2, memory_capacity=4)
    spec = model_spec(args)
    models = {name: build_model({**spec, "memory_type": name}) for name in args.memory_types}

    results = {name: [] for name in models}
    for length in tqdm(args.lengths, desc="bench_memories", unit="length"):
        for name, row in measure(models, spec, length, args).items():
            results[name].append(row)

    output = {
        **provenance(),
        "arguments": vars(args),
        "parameters": {name: sum(p.numel() for p in model.parameters()) for name, model in models.items()},
        "memory_types": results,
    }
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "memories.json").write_text(json.dumps(output, indent=2))
    plot(results, output_dir / "memories.png")

    print(f"\n{args.threads} thread(s); medians")
    print("  memory        length  tokens/s  ms/question  stored numbers  live entries")
    for name, rows in results.items():
        for row in rows:
            live = "-" if row["live_entries"] is None else row["live_entries"]
            print(f"  {name:<12} {row['length']:>7}  {row['write_tokens_per_second']:>8.0f}  {row['question_ms']:>11.2f}"
                  f"  {row['state_numbers']:>14,}  {live:>12}")  # fmt: skip
    print(f"Wrote {output_dir / 'memories.json'} and {output_dir / 'memories.png'}")


if __name__ == "__main__":
    main()
