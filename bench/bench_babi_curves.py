"""Equal-CPU curves on bAbI: test accuracy against the CPU seconds spent training, per system, for tasks 1 and 2
(en-10k).

Every system is trained from scratch by the package's own Trainer through `examples/run_qa.py`, as a user would
run it, with one torch thread; the systems differ only in their run_qa flags:

    rm_rehearsal   --model rm --story_items sentences --segment_length 4     (rehearsal on, run_qa's defaults)
    rm_plain       the same with --use_rehearsal False
    memn2n         --model memn2n --story_items sentences                    (reads every sentence at question time)

and `--extra NAME=FLAGS` adds a named system (flags after the bench's own, so they may also change e.g.
--learning_rate or --per_device_train_batch_size), to sweep settings with the same tool.

Every --eval_every optimizer steps the model is evaluated on the first --eval_questions questions of the task's
test split (the same questions for every system), and the curve gets a point (step, training CPU seconds,
accuracy). A run stops at the first step at which its training CPU seconds reach --cpu_budget (evaluated there
once more; the last point may pass the budget by up to one step), or at --max_steps. The learning-rate schedule
is laid over --max_steps, so a run stopped by the budget has barely decayed its rate; any warmup is the systems'
own flag (a --warmup_ratio is a share of --max_steps). Without --learning_rate, run_qa's default rate is used
(1e-3 with a 5% warm-up since f6c520a, 2026-12-02; transformers' 5e-5 before it).

Training CPU seconds are `time.process_time()` of this process (all its threads) from the Trainer's
`on_train_begin` to the end of each optimizer step (`on_step_end`), less every evaluation: the time from the end
of the step it follows to the end of the evaluation (`on_evaluate`; it includes the Trainer's logging at that
step). So they count batch drawing and collation (in this process: the bench refuses dataloader workers),
forward, backward, optimizer and scheduler steps, and the Trainer's own bookkeeping; not reading or encoding
the data, building the model, evaluation, or saving the model. A step's CPU seconds run from the end of the
previous step (or evaluation) to its own end; per run the JSON holds their median and the examples per
training CPU second (steps x batch size / training CPU seconds).

    python bench/bench_babi_curves.py                 # quick: tasks 1 and 2, seed 0, 120 CPU seconds per run
    python bench/bench_babi_curves.py --seeds 0,1,2 --cpu_budget 900 --output_dir bench/results/curves_full
    python bench/bench_babi_curves.py --extra "rm_cheap=--model rm --story_items sentences --segment_length 4 \
        --num_rehearsal_fragments 2"                   # add a system; runs already stored are skipped

Writes babi_curves.json (machine, command, arguments, per "system/task/seed" run its flags, curve and summary:
first training CPU second at an accuracy >= 0.95 and >= 0.99, final accuracy, examples per CPU second, median
step CPU seconds) and babi_curves.png (one panel per task, one line per system and seed) into --output_dir. Each
run is stored as soon as it ends; a rerun with the same settings skips the runs there, one with other settings
stops with an error unless --overwrite.
"""

import argparse
import json
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from bench_babi import DEFAULT_BABI, parse_tasks, run_qa  # run_qa: examples/run_qa.py, put on the path there
from cost_utils import RESULTS, TrainingCpuClock, provenance
from tqdm.auto import tqdm

SYSTEMS = {
    "rm_rehearsal": "--model rm --story_items sentences --segment_length 4",
    "rm_plain": "--model rm --story_items sentences --segment_length 4 --use_rehearsal False",
    "memn2n": "--model memn2n --story_items sentences",
}
# run_qa flags the bench sets itself: a system changing them would change what is measured, or where (the CPU
# time of dataloader workers, other processes, would escape the count)
RESERVED = {"--babi_dir", "--tasks", "--seed", "--output_dir", "--max_steps", "--eval_strategy", "--eval_steps",
            "--max_eval_samples", "--dataloader_num_workers"}  # fmt: skip
# what makes stored runs comparable with new ones: everything but which runs, and where
SETTINGS = ("cpu_budget", "max_steps", "eval_every", "eval_questions", "batch_size", "learning_rate")
THRESHOLDS = (0.95, 0.99)


class CurveClock(TrainingCpuClock):
    """The training CPU clock (see the module docstring), with a curve point at each evaluation and one last
    evaluation when the budget stops training."""

    def __init__(self, cpu_budget: float):
        super().__init__(cpu_budget)
        self.curve = []

    def on_train_begin(self, args, state, control, **kwargs):
        super().on_train_begin(args, state, control, **kwargs)
        self.batch_size = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size

    def on_step_end(self, args, state, control, **kwargs):
        super().on_step_end(args, state, control, **kwargs)
        if self.train_cpu >= self.cpu_budget:  # out of budget: one last point
            control.should_evaluate = True

    def on_evaluate(self, args, state, control, metrics, **kwargs):
        point = {"step": state.global_step, "train_cpu_seconds": self.train_cpu, "accuracy": metrics["eval_accuracy"]}
        self.curve.append(point)
        super().on_evaluate(args, state, control, **kwargs)


def run_curve(args, flags: list[str], task: int, seed: int) -> dict:
    """Train one system on one task with run_qa; its curve and summary."""
    clock = CurveClock(args.cpu_budget)
    argv = [
        "--babi_dir", str(args.babi_dir), "--tasks", str(task), "--seed", str(seed), "--do_train",
        "--max_steps", str(args.max_steps), "--per_device_train_batch_size", str(args.batch_size),
        "--eval_strategy", "steps", "--eval_steps", str(args.eval_every), "--logging_steps", str(args.eval_every),
        "--per_device_eval_batch_size", "128", "--use_cpu", "true", "--report_to", "none", "--save_strategy", "no",
        "--disable_tqdm", "true",
    ]  # fmt: skip
    if args.eval_questions:
        argv += ["--max_eval_samples", str(args.eval_questions)]
    if args.learning_rate is not None:
        argv += ["--learning_rate", str(args.learning_rate)]
    start = time.perf_counter()
    # the checkpoint run_qa saves at the end is of no use here: it goes with the temporary folder
    with tempfile.TemporaryDirectory() as output_dir:
        run_qa.main([*argv, *flags, "--output_dir", output_dir], callbacks=[clock])
    steps, cpu = clock.curve[-1]["step"], clock.train_cpu
    summary = {
        "final_accuracy": clock.curve[-1]["accuracy"],
        **{f"cpu_seconds_to_{t}": first_cpu_at(clock.curve, t) for t in THRESHOLDS},
        "steps": steps,
        "train_cpu_seconds": cpu,
        "stopped_by": "cpu_budget" if cpu >= args.cpu_budget else "max_steps",
        "batch_size": clock.batch_size,
        "examples_per_cpu_second": steps * clock.batch_size / cpu,
        "median_step_cpu_seconds": statistics.median(clock.step_seconds),
        "wall_seconds": time.perf_counter() - start,  # data, evaluation and saving included
    }
    return {"flags": flags, "curve": clock.curve, "summary": summary}


def first_cpu_at(curve: list[dict], threshold: float) -> float | None:
    """Training CPU seconds of the first point with an accuracy >= `threshold`, None if none has."""
    return next((point["train_cpu_seconds"] for point in curve if point["accuracy"] >= threshold), None)


def parse_system(text: str) -> tuple[str, list[str]]:
    """ "NAME=FLAGS" -> (NAME, FLAGS as argv)."""
    name, equals, flags = text.partition("=")
    if not equals or not name or "/" in name:
        raise argparse.ArgumentTypeError(f"--extra takes NAME=FLAGS (NAME without '/'), got {text!r}")
    return name, shlex.split(flags)


def stored_runs(path: Path, settings: dict, systems: dict[str, list[str]], overwrite: bool) -> dict:
    """The runs of `path` to resume from: none with `overwrite` or no file; an error where they were run with other
    settings, or a system of the same name with other flags (resuming must not mix them, nor drop runs silently)."""
    if overwrite or not path.exists():
        return {}
    earlier = json.loads(path.read_text())
    stored = earlier["settings"]
    changed = {k: f"{stored.get(k)} -> {v}" for k, v in settings.items() if stored.get(k) != v}
    stored_flags = {run["system"]: run["flags"] for run in earlier["runs"].values()}
    changed.update({f"{name} flags": f"{shlex.join(stored_flags[name])!r} -> {shlex.join(flags)!r}"
                    for name, flags in systems.items() if stored_flags.get(name, flags) != flags})  # fmt: skip
    if changed:
        sys.exit(f"{path} holds runs with other settings ({changed}): pass another --output_dir to keep them, "
                 "or --overwrite to replace them")  # fmt: skip
    return earlier["runs"]


def plot(runs: dict, settings: dict, path: Path) -> None:
    """Accuracy against training CPU seconds: one panel per task, one colour per system (one line per seed)."""
    tasks = sorted({run["task"] for run in runs.values()})
    colours = {name: f"C{i}" for i, name in enumerate(dict.fromkeys(run["system"] for run in runs.values()))}
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.5 * len(tasks), 4.2), sharey=True, squeeze=False)
    for ax, task in zip(axes[0], tasks):
        labelled = set()
        for run in (run for run in runs.values() if run["task"] == task):
            x = [point["train_cpu_seconds"] for point in run["curve"]]
            y = [point["accuracy"] for point in run["curve"]]
            name = run["system"]
            ax.plot(x, y, ".-", color=colours[name], label=None if name in labelled else name)
            labelled.add(name)
        for threshold in THRESHOLDS:
            ax.axhline(threshold, color="k", linestyle=":", linewidth=0.8)
        ax.set(title=f"bAbI task {task}", xlabel="training CPU seconds (1 torch thread)", ylim=(0, 1.02))
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    axes[0][0].set_ylabel(f"test accuracy ({settings['eval_questions'] or 'all'} questions)")
    fig.suptitle(f"bAbI en-10k, batch {settings['batch_size']}, evaluated every {settings['eval_every']} steps,\n"
                 f"until {settings['cpu_budget']:g} training CPU s or {settings['max_steps']} steps", fontsize=10)  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def describe(key: str, run: dict) -> str:
    summary = run["summary"]
    seconds = {t: summary[f"cpu_seconds_to_{t}"] for t in THRESHOLDS}
    reached = ", ".join(f"{t}: {'-' if s is None else f'{s:.0f} s'}" for t, s in seconds.items())
    return (f"{key:<28} accuracy {summary['final_accuracy']:.3f} after {summary['steps']} steps, "
            f"{summary['train_cpu_seconds']:.0f} CPU s ({summary['stopped_by']}); first at {reached}; "
            f"{summary['examples_per_cpu_second']:.0f} examples/CPU s, "
            f"median step {1000 * summary['median_step_cpu_seconds']:.0f} CPU ms")  # fmt: skip


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--babi_dir", type=Path, default=DEFAULT_BABI)
    parser.add_argument("--tasks", type=parse_tasks, default=[1, 2], help="e.g. 1,2 or 1-3")
    parser.add_argument("--seeds", type=parse_tasks, default=[0], help="e.g. 0,1,2 or 0-2")
    parser.add_argument("--systems", type=lambda text: [name for name in text.split(",") if name],
                        default=list(SYSTEMS),
                        help=f"comma-separated, of {', '.join(SYSTEMS)} ('': only the --extra systems)")  # fmt: skip
    parser.add_argument("--extra", type=parse_system, action="append", default=[], metavar="NAME=FLAGS",
                        help="another system: its name and run_qa flags (repeatable)")  # fmt: skip
    parser.add_argument("--cpu_budget", type=float, default=120, help="training CPU seconds per run")
    parser.add_argument("--max_steps", type=int, default=20000, help="at most this many steps per run")
    parser.add_argument("--eval_every", type=int, default=50, help="optimizer steps between evaluations")
    parser.add_argument("--eval_questions", type=int, default=1000, help="first N test questions (0 = all)")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--learning_rate", type=float, default=None, help="default: run_qa's (1e-3)")
    parser.add_argument("--output_dir", type=Path, default=RESULTS)
    parser.add_argument("--overwrite", action="store_true", help="start afresh instead of resuming stored runs")
    args = parser.parse_args()
    if unknown := [name for name in args.systems if name not in SYSTEMS]:
        sys.exit(f"--systems: unknown {', '.join(unknown)} (choose from {', '.join(SYSTEMS)}, or add --extra)")
    systems = {name: shlex.split(SYSTEMS[name]) for name in args.systems}
    for name, flags in args.extra:
        if name in systems:
            sys.exit(f"--extra {name}: a system of that name is already run (give it another name)")
        systems[name] = flags
    for name, flags in systems.items():
        if taken := sorted({flag.split("=")[0] for flag in flags} & RESERVED):
            sys.exit(f"system {name}: {', '.join(taken)} are set by the bench itself (see its options)")
    if not args.babi_dir.is_dir():
        sys.exit(f"bAbI folder not found: {args.babi_dir} (pass --babi_dir)")
    torch.set_num_threads(1)

    settings = {k: getattr(args, k) for k in SETTINGS}
    path = args.output_dir / "babi_curves.json"
    runs = stored_runs(path, settings, systems, args.overwrite)
    todo = [(name, task, seed) for name in systems for task in args.tasks for seed in args.seeds
            if f"{name}/{task}/{seed}" not in runs]  # fmt: skip
    print(f"{len(todo)} runs to do, {len(runs)} stored in {path}")
    for name, task, seed in tqdm(todo, desc="bAbI curves", unit="run"):
        key = f"{name}/{task}/{seed}"
        runs[key] = {"system": name, "task": task, "seed": seed, **run_curve(args, systems[name], task, seed)}
        result = {**provenance(), "arguments": json.loads(json.dumps(vars(args), default=str)), "settings": settings,
                  "runs": runs}  # fmt: skip
        args.output_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2))
        tqdm.write(describe(key, runs[key]))
    if runs:
        plot(runs, settings, path.with_suffix(".png"))
    print(f"\ntraining CPU seconds to accuracy {' and '.join(map(str, THRESHOLDS))} ('-': not reached):")
    for key, run in runs.items():
        print(describe(key, run))
    print(f"wrote {path} and {path.with_suffix('.png')}")


if __name__ == "__main__":
    main()
