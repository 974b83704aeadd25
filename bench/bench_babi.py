"""bAbI table: one model per task, trained and evaluated with `examples/run_qa.py`, with and without rehearsal, and
optionally the full-access MemN2N baseline (`--variants memn2n`: it reads every story sentence at question time).

Each (variant, task) row is trained from scratch, its test accuracy, error and training time are stored in
bench/results/babi.json as soon as it finishes, and a rerun with the same settings skips rows already there,
so a full run over all 20 tasks (hours on CPU) can be stopped and resumed; a rerun with other settings into the
same file stops with an error rather than mixing or dropping rows. The JSON says which rows were run; a bar
chart of the error per task goes next to it (babi.png).

    python bench/bench_babi.py --overwrite              # quick: task 1, sentence items, 600 steps, with and without
    python bench/bench_babi.py --tasks 1-20 --output bench/results/babi_20tasks.json   # all 20 tasks, same budget
    python bench/bench_babi.py --tasks 1-20 --max_steps 20000 --output ...              # a full-length training run
    python bench/bench_babi.py --variants rehearsal,plain,memn2n --output ...           # and the MemN2N baseline
    # to convergence (the recorded run): stop a row when accuracy on a held-out tenth of the training stories has not
    # improved for 10 evaluations (every 200 steps), or at 20,000 steps or 600 training CPU seconds; its test error is
    # the best step's
    python bench/bench_babi.py --tasks 1-20 --variants rehearsal,plain,memn2n --max_steps 20000 \
        --early_stopping_patience 10 --cpu_cap 600 --output bench/results/babi_converged.json
    # the same with a longer patience: rows of the run above that the cap or the step limit stopped are carried over
    # as they are (the longer patience would train them through the same steps); the others are run again
    python bench/bench_babi.py ... --early_stopping_patience 50 --carry_rows_from bench/results/babi_converged.json \
        --output bench/results/babi_converged_patience50.json
    # rows with rehearsal at other loss weights; all three at 0 keeps rehearsal's forward pass and random draws but
    # none of its gradient, which tells what rehearsal's loss changes from what its random draws change
    python bench/bench_babi.py --variants rehearsal --recollection_weight 0 --familiarity_weight 0 --sampler_weight 0 ...
    # rehearsal that draws its fragments from the supporting facts (an oracle: external, without a teacher)
    python bench/bench_babi.py --variants rehearsal --sampler_mode external ...
    # rehearsal in full for 5,000 steps, then lowered to a quarter of its weights over the next 1,000
    python bench/bench_babi.py --variants rehearsal --rehearsal_decay_start 5000 --rehearsal_decay_steps 1000 ...

Task 3 has no en-10k training file; `run_qa.py` reads it from en/ (1k questions). Reference systems are quoted
from their papers (10k training setting), not re-run here. Every row records its training CPU seconds (this
process, one thread: `cost_utils.TrainingCpuClock`), the steps it took and what stopped it.
"""

import argparse
import json
import sys
from pathlib import Path
from typing import get_args

import matplotlib.pyplot as plt
from cost_utils import TrainingCpuClock, provenance
from tqdm import tqdm

from rm_hf.configuration_rehearsal_memory import MEMORY_TYPE_ALIASES, SentencePositionStart, SlotAddressing
from rm_hf.qa_data import check_renamable_tasks

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import run_qa  # noqa: E402

RESULTS = Path(__file__).parent / "results"
DEFAULT_BABI = Path(__file__).resolve().parents[2] / "shared" / "data" / "babi"
# Rehearsal Memory with and without rehearsal, and the full-access baseline
VARIANTS = ("rehearsal", "plain", "memn2n")
# Mean test error (%) and failed tasks (error > 5%) over the 20 tasks, 10k training questions per task.
QUOTED = [
    {"system": "MemN2N (Sukhbaatar et al., 2015)", "reads": "all sentences", "mean_error": 4.2, "failed": 3},
    {
        "system": "DNC, best run (Graves et al., 2016)",
        "reads": "one pass, fixed memory",
        "mean_error": 3.8,
        "failed": 2,
    },
    {"system": "EntNet (Henaff et al., 2017)", "reads": "one pass, fixed memory", "mean_error": 0.5, "failed": 0},
]

# run_qa.py's on/off model flags that RM rows pass on (the MemN2N baseline has neither)
RM_SWITCHES = ("link_previous_item", "reader_feed_forward")
# run_qa.py's model options that RM rows pass on when given (run_qa's defaults otherwise)
RM_OPTIONS = ("num_hidden_layers", "num_memory_slots", "slot_addressing")
# run_qa.py's options that every row, RM's and MemN2N's, passes on when given
EVERY_ROW_OPTIONS = ("linear_start_steps", "weight_decay")
# run_qa.py's rehearsal options (where fragments are drawn, the loss weights and their decay), which rows with
# rehearsal pass on when given (run_qa's defaults otherwise), with each one's type
REHEARSAL_OPTIONS = {
    "sampler_mode": str,
    "recollection_weight": float,
    "familiarity_weight": float,
    "sampler_weight": float,
    "rehearsal_decay_start": int,
    "rehearsal_decay_steps": int,
    "rehearsal_final_ratio": float,
}


def parse_tasks(text: str) -> list[int]:
    if "-" in text:
        first, last = (int(t) for t in text.split("-"))
        return list(range(first, last + 1))
    return [int(t) for t in text.split(",")]


def runs_per_task(variants: list[str], memory_types: list[str]) -> list[tuple[str, str | None, bool]]:
    """(model, memory type, rehearsal) of each row a task gets: Rehearsal Memory per memory type and variant, and
    the baseline once (it has no memory type and no rehearsal)."""
    runs = [("rm", m, v == "rehearsal") for m in memory_types for v in variants if v != "memn2n"]
    return runs + ([("memn2n", None, False)] if "memn2n" in variants else [])


def run_row(args, task: int, model: str, rehearsal: bool, memory_type: str | None) -> dict:
    # the checkpoint and its model card stay for inspection (outputs/ is git-ignored)
    if model == "rm":
        prefix = "" if memory_type == "slots" else f"{memory_type}-"
        output_dir = args.checkpoint_dir / f"{prefix}{'rehearsal' if rehearsal else 'plain'}-qa{task}"
        model_flags = ["--use_rehearsal", str(rehearsal), "--memory_type", memory_type,
                       "--memory_capacity", str(args.memory_capacity)]  # fmt: skip
    else:
        output_dir = args.checkpoint_dir / f"{model}-qa{task}"
        model_flags = ["--model", model]
    argv = [
        "--babi_dir", str(args.babi_dir), "--babi_subset", args.babi_subset, "--tasks", str(task),
        "--story_items", args.story_items, "--segment_length", str(args.segment_length), "--output_dir", str(output_dir),
        "--max_steps", str(args.max_steps),
        "--per_device_train_batch_size", str(args.batch_size), "--learning_rate", str(args.learning_rate),
        "--warmup_steps", str(args.max_steps // 20), "--seed", str(args.seed), "--use_cpu", "true",
        "--report_to", "none", "--logging_steps", str(max(1, args.max_steps // 10)),
        "--disable_tqdm", "true", *model_flags,
        "--overwrite_output_dir",  # each row is trained afresh, over the checkpoint an earlier bench left
    ]  # fmt: skip
    if args.early_stopping_patience:  # run_qa then saves the best checkpoint (only) and scores it on the test split
        argv += ["--early_stopping_patience", str(args.early_stopping_patience), "--validation_fraction",
                 str(args.validation_fraction), "--eval_strategy", "steps", "--eval_steps", str(args.eval_steps),
                 "--per_device_eval_batch_size", "128"]  # fmt: skip
    else:
        argv += ["--save_strategy", "no"]
    if args.eval_questions:
        argv += ["--max_eval_samples", str(args.eval_questions)]
    if args.permute_names:
        argv += ["--permute_names"]
    for flag in RM_SWITCHES:
        if getattr(args, flag) and model == "rm":
            argv += [f"--{flag}", "true"]
    for option in RM_OPTIONS:
        if getattr(args, option) is not None and model == "rm":
            argv += [f"--{option}", str(getattr(args, option))]
    for option in EVERY_ROW_OPTIONS:
        if getattr(args, option) is not None:
            argv += [f"--{option}", str(getattr(args, option))]
    for option in REHEARSAL_OPTIONS:
        if getattr(args, option) is not None and rehearsal:
            argv += [f"--{option}", str(getattr(args, option))]
    if model == "rm":
        argv += ["--sentence_position_start", args.sentence_position_start]
    clock = TrainingCpuClock(args.cpu_cap or float("inf"))
    outcome = run_qa.main(argv, callbacks=[clock])
    capacity = None  # the baseline keeps every sentence
    if model == "rm":  # as trained: the slots keep num_memory_slots vectors, the other types memory_capacity
        config = json.loads((output_dir / "config.json").read_text())
        capacity = config["num_memory_slots" if memory_type == "slots" else "memory_capacity"]
    accuracy = outcome["results"]["all"]["accuracy"]
    steps = len(clock.step_seconds)
    if args.cpu_cap and clock.train_cpu >= args.cpu_cap:
        stopped_by = "cpu_cap"
    else:
        stopped_by = "max_steps" if steps >= args.max_steps else "early_stopping"
    return {
        "task": task,
        "model": model,
        "memory_type": memory_type,
        "rehearsal": rehearsal,
        "accuracy": accuracy,
        "error": 1 - accuracy,
        "passed": 1 - accuracy < 0.05,
        "test_questions": outcome["results"]["all"]["count"],
        "train_seconds": outcome["metrics"]["train_runtime"],
        "cpu_seconds": clock.train_cpu,
        "steps": steps,
        # the step whose model was tested: the best validation step when stopping early, else the last
        "tested_step": outcome["metrics"].get("best_step", steps),
        "stopped_by": stopped_by,
        "memory_capacity": capacity,
    }


def carried_rows(path: Path, settings: dict) -> list[dict]:
    """The rows of another results file that this run would reproduce: all of them when it was run with the same
    settings; when only its early-stopping patience was shorter, the rows that never stopped early (stopped by the
    CPU cap or the step limit), since a longer patience trains them through the same steps. Each is marked with
    `carried_from`."""
    carried = json.loads(path.read_text())
    stored = carried.get("settings", {})
    patience, stored_patience = (s.get("early_stopping_patience", 0) for s in (settings, stored))
    changed = {
        k: f"{stored.get(k)} -> {settings.get(k)}" for k in {*stored, *settings} if stored.get(k) != settings.get(k)
    }
    if stored_patience > patience or set(changed) - {"early_stopping_patience"}:
        sys.exit(
            f"--carry_rows_from {path}: its rows were run with other settings ({changed}); only a shorter "
            "--early_stopping_patience may differ"
        )
    return [
        {**row, "carried_from": row.get("carried_from", str(path))}
        for row in carried.get("rows", [])
        if stored_patience == patience or row["stopped_by"] in ("cpu_cap", "max_steps")
    ]


def row_key(row: dict) -> tuple:
    """(task, model, memory type, rehearsal). Rows written before the baseline are Rehearsal Memory rows, and those
    written before memory types slot-memory rows; earlier memory type keys read as today's."""
    memory_type = row.get("memory_type", "slots")
    return row["task"], row.get("model", "rm"), MEMORY_TYPE_ALIASES.get(memory_type, memory_type), row["rehearsal"]


def row_order(row: dict) -> tuple:
    """Per task: Rehearsal Memory with the slot memory, then other memory types, then the baseline; with rehearsal
    before without."""
    task, model, memory_type, rehearsal = row_key(row)
    return task, model != "rm", memory_type != "slots", not rehearsal


def variant_name(model: str, memory_type: str | None, rehearsal: bool) -> str:
    """As in the summary: "with rehearsal", "key_value memory, without rehearsal", "memn2n (reads all sentences)"."""
    if model != "rm":
        return f"{model} (reads all sentences)"
    name = f"{'with' if rehearsal else 'without'} rehearsal"
    return name if memory_type == "slots" else f"{memory_type} memory, {name}"


def by_variant(rows: list[dict]) -> dict[str, list[dict]]:
    """Rows grouped per (model, memory type, rehearsal), named by `variant_name`."""
    groups = {}
    for model, memory_type in dict.fromkeys(row_key(row)[1:3] for row in rows):
        for rehearsal in (True, False):
            chosen = [row for row in rows if row_key(row)[1:] == (model, memory_type, rehearsal)]
            if chosen:
                groups[variant_name(model, memory_type, rehearsal)] = chosen
    return groups


def summarise(rows: list[dict]) -> dict:
    return {
        name: {
            "tasks_run": sorted(row["task"] for row in chosen),
            "mean_error": sum(row["error"] for row in chosen) / len(chosen),
            "passed": sum(row["passed"] for row in chosen),
            # rows written before CPU time was recorded count as 0
            "cpu_seconds": sum(row.get("cpu_seconds", 0) for row in chosen),
        }
        for name, chosen in by_variant(rows).items()
    }


def plot(rows: list[dict], settings: dict, path: Path) -> None:
    """Test error per task, one bar per variant, with the 5% pass line."""
    groups = by_variant(rows)
    tasks = sorted({row["task"] for row in rows})
    width = 0.8 / len(groups)
    fig, ax = plt.subplots(figsize=(min(12, 4 + 0.3 * len(tasks) * len(groups)), 4))
    for i, (name, chosen) in enumerate(groups.items()):
        errors = {row["task"]: row["error"] for row in chosen}
        x = [t + (i - (len(groups) - 1) / 2) * width for t in tasks if t in errors]
        ax.bar(x, [errors[t] for t in tasks if t in errors], width, label=name)
    ax.axhline(0.05, color="k", linestyle=":", label="pass line (5% error)")
    ax.set(xticks=tasks, xlabel="bAbI task", ylabel="test error", ylim=(0, 1))
    budget = f"{settings['max_steps']} steps"
    if "early_stopping_patience" in settings:
        budget = f"up to {budget} (early stopping, patience {settings['early_stopping_patience']})"
    if "cpu_cap" in settings:
        budget += f", at most {settings['cpu_cap']:g} CPU s"
    ax.set_title(f"bAbI {settings['babi_subset']}, {settings['story_items']} as items, seed {settings['seed']}\n"
                 f"{budget}, batch {settings['batch_size']}", fontsize=10)  # fmt: skip
    ax.legend(fontsize=8)
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--babi_dir", type=Path, default=DEFAULT_BABI)
    parser.add_argument("--babi_subset", default="en-10k", help="en-10k (the standard 10k setting) or en (1k)")
    parser.add_argument("--tasks", default="1", help="e.g. 1-20 or 1,2,3")
    parser.add_argument("--story_items", default="sentences", help="sentences or tokens (see the README)")
    parser.add_argument(
        "--segment_length", type=int, default=None, help="items per memory write (default 4 sentences or 32 tokens)"
    )
    parser.add_argument("--max_steps", type=int, default=600)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument("--eval_questions", type=int, default=1000, help="0 = the whole test file")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--variants", default="rehearsal,plain", help="comma-separated: rehearsal, plain (RM without) or memn2n"
    )
    parser.add_argument(
        "--memory_types", default="slots", help="comma-separated: slots (RM), expire_span, lamemo, key_value"
    )
    parser.add_argument(
        "--memory_capacity", type=int, default=16, help="entries of expire_span/lamemo/key_value (16 = RM's 16 slots)"
    )
    parser.add_argument(
        "--early_stopping_patience",
        type=int,
        default=None,
        help="train each row until accuracy on --validation_fraction of the training stories has not improved for "
        "this many evaluations (every --eval_steps), at most --max_steps; test the best step",
    )
    parser.add_argument("--validation_fraction", type=float, default=0.1, help="with --early_stopping_patience")
    parser.add_argument("--eval_steps", type=int, default=200, help="with --early_stopping_patience")
    parser.add_argument("--cpu_cap", type=float, default=None, help="training CPU seconds at most per row")
    parser.add_argument(
        "--permute_names",
        action="store_true",
        help="run_qa.py's --permute_names: rename the names at random in training (tasks 1-5, 13)",
    )
    parser.add_argument(
        "--link_previous_item",
        action="store_true",
        help="RM rows: run_qa.py's --link_previous_item (each item gets a learned map of the item before it)",
    )
    parser.add_argument(
        "--reader_feed_forward",
        action="store_true",
        help="RM rows: run_qa.py's --reader_feed_forward (each reasoning hop ends with a feed-forward layer)",
    )
    parser.add_argument(
        "--num_hidden_layers",
        type=int,
        default=None,
        help="RM rows: run_qa.py's --num_hidden_layers, the encoder layers over each segment's items (default 2; 0: "
        "none, each item is written as embedded)",
    )
    parser.add_argument(
        "--num_memory_slots",
        type=int,
        default=None,
        help="RM rows: run_qa.py's --num_memory_slots, K of the slot memory (default 16)",
    )
    parser.add_argument(
        "--slot_addressing",
        choices=get_args(SlotAddressing),
        default=None,
        help="RM rows: run_qa.py's --slot_addressing (key: each slot writes with a fixed learned key; default content)",
    )
    parser.add_argument(
        "--linear_start_steps",
        type=int,
        default=None,
        help="every row: run_qa.py's --linear_start_steps (the reader's hops without the softmax for the first "
        "steps; default 0, off)",
    )
    parser.add_argument(
        "--weight_decay",
        type=float,
        default=None,
        help="every row: the Trainer's --weight_decay (AdamW's decoupled decay of the weights but biases and norms; "
        "default 0)",
    )
    parser.add_argument(
        "--sentence_position_start",
        choices=get_args(SentencePositionStart),
        default="memn2n",
        help="RM rows: run_qa.py's --sentence_position_start (uniform: the bag-of-words start of the rows run before "
        "2026-12-06)",
    )
    for option, kind in REHEARSAL_OPTIONS.items():  # e.g. all weights at 0: rehearsal's forward, none of its loss
        parser.add_argument(
            f"--{option}", type=kind, default=None, help=f"rows with rehearsal: run_qa.py's --{option}"
        )
    parser.add_argument("--output", type=Path, default=RESULTS / "babi.json")
    parser.add_argument(
        "--overwrite", action="store_true", help="start --output afresh instead of resuming the rows it holds"
    )
    parser.add_argument("--checkpoint_dir", type=Path, default=Path("outputs") / "bench_babi")
    parser.add_argument(
        "--carry_rows_from", type=Path, nargs="*", default=[],
        help="results files whose rows this run would reproduce: taken as they are, not rerun (same settings; or a "
        "shorter --early_stopping_patience, for rows stopped by the CPU cap or the step limit)",
    )  # fmt: skip
    args = parser.parse_args()
    if args.segment_length is None:
        args.segment_length = 4 if args.story_items == "sentences" else 32
    if not args.babi_dir.is_dir():
        sys.exit(f"bAbI folder not found: {args.babi_dir} (pass --babi_dir)")
    variants = args.variants.split(",")
    if unknown := [v for v in variants if v not in VARIANTS]:
        sys.exit(f"--variants: unknown {', '.join(unknown)} (choose from {', '.join(VARIANTS)})")
    if "memn2n" in variants and args.story_items != "sentences":
        sys.exit("--variants memn2n reads sentence items: use --story_items sentences, or leave memn2n out")

    if args.permute_names:
        try:
            check_renamable_tasks(parse_tasks(args.tasks))
        except ValueError as error:
            sys.exit(str(error))
    keys = ("babi_subset", "story_items", "segment_length", "max_steps", "batch_size", "learning_rate")
    settings = {k: getattr(args, k) for k in (*keys, "eval_questions", "seed")}
    # stopping rules join the settings only when given, so files written before they existed still resume
    stopping = {"early_stopping_patience": args.early_stopping_patience, "cpu_cap": args.cpu_cap}
    if args.early_stopping_patience:
        stopping.update(validation_fraction=args.validation_fraction, eval_steps=args.eval_steps)
    settings.update({k: v for k, v in stopping.items() if v is not None})
    for flag in ("permute_names", *RM_SWITCHES):  # like the stopping rules: only when given
        if getattr(args, flag):
            settings[flag] = True
    for option in (*RM_OPTIONS, *EVERY_ROW_OPTIONS):
        if getattr(args, option) is not None:
            settings[option] = getattr(args, option)
    settings.update({k: getattr(args, k) for k in REHEARSAL_OPTIONS if getattr(args, k) is not None})
    # always: files written before it (every row then started uniform) must not resume under the new start
    settings["sentence_position_start"] = args.sentence_position_start
    resume = args.output.exists() and not args.overwrite
    previous = json.loads(args.output.read_text()) if resume else {"settings": settings}
    stored = previous.get("settings", {})
    if stored != settings:  # resuming must not mix budgets, nor silently drop the rows already run
        changed = {k: f"{stored.get(k)} -> {v}" for k, v in settings.items() if stored.get(k) != v}
        sys.exit(
            f"{args.output} holds rows run with other settings ({changed}): pass another --output to keep them, "
            "or --overwrite to replace them"
        )
    rows = previous.get("rows", [])
    runs = runs_per_task(variants, args.memory_types.split(","))
    wanted = [(task, *run) for task in parse_tasks(args.tasks) for run in runs]
    for path in args.carry_rows_from:
        missing = set(wanted) - {row_key(row) for row in rows}
        rows += [row for row in carried_rows(path, settings) if row_key(row) in missing]
    done = {row_key(row) for row in rows}
    todo = [key for key in wanted if key not in done]

    def save():
        result = {
            **provenance(),
            "settings": settings,
            "rows": sorted(rows, key=row_order),
            "summary": summarise(rows),
            "quoted_not_rerun": QUOTED,
        }
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(result, indent=2))

    if args.carry_rows_from:
        save()  # the carried rows are kept even if no row is left to run
    for task, model, memory_type, rehearsal in tqdm(todo, desc="bAbI runs"):
        rows.append(run_row(args, task, model, rehearsal, memory_type))
        save()
    if rows:
        plot(rows, settings, args.output.with_suffix(".png"))
    print(json.dumps(summarise(rows), indent=2))


if __name__ == "__main__":
    main()
