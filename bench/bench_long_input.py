"""Long inputs: streaming 10k, 100k and 1,000,000 tokens through `write` keeps peak memory flat.

Each length is written in its own fresh process (so the peaks are independent): `init_memory`, then `write`
chunk by chunk under `torch.inference_mode()`, with random token ids drawn chunk by chunk so the input is
never held whole. Recorded per length: peak RSS, its increase over the RSS just before writing (method in
`cost_utils.py`), time and tokens per second, and whether the final memory carries an autograd graph.
For scale, the JSON and plot also give what keeping the input would cost: its int64 token ids (8 bytes
per token) or its encoder features (4 x hidden_size bytes per token). The model is the one of
`bench_cost.py` (encoder hidden 128, 2 layers, 16 slots, segments of 64), untrained.

    python bench/bench_long_input.py                             # 10k, 100k, 1M tokens: under 2 min on one CPU core
    python bench/bench_long_input.py --lengths 10000 1000000 10000000

Writes bench/results/long_input.json and bench/results/long_input.png (or --output_dir).
"""

import argparse
import json
from pathlib import Path

import matplotlib.pyplot as plt
from cost_utils import RESULTS, SMOKE_MODEL, add_model_arguments, measure_in_fresh_process, model_spec, provenance
from tqdm.auto import tqdm


def plot(runs: list[dict], hidden_size: int, path: Path) -> None:
    lengths = [run["length"] for run in runs]
    fig, (memory_ax, time_ax) = plt.subplots(1, 2, figsize=(10, 3.8))
    memory_ax.plot(lengths, [run["peak_rss_delta_mib"] for run in runs], "o-", label="write (measured)")
    memory_ax.plot(lengths, [8 * n / 2**20 for n in lengths], ":", label="keeping the token ids (8 B/token)")
    memory_ax.plot(lengths, [4 * hidden_size * n / 2**20 for n in lengths], "--",
                   label=f"keeping the token features ({4 * hidden_size} B/token)")  # fmt: skip
    memory_ax.set(xscale="log", yscale="symlog", xlabel="input length (tokens)",
                  ylabel="peak RSS increase (MiB)", title="Peak memory while writing")  # fmt: skip
    # symlog shows a zero increase (linear below 1 MiB, log above); headroom above the lines for the legend
    memory_ax.set_ylim(0, 30 * 4 * hidden_size * max(lengths) / 2**20)
    time_ax.plot(lengths, [run["seconds"] for run in runs], "o-")
    for run in runs:
        time_ax.annotate(f"{run['tokens_per_second']:,.0f} tok/s", (run["length"], run["seconds"]), fontsize=8,
                         textcoords="offset points", xytext=(6, -10))  # fmt: skip
    time_ax.set(xscale="log", yscale="log", xlabel="input length (tokens)", ylabel="seconds",
                title="Time to write")  # fmt: skip
    for ax in (memory_ax, time_ax):
        ax.grid(True, which="both", alpha=0.3)
    memory_ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--output_dir", default=str(RESULTS))
    parser.add_argument("--smoke", action="store_true", help="Tiny model and lengths: a CI check that it runs.")
    add_model_arguments(parser)
    args = parser.parse_args()
    if args.smoke:
        vars(args).update(SMOKE_MODEL, lengths=[1_000, 5_000])
    spec = model_spec(args)

    runs = []
    for length in tqdm(args.lengths, desc="bench_long_input", unit="length"):
        run = measure_in_fresh_process(spec, "write", length, progress=True)
        run["tokens_per_second"] = length / run["seconds"]
        runs.append(run)

    first, last = runs[0], runs[-1]
    growth = last["peak_rss_delta_mib"] - first["peak_rss_delta_mib"]
    results = {
        **provenance(),
        "arguments": vars(args),
        "runs": runs,
        "summary": {
            "peak_rss_delta_mib_max": max(run["peak_rss_delta_mib"] for run in runs),
            "peak_growth_mib_shortest_to_longest": growth,
            "peak_growth_bytes_per_token": growth * 2**20 / (last["length"] - first["length"]),
            "keeping_token_ids_bytes_per_token": 8,
            "keeping_token_features_bytes_per_token": 4 * args.hidden_size,
            "memory_ever_has_grad_fn": any(run["memory_has_grad_fn"] for run in runs),
        },
    }
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "long_input.json").write_text(json.dumps(results, indent=2))
    plot(runs, args.hidden_size, output_dir / "long_input.png")

    print(f"\n{args.threads} thread(s); peak RSS by {first['peak_method']}")
    print("     length   seconds  tokens/s  RSS before MiB  peak MiB  peak increase MiB")
    for run in runs:
        print(f"  {run['length']:>9}  {run['seconds']:>8.1f}  {run['tokens_per_second']:>8.0f}"
              f"  {run['rss_before_mib']:>14.1f}  {run['peak_rss_mib']:>8.1f}  {run['peak_rss_delta_mib']:>17.2f}")  # fmt: skip
    print(f"Peak growth from {first['length']:,} to {last['length']:,} tokens: {growth:.2f} MiB "
          f"({results['summary']['peak_growth_bytes_per_token']:.4f} bytes per token)")  # fmt: skip
    print(f"Wrote {output_dir / 'long_input.json'} and {output_dir / 'long_input.png'}")


if __name__ == "__main__":
    main()
