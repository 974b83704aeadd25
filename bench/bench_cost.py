"""Cost versus input length: Rehearsal Memory reads the input once, then answers from K slots; a full-access
baseline must read the raw input for every question.

Per input length L (random token ids; cost does not depend on trained weights, so the model is untrained):
(a) writing the input into memory: `init_memory` + `write` chunk by chunk under `torch.inference_mode()`,
    median time over repeats, tokens per second, and peak RSS (see below);
(b) time per question from the memory (`answer`), median over repeats;
(c) the same question answered by a full-access baseline with the same backbone and width: the encoder
    reads the raw input (whole, or in windows of its max length when longer), then the RM head's own
    reader attends over all L token features instead of K slots. Timed twice: re-reading the input for the
    question (what answering without a memory costs) and over features cached from an earlier read (a
    lower bound that keeps L x hidden floats per input). Its peak RSS for one question is measured too.
(a)-(c) are timed side by side in this process, interleaved question by question, so the ratios share
the machine's load. Training throughput (examples/s, forward + backward on a fixed batch) is measured with
and without rehearsal, interleaved step by step.

Peak memory: peak RSS of a fresh process per measurement minus its RSS just before the measured job (the
kernel's high-water mark reset through /proc/self/clear_refs; details in `cost_utils.py`). The write
streams random chunks, so the input itself is never held. For contrast, the same write with autograd on
(which keeps every segment's activations for backward) is measured at the shorter lengths: if activations
were kept across segments at inference, the write's peak would grow like that.

    python bench/bench_cost.py                                  # quick: 1k-64k tokens, 2 to 5 min on one CPU core
    python bench/bench_cost.py --lengths 1024 4096 16384 65536 262144 1048576 --full_access_repeats 1

Writes bench/results/cost.json and bench/results/cost.png (or --output_dir).
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
    encode_raw_input,
    full_access_answer,
    measure_in_fresh_process,
    model_spec,
    provenance,
    random_ids,
    seconds,
    stream_write,
)
from tqdm.auto import tqdm

from rm_hf.rehearsal import combine_losses


def time_one_length(model, spec: dict, length: int, args) -> dict:
    """Write time and per-question times of RM and the full-access baseline at one length, side by side."""
    write_seconds = []
    for _ in range(args.write_repeats):
        memory, elapsed = stream_write(model, spec, length)
        write_seconds.append(elapsed)
    generator = torch.Generator().manual_seed(spec["seed"] + 1)
    input_ids = random_ids(spec, (1, length), generator)  # the raw input the baseline must keep
    question = random_ids(spec, (1, spec["question_length"]), generator)
    window = spec["max_positions"]
    with torch.inference_mode():
        features = encode_raw_input(model, input_ids, window)
        answers = {
            "rm": lambda: model.answer(memory, question),
            "full_access_cached": lambda: full_access_answer(model, question, features),
            "full_access": lambda: full_access_answer(model, question, encode_raw_input(model, input_ids, window)),
        }
        for answer in answers.values():  # warm-up
            answer()
        times = {name: [] for name in answers}
        for repeat in range(args.question_repeats):  # interleaved, so all three see the same load
            for name, answer in answers.items():
                if name != "full_access" or repeat < args.full_access_repeats:
                    times[name].append(seconds(answer))
    ms = {name: 1000 * statistics.median(values) for name, values in times.items()}
    write = statistics.median(write_seconds)
    return {
        "length": length,
        "write_seconds": write,
        "write_tokens_per_second": length / write,
        "rm_question_ms": ms["rm"],
        "full_access_question_ms": ms["full_access"],
        "full_access_cached_question_ms": ms["full_access_cached"],
        "full_access_over_rm": ms["full_access"] / ms["rm"],
        "full_access_cached_over_rm": ms["full_access_cached"] / ms["rm"],
    }


def training_throughput(spec: dict, args) -> dict:
    """Examples per second of forward + backward on one fixed batch, with and without rehearsal, interleaved."""
    generator = torch.Generator().manual_seed(spec["seed"])
    batch = {
        "input_ids": random_ids(spec, (args.train_batch_size, args.train_length), generator),
        "question_input_ids": random_ids(spec, (args.train_batch_size, spec["question_length"]), generator),
        "labels": torch.randint(0, spec["num_labels"], (args.train_batch_size,), generator=generator),
    }
    models = {"with_rehearsal": build_model(spec, use_rehearsal=True).train(),
              "without_rehearsal": build_model(spec, use_rehearsal=False).train()}  # fmt: skip

    def step(model):
        model.zero_grad(set_to_none=True)
        combine_losses(model(**batch)).backward()  # the Trainer's default weights

    times = {name: [] for name in models}
    for repeat in range(args.train_steps + 1):
        for name, model in models.items():
            elapsed = seconds(lambda model=model: step(model))
            if repeat > 0:  # the first step is warm-up
                times[name].append(elapsed)
    result = {"batch_size": args.train_batch_size, "sequence_length": args.train_length, "steps": args.train_steps}
    for name, values in times.items():
        result[f"{name}_step_seconds"] = statistics.median(values)
        result[f"{name}_examples_per_second"] = args.train_batch_size / statistics.median(values)
    result["rehearsal_step_time_ratio"] = (
        result["with_rehearsal_step_seconds"] / result["without_rehearsal_step_seconds"]
    )
    return result


def plot(rows: list[dict], path: Path) -> None:
    lengths = [row["length"] for row in rows]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    ax = axes[0]
    ax.plot(lengths, [r["rm_question_ms"] for r in rows], "o-", label="Rehearsal Memory (from K slots)")
    ax.plot(lengths, [r["full_access_question_ms"] for r in rows], "s-", label="full access, reads the input")
    ax.plot(lengths, [r["full_access_cached_question_ms"] for r in rows], "s--",
            label="full access, cached token features")  # fmt: skip
    ax.set(xscale="log", yscale="log", xlabel="input length (tokens)", ylabel="ms per question",
           title="Time per question")  # fmt: skip
    ax = axes[1]
    ax.plot(lengths, [r["write_seconds"] for r in rows], "o-", label="write (streamed, inference)")
    ax.set(xscale="log", yscale="log", xlabel="input length (tokens)", ylabel="seconds", title="Time to write")
    ax = axes[2]
    ax.plot(lengths, [r["write_peak_rss_delta_mib"] for r in rows], "o-", label="write, inference_mode")
    grad = [r for r in rows if r.get("write_with_grad_peak_rss_delta_mib") is not None]
    ax.plot([r["length"] for r in grad], [r["write_with_grad_peak_rss_delta_mib"] for r in grad], "^:",
            label="write with autograd (contrast)")  # fmt: skip
    ax.plot(lengths, [r["full_access_peak_rss_delta_mib"] for r in rows], "s-", label="full access, one question")
    highest = max(max(line.get_ydata()) for line in ax.get_lines())
    ax.set_ylim(0, 1.5 * highest)  # room for the legend above the lines
    ax.set(xscale="log", xlabel="input length (tokens)", ylabel="peak RSS increase (MiB)", title="Peak memory")
    for ax in axes:
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[2**k for k in range(10, 17)])
    parser.add_argument("--write_repeats", type=int, default=3, help="Timed writes per length (median).")
    parser.add_argument("--question_repeats", type=int, default=30, help="Timed RM questions per length (median).")
    parser.add_argument("--full_access_repeats", type=int, default=3,
                        help="Timed full-access questions that re-read the input, per length (median).")  # fmt: skip
    parser.add_argument("--grad_max_length", type=int, default=8192,
                        help="Longest length of the autograd contrast (its memory grows with length).")  # fmt: skip
    parser.add_argument("--train_batch_size", type=int, default=8)
    parser.add_argument("--train_length", type=int, default=512)
    parser.add_argument("--train_steps", type=int, default=10)
    parser.add_argument("--output_dir", default=str(RESULTS))
    parser.add_argument("--smoke", action="store_true", help="Tiny model and lengths: a CI check that it runs.")
    add_model_arguments(parser)
    args = parser.parse_args()
    if args.smoke:
        vars(args).update(SMOKE_MODEL, lengths=[256, 1024], write_repeats=1, question_repeats=2,
                          full_access_repeats=1, grad_max_length=256, train_batch_size=2, train_length=64,
                          train_steps=1)  # fmt: skip
    spec = model_spec(args)
    model = build_model(spec)

    rows = []
    for length in tqdm(args.lengths, desc="bench_cost", unit="length"):
        row = time_one_length(model, spec, length, args)
        write = measure_in_fresh_process(spec, "write", length)
        row.update(write_peak_rss_delta_mib=write["peak_rss_delta_mib"], write_peak_rss_mib=write["peak_rss_mib"],
                   memory_has_grad_fn=write["memory_has_grad_fn"], peak_method=write["peak_method"])  # fmt: skip
        row["full_access_peak_rss_delta_mib"] = measure_in_fresh_process(spec, "full_access", length)[
            "peak_rss_delta_mib"
        ]
        row["write_with_grad_peak_rss_delta_mib"] = (
            measure_in_fresh_process(spec, "write_with_grad", length)["peak_rss_delta_mib"]
            if length <= args.grad_max_length
            else None
        )
        rows.append(row)
    training = training_throughput(spec, args)

    deltas = [r["write_peak_rss_delta_mib"] for r in rows]
    rm_ms = [r["rm_question_ms"] for r in rows]
    results = {
        **provenance(),
        "arguments": vars(args),
        "parameters": sum(p.numel() for p in model.parameters()),
        "lengths": rows,
        "summary": {
            "rm_question_ms_max_over_min": max(rm_ms) / min(rm_ms),
            "write_peak_rss_delta_mib_range": [min(deltas), max(deltas)],
            "full_access_over_rm_at_longest": rows[-1]["full_access_over_rm"],
            "write_tokens_per_second_median": statistics.median(r["write_tokens_per_second"] for r in rows),
            "memory_ever_has_grad_fn": any(r["memory_has_grad_fn"] for r in rows),
        },
        "training": training,
    }
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "cost.json").write_text(json.dumps(results, indent=2))
    plot(rows, output_dir / "cost.png")

    print(f"\n{results['parameters']:,} parameters, {args.threads} thread(s); ms per question are medians")
    print("   length  write s  tokens/s  write peak MiB  RM ms  full ms  cached ms  full/RM  cached/RM  full peak MiB")
    for r in rows:
        print(f"  {r['length']:>7}  {r['write_seconds']:>7.2f}  {r['write_tokens_per_second']:>8.0f}"
              f"  {r['write_peak_rss_delta_mib']:>14.1f}  {r['rm_question_ms']:>5.2f}  {r['full_access_question_ms']:>7.1f}"
              f"  {r['full_access_cached_question_ms']:>9.2f}  {r['full_access_over_rm']:>6.1f}x"
              f"  {r['full_access_cached_over_rm']:>8.1f}x  {r['full_access_peak_rss_delta_mib']:>13.1f}")  # fmt: skip
    print(f"Training, batch {training['batch_size']} x {training['sequence_length']} tokens: "
          f"{training['with_rehearsal_examples_per_second']:.1f} examples/s with rehearsal, "
          f"{training['without_rehearsal_examples_per_second']:.1f} without "
          f"(step time x{training['rehearsal_step_time_ratio']:.2f})")  # fmt: skip
    print(f"Wrote {output_dir / 'cost.json'} and {output_dir / 'cost.png'}")


if __name__ == "__main__":
    main()
