"""Click prediction on long histories at equal training CPU: Rehearsal Memory against target attention (issue #20).

Every system trains on the same synthetic histories (`generate_behavior_histories`: the answer lies only in
the first ~10% of each history, `--early_noise` of those early events are noise, and `--interest_drift` of the
late events come from new interests that never serve as targets) for the same budget of training CPU, then its
AUC on the test users is measured:

- `rm_rehearsal`, `rm_no_rehearsal`: Rehearsal Memory with and without rehearsal, trained with its length
  curriculum (`--rm_history_curriculum`, default 1000:0.4: each history's first 1,000 events for the first 40% of
  the CPU budget, then whole histories; evaluation reads whole histories). Without it (''), 300 CPU s at 10,000
  events were ~130 steps and both ended at chance (bench/results/ctr_equal_cpu_whole_histories_partial.json).
- `target_attention_last100`, `target_attention_last200`: target attention over only the last 100 / 200 events
  (`ClickCollator(max_history=L)`, in training and test), the usual way to bound its request cost. They read
  the same stored whole histories and keep their tails, so fetching a row costs them what it costs the others.
- `target_attention_full`: target attention over the whole raw history.
- `mean_pool` (not run by default): the mean of the whole history.

Models (sizes, dropout 0), optimiser, learning rate and batch size are `examples/run_ctr.py`'s defaults, built
through its config as `bench/bench_ctr.py` does (whose recorded runs kept dropout 0.1).
What counts: the CPU time (`time.process_time()`: user + system time of every thread of this process, one torch
thread by default) from the start of training to the end of the step that spends the budget, fetching and
collating batches included; data generation, model building and evaluation are outside it. A callback stops
training at the end of that step, so each run spends the budget plus at most one step. The learning-rate
schedule runs on the same clock: run_ctr's warm-up share and linear decay, over the budget's CPU seconds
instead of a number of steps (which differs per system). Per (system, seed) the JSON holds the test AUC, steps,
training CPU seconds, samples per CPU second and CPU seconds per sample; per system the mean and min AUC over
seeds; and the issue's targets, checked on every seed: RM with rehearsal at least 0.1 above each truncated
target attention, and at most 0.01 below full target attention.

Each (system, seed) is stored in `ctr_equal_cpu.json` as soon as it ends; a rerun with the same settings skips
those already there, a rerun with other settings stops with an error unless --overwrite.

    # quick check (about 3 CPU minutes): 2000 users x 2000 events, 30 CPU s per run, one seed
    python bench/bench_ctr_equal_cpu.py --history_length 2000 --cpu_seconds 30 --seeds 0 --output_dir /tmp/ctr
    # full (about 80 CPU minutes, 75 of them training): 2000 users x 10000 events, 300 CPU s per run, seeds 0,1,2
    python bench/bench_ctr_equal_cpu.py
"""

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from bench_ctr import VARIANTS, run_ctr  # run_ctr: the example script, as bench_ctr imports it
from cost_utils import RESULTS, TrainingCpuClock, provenance
from torch.optim.lr_scheduler import LambdaLR
from transformers import set_seed

from rm_hf.ctr_data import (
    ClickCollator,
    HistoryPrefixCurriculum,
    generate_behavior_histories,
    parse_history_curriculum,
)
from rm_hf.trainer import RehearsalMemoryTrainer

# name -> (bench_ctr variant, events read: the last L of each history, or None for all)
SYSTEMS = {
    "rm_rehearsal": ("rm_rehearsal", None),
    "rm_no_rehearsal": ("rm_no_rehearsal", None),
    "target_attention_last100": ("target_attention", 100),
    "target_attention_last200": ("target_attention", 200),
    "target_attention_full": ("target_attention", None),
    "mean_pool": ("mean_pool", None),
}
DEFAULT_SYSTEMS = [name for name in SYSTEMS if name != "mean_pool"]
# the targets: system -> the least AUC difference RM with rehearsal must have over it on every seed
TARGETS = {"target_attention_last100": 0.1, "target_attention_last200": 0.1, "target_attention_full": -0.01}
# the generator's arguments, flags of the same name
DATA = ("num_users", "history_length", "num_items", "num_categories", "num_interests", "early_noise", "interest_drift")
# arguments that say where and what runs, not how: runs of other settings must not be mixed
NOT_SETTINGS = ("systems", "seeds", "output_dir", "overwrite")


def budget_schedule(optimizer, budget: TrainingCpuClock, warmup: float) -> LambdaLR:
    """Linear warm-up over the first `warmup` share of the CPU budget, then linear decay to 0 at its end."""

    def factor(_step: int) -> float:
        spent = budget.fraction()
        if spent < warmup:
            return spent / warmup
        return max(0.0, (1.0 - spent) / (1.0 - warmup))

    return LambdaLR(optimizer, factor)


def train_and_test(args, system: str, seed: int, datasets, vocab, work_dir: str) -> dict:
    """Train one system for the CPU budget, then test it; the run's record."""
    variant, last_events = SYSTEMS[system]
    model_name, use_rehearsal, memory_type = VARIANTS[variant]
    # run_ctr's defaults (the tuned model) but for the system's choices
    model_args = run_ctr.ModelArguments(model=model_name, use_rehearsal=use_rehearsal, memory_type=memory_type)
    set_seed(seed)
    model = run_ctr.MODEL_CLASSES[model_name](run_ctr.build_config(model_args, vocab))
    collator = ClickCollator(max_history=last_events)
    budget = TrainingCpuClock(args.cpu_seconds)
    callbacks = [budget]
    if model_name == "rm" and args.rm_history_curriculum:  # RM's long-input recipe, on the same CPU clock
        stages = parse_history_curriculum(args.rm_history_curriculum)
        callbacks.append(HistoryPrefixCurriculum(collator, stages, progress=lambda state: budget.fraction()))
    training_args = run_ctr.ClickTrainingArguments(
        output_dir=f"{work_dir}/{system}_{seed}",
        max_steps=args.max_steps,  # a cap the budget reaches first
        per_device_eval_batch_size=args.eval_batch_size,
        save_strategy="no",
        logging_strategy="no",
        label_names=["labels"],
        use_cpu=True,
        seed=seed,
        disable_tqdm=True,
        report_to="none",
    )
    trainer = RehearsalMemoryTrainer(
        model=model,
        args=training_args,
        train_dataset=datasets["train"],
        eval_dataset=datasets["test"],
        data_collator=collator,
        compute_metrics=run_ctr.compute_metrics,
        callbacks=callbacks,
    )
    trainer.create_optimizer()  # run_ctr's AdamW; the schedule below replaces the step-counting one
    trainer.lr_scheduler = budget_schedule(trainer.optimizer, budget, training_args.warmup_steps)
    result = trainer.train()
    train_cpu = budget.train_cpu
    # samples seen: each epoch is ceil(N / batch) steps over the N training rows (the last batch may be short)
    rows, batch_size = len(datasets["train"]), training_args.per_device_train_batch_size
    epochs, steps_left = divmod(trainer.state.global_step, -(-rows // batch_size))
    samples = epochs * rows + min(steps_left * batch_size, rows)
    eval_start = time.process_time()
    metrics = trainer.evaluate()
    return {
        "auc": metrics["eval_auc"],
        "accuracy": metrics["eval_accuracy"],
        "log_loss": metrics["eval_log_loss"],
        "steps": trainer.state.global_step,
        "train_cpu_seconds": train_cpu,
        "samples_per_cpu_second": samples / train_cpu,
        "cpu_seconds_per_sample": train_cpu / samples,
        "mean_train_loss": result.training_loss,
        "eval_cpu_seconds": time.process_time() - eval_start,
        "model": dataclasses.asdict(model_args),
    }


def summarise(runs: dict, systems: list[str], seeds: list[int]) -> dict:
    """Per system with stored runs: AUC (mean, min, per seed) and mean steps and costs over the seeds."""
    summary = {}
    for system in systems:
        done = {seed: runs[f"{system}/{seed}"] for seed in seeds if f"{system}/{seed}" in runs}
        if not done:
            continue
        aucs = [run["auc"] for run in done.values()]
        summary[system] = {
            "seeds": list(done),
            "auc_per_seed": aucs,
            "mean_auc": statistics.fmean(aucs),
            "min_auc": min(aucs),
            **{
                f"mean_{key}": statistics.fmean(run[key] for run in done.values())
                for key in ("steps", "train_cpu_seconds", "samples_per_cpu_second", "cpu_seconds_per_sample")
            },
        }
    return summary


def check_targets(runs: dict, systems: list[str], seeds: list[int]) -> dict:
    """Each target of the issue among `systems`: per seed, RM (with rehearsal) AUC minus the other system's, and
    whether that difference reaches the required one; `met_on_every_seed` is None until both ran on every seed."""
    targets = {}
    if "rm_rehearsal" not in systems:
        return targets
    for other, required in TARGETS.items():
        if other not in systems:
            continue
        per_seed = {}
        for seed in seeds:
            rm, baseline = runs.get(f"rm_rehearsal/{seed}"), runs.get(f"{other}/{seed}")
            if rm and baseline:
                difference = rm["auc"] - baseline["auc"]
                per_seed[str(seed)] = {"difference": difference, "met": difference >= required}
        complete = len(per_seed) == len(seeds)
        name = f"rm_rehearsal >= {other} {'+' if required >= 0 else '-'} {abs(required)}"
        targets[name] = {
            "required_difference": required,
            "per_seed": per_seed,
            "met_on_every_seed": all(s["met"] for s in per_seed.values()) if complete else None,
        }
    return targets


def stored_runs(path: Path, settings: dict, overwrite: bool) -> dict:
    """The runs of an earlier invocation with the same settings (resume); other settings stop with an error,
    unless `overwrite` (then none)."""
    if overwrite or not path.exists():
        return {}
    earlier = json.loads(path.read_text())
    stored = earlier.get("settings", {})
    if stored != settings:  # mixing budgets or data would make the comparison meaningless
        changed = {k: f"{stored.get(k)} -> {v}" for k, v in settings.items() if stored.get(k) != v}
        sys.exit(
            f"{path} holds runs with other settings ({changed}): pass another --output_dir to keep them, or "
            "--overwrite to replace them"
        )
    return earlier.get("runs", {})


def comma_list(cast):
    return lambda text: [cast(item) for item in text.split(",") if item]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--systems", type=comma_list(str), default=DEFAULT_SYSTEMS,
                        help=f"comma-separated, from {', '.join(SYSTEMS)}")  # fmt: skip
    parser.add_argument("--seeds", type=comma_list(int), default=[0, 1, 2], help="model and batch-order seeds")
    parser.add_argument("--cpu_seconds", type=float, default=300.0, help="training CPU budget of every run")
    parser.add_argument("--num_users", type=int, default=2000, help="synthetic users (80%% train, 20%% test)")
    parser.add_argument("--history_length", type=int, default=10000, help="events per history")
    parser.add_argument("--num_items", type=int, default=50)
    parser.add_argument("--num_categories", type=int, default=5)
    parser.add_argument("--num_interests", type=int, default=1)
    parser.add_argument("--early_noise", type=float, default=0.3, help="share of the early events that are noise")
    parser.add_argument("--interest_drift", type=float, default=0.5,
                        help="share of the late events from new interests that are never targets")  # fmt: skip
    parser.add_argument(
        "--rm_history_curriculum",
        default="1000:0.4",
        help="RM's length curriculum (run_ctr --history_curriculum), over the CPU budget; '' for none",
    )
    parser.add_argument("--data_seed", type=int, default=0, help="the data (the same for every system and seed)")
    parser.add_argument("--max_steps", type=int, default=1_000_000, help="step cap; the CPU budget ends runs first")
    parser.add_argument("--eval_batch_size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (1: on a shared 2-core machine more threads ran slower)")  # fmt: skip
    parser.add_argument("--output_dir", type=Path, default=RESULTS)
    parser.add_argument("--overwrite", action="store_true", help="replace runs stored with other settings")
    args = parser.parse_args()
    if unknown := [s for s in args.systems if s not in SYSTEMS]:
        sys.exit(f"--systems: unknown {', '.join(unknown)} (choose from {', '.join(SYSTEMS)})")
    torch.set_num_threads(args.threads)
    path = args.output_dir / "ctr_equal_cpu.json"
    settings = {k: v for k, v in vars(args).items() if k not in NOT_SETTINGS}
    runs = stored_runs(path, settings, args.overwrite)

    datasets, vocab = generate_behavior_histories(**{name: getattr(args, name) for name in DATA}, seed=args.data_seed)

    def save() -> dict:
        results = {
            **provenance(),
            "arguments": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "settings": settings,
            "torch_threads": torch.get_num_threads(),
            "train_samples": len(datasets["train"]),
            "test_samples": len(datasets["test"]),
            "runs": runs,
            "summary": summarise(runs, args.systems, args.seeds),
            "targets": check_targets(runs, args.systems, args.seeds),
        }
        args.output_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=2))
        return results

    todo = [(system, seed) for system in args.systems for seed in args.seeds if f"{system}/{seed}" not in runs]
    if len(todo) < len(args.systems) * len(args.seeds):
        print(f"{path}: skipping {len(args.systems) * len(args.seeds) - len(todo)} runs already stored")
    with tempfile.TemporaryDirectory() as work_dir:
        for system, seed in todo:
            run = runs[f"{system}/{seed}"] = train_and_test(args, system, seed, datasets, vocab, work_dir)
            save()
            print(f"{system:<26} seed {seed}: AUC {run['auc']:.3f}, {run['steps']} steps in "
                  f"{run['train_cpu_seconds']:.1f} CPU s ({run['cpu_seconds_per_sample'] * 1e3:.1f} ms per sample)",
                  flush=True)  # fmt: skip
    results = save()

    print(f"\nTest AUC at {args.cpu_seconds:g} training CPU s, histories of {args.history_length} events:")
    for system, row in results["summary"].items():
        print(f"  {system:<26} mean {row['mean_auc']:.3f}  min {row['min_auc']:.3f}  "
              f"{row['mean_steps']:.0f} steps  {row['mean_samples_per_cpu_second']:.1f} samples/CPU s")  # fmt: skip
    for name, target in results["targets"].items():
        differences = ", ".join(f"{d['difference']:+.3f}" for d in target["per_seed"].values())
        print(f"  {name}: {target['met_on_every_seed']} (differences {differences})")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
