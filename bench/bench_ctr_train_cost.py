"""Training cost per sample of the click models (issue #20): Rehearsal Memory with and without rehearsal against
target attention and mean pooling, on the same batches of synthetic histories.

Each model is built from `examples/run_ctr.py`'s defaults (the system's own choices aside) and trained as the
Trainer trains it (forward, the weighted losses of `combine_losses`, backward, fused AdamW). Per history length
and batch size, the systems take turns step by step on one fixed batch, so every system sees the same machine
load; the figure is the median process CPU time of a step (one torch thread) divided by the batch size, and each
system's ratio to target attention over the whole history. `rm_before` is the model and rehearsal that
`run_ctr.py` used before this benchmark existed (1 BERT layer, segments of 100, 4 fragments of every history
through a 2-layer rehearsal model), for the before/after.

    python bench/bench_ctr_train_cost.py                               # about 10 CPU minutes
    python bench/bench_ctr_train_cost.py --lengths 1000 --batch_sizes 16 64 --repeats 40

Writes bench/results/ctr_train_cost.json (or --output_dir).
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from cost_utils import RESULTS, provenance
from transformers import set_seed

from rm_hf.ctr_data import ClickCollator
from rm_hf.rehearsal import combine_losses

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))  # models as the example script builds them
import run_ctr  # noqa: E402

# name -> the run_ctr.ModelArguments that differ from the script's defaults
SYSTEMS = {
    "target_attention": {"model": "target_attention"},
    "mean_pool": {"model": "mean_pool"},
    "rm_rehearsal": {},
    "rm_no_rehearsal": {"use_rehearsal": False},
    "rm_before": {
        "num_layers": 1,
        "segment_length": 100,
        "num_rehearsal_fragments": 4,
        "rehearsal_batch_fraction": 1.0,
        "rehearsal_num_layers": 2,
    },
}


def build(system: str, vocab) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    model_args = run_ctr.ModelArguments(**SYSTEMS[system])
    set_seed(0)
    model = run_ctr.MODEL_CLASSES[model_args.model](run_ctr.build_config(model_args, vocab)).train()
    return model, torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)  # the Trainer's default optimiser


def step_cpu_seconds(model, optimizer, batch) -> float:
    start = time.process_time()
    combine_losses(model(**batch)).backward()
    optimizer.step()
    optimizer.zero_grad()
    return time.process_time() - start


def measure(args, length: int) -> list[dict]:
    # run_ctr's default task at this length, with enough users that the training split fills the largest batch
    datasets, vocab = run_ctr.load_data(
        run_ctr.DataArguments(num_users=2 * max(args.batch_sizes), history_length=length)
    )
    rows = datasets["train"]
    models = {system: build(system, vocab) for system in args.systems}
    records = []
    for batch_size in args.batch_sizes:
        batch = ClickCollator()([rows[i] for i in range(batch_size)])
        times = {system: [] for system in args.systems}
        for repeat in range(args.warmup + args.repeats):  # interleaved: every system sees the same load
            for system, (model, optimizer) in models.items():
                seconds = step_cpu_seconds(model, optimizer, batch)
                if repeat >= args.warmup:
                    times[system].append(seconds)
        per_sample = {system: statistics.median(values) / batch_size for system, values in times.items()}
        baseline = per_sample.get("target_attention")
        for system in args.systems:
            records.append(
                {
                    "system": system,
                    "history_length": length,
                    "batch_size": batch_size,
                    "cpu_ms_per_step": 1000 * per_sample[system] * batch_size,
                    "cpu_ms_per_sample": 1000 * per_sample[system],
                    "samples_per_cpu_second": 1 / per_sample[system],
                    "ratio_to_target_attention": None if baseline is None else per_sample[system] / baseline,
                }
            )
            print(
                f"L={length} batch={batch_size} {system:18s} {records[-1]['cpu_ms_per_sample']:7.2f} ms/sample"
                + ("" if baseline is None else f"  x{records[-1]['ratio_to_target_attention']:.2f}"),
                flush=True,
            )
    return records


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--systems", nargs="+", choices=list(SYSTEMS), default=list(SYSTEMS))
    parser.add_argument("--repeats", type=int, default=20, help="Timed steps per system (median).")
    parser.add_argument("--warmup", type=int, default=3, help="Untimed steps per system first.")
    parser.add_argument("--output_dir", default=str(RESULTS))
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    records = [record for length in args.lengths for record in measure(args, length)]
    output = Path(args.output_dir) / "ctr_train_cost.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    result = {**provenance(), "torch_threads": torch.get_num_threads(), "arguments": vars(args), "records": records}
    output.write_text(json.dumps(result, indent=1) + "\n")
    print(f"Wrote {output}")


if __name__ == "__main__":
    main()
