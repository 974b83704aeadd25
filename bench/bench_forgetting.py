"""Forgetting curves: accuracy as a function of how far back the supporting fact lies.

On generated long stories (`rm_hf.story_generator`; questions where_person / where_object / who_has, the
supporting fact `fact_distance` sentences before the end, uniform over the story), small RM question-answering
models are trained with a length curriculum (`--curriculum LENGTH:STEPS ...`: stories of each length for that many
steps, shortest first), then read test stories of every `--test_lengths` length once, segment by segment, into
their fixed-size memory and answer from the memory alone. Test stories may be far longer than the training ones
(the memory does not grow), so the curve reaches far beyond the training distances. Each test question is binned
by its distance in sentences and in segments (tokens after the supporting fact / segment_length); per bin the plot
shows the mean accuracy over seeds with a min-max band, one line per variant:

- no rehearsal; no rehearsal and no slot write gate (the memory before the gate, an ablation);
- rehearsal, uniform history sampler; rehearsal, teacher history sampler (trained with the task);
- the other memory types (no rehearsal), keeping as many vectors as RM has slots (16, or --config num_memory_slots).

The dotted reference is the majority answer per question type of the training set (what a model that ignores
the story gets). Same data, seeds and steps for every variant. Per variant the JSON also holds the curve of
each question type, the final loss terms (mean of the last 50 steps), the training CPU seconds, and with
rehearsal the share of sampled fragments that cover the supporting fact (on the shortest test stories); each run
also keeps its step time, CPU seconds and final losses per curriculum stage.
Every (variant, seed) run is stored as soon as it ends; a rerun with the same settings skips the runs already
there (so a long run can be stopped and continued), a rerun with other settings starts the file afresh. Two
invocations with the same settings and other variants or seeds may fill one --output_dir at once (one per core).
With --models_dir each trained model is kept (MODELS_DIR/VARIANT_seedSEED), and a run whose model is kept there
is tested without training it again: under --test_config fields set at load time (e.g. the write threshold,
slot_write_threshold, which needs no training), and on --test_seed's other stories to choose them on validation.
With --init_from a run starts from such a kept model instead of a fresh one (e.g. a `who_has` model continued on all
three question types); its record names that model and its training CPU seconds. Given a --models_dir of several
kept runs (the seeds of a first stage), it starts from the one whose training ended with the lowest answer loss, and
the record lists every candidate's loss and CPU seconds.

    python bench/bench_forgetting.py        # quick: curriculum up to 30 sentences, tested at 30/100/300
    python bench/bench_forgetting.py --curriculum 4:200 10:1500 30:1000 100:400 --test_lengths 100 300 1000 3000 \
        --num_test 200 --seeds 0 1 2 --config num_memory_slots=32 --output_dir bench/results/retention
        # the recorded benchmark (README, Results: "The retention benchmark"); two at once with other --variants
        # fill the same file

Writes forgetting.json and forgetting.png into --output_dir (default bench/results).
"""

import argparse
import fcntl
import itertools
import json
import os
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from cost_utils import RESULTS, provenance
from datasets import concatenate_datasets
from qa_utils import (
    BATCH_SIZE,
    build_task,
    check_overrides,
    choose_kept_model,
    fragment_coverage,
    keep_model,
    kept_run,
    load_kept_model,
    make_model,
    parse_override,
    predict,
    start_from_kept_model,
    train_stages,
)
from tqdm.auto import tqdm

from rm_hf import RehearsalMemoryConfig, RehearsalMemoryForQuestionAnswering
from rm_hf.story_generator import QUESTION_TYPES, generate_stories

VARIANTS = {
    "no_rehearsal": ("no rehearsal", {"use_rehearsal": False}),
    "no_gate": ("no rehearsal, no write gate", {"use_rehearsal": False, "slot_write_gate": False}),
    "rehearsal_uniform": ("rehearsal, uniform sampler", {"use_rehearsal": True, "sampler_mode": "uniform"}),
    "rehearsal_teacher": ("rehearsal, teacher sampler", {"use_rehearsal": True, "sampler_mode": "teacher"}),
    # the other memory types as published (no rehearsal), keeping as many vectors as RM has slots (variant_fields)
    **{
        memory_type: (f"{title} memory", {"use_rehearsal": False, "memory_type": memory_type})
        for memory_type, title in (("expire_span", "Expire-Span"), ("lamemo", "LaMemo"), ("key_value", "key-value"))
    },
}
# Distance bins [lo, hi): roughly x3 apart, so short and very long distances both get a few bins.
EDGES = (0, 1, 3, 10, 30, 100, 300, 1000, 3000, 10000, float("inf"))
# Test stories are drawn from this seed plus their length; a run's settings name it only when it differs.
DEFAULT_TEST_SEED = 1000


def draw_test_stories(test_lengths, num_test: int, test_seed: int, question_types):
    """The test stories of a run: `num_test` of each length, drawn from `test_seed` + length."""
    types = tuple(question_types)
    return concatenate_datasets(
        [generate_stories(num_test, story_length=n, seed=test_seed + n, question_types=types) for n in test_lengths]
    )


def bin_label(low, high) -> str:
    return f">={low}" if high == float("inf") else f"[{low},{high})"


def distances(row, segment_length: int, story_items: str) -> tuple[int, float]:
    """(sentences, segments) between the supporting fact and the end of the story."""
    if story_items == "sentences":  # one item per sentence
        return int(row["fact_distance"]), row["fact_distance"] / segment_length
    last_fact_token = max(i for i, s in enumerate(row["supporting_mask"]) if s)
    tokens_after = len(row["input_ids"]) - 1 - last_fact_token
    return int(row["fact_distance"]), tokens_after / segment_length


def binned(values: list[float], hits: list[bool]) -> dict[str, tuple[int, int]]:
    """Bin label -> (correct, count), only bins that hold at least one question."""
    out = {}
    for low, high in itertools.pairwise(EDGES):
        inside = [hit for value, hit in zip(values, hits) if low <= value < high]
        if inside:
            out[bin_label(low, high)] = (sum(inside), len(inside))
    return out


def summarise(per_seed: list[dict[str, tuple[int, int]]]) -> dict:
    """Per bin over seeds: mean, min, max accuracy and the number of questions."""
    labels = list(per_seed[0])
    accuracies = [[seed[label][0] / seed[label][1] for seed in per_seed] for label in labels]
    return {
        "bins": labels,
        "count": [per_seed[0][label][1] for label in labels],
        "mean": [sum(a) / len(a) for a in accuracies],
        "min": [min(a) for a in accuracies],
        "max": [max(a) for a in accuracies],
        "per_seed": [[a[i] for a in accuracies] for i in range(len(per_seed))],
    }


def plot(results: dict, path: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, unit in zip(axes, ("sentences", "segments")):
        curves = results["curves"][unit]
        labels = curves["chance"]["bins"]
        x = range(len(labels))
        for name, (title, _) in VARIANTS.items():
            if name not in curves:
                continue
            curve = curves[name]
            (line,) = ax.plot(x, curve["mean"], "o-", label=title)
            ax.fill_between(x, curve["min"], curve["max"], color=line.get_color(), alpha=0.2)
        ax.plot(x, curves["chance"]["mean"], "k:", label="majority answer per question type")
        ax.set_xticks(list(x), [f"{label}\n(n={n})" for label, n in zip(labels, curves["chance"]["count"])],
                      fontsize=7)  # fmt: skip
        ax.set(xlabel=f"distance of the supporting fact from the end ({unit})", ylim=(0, 1))
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("test accuracy (mean over seeds, min-max band)")
    axes[0].legend(fontsize=8, loc="upper right")
    args = results["arguments"]
    fig.suptitle(f"Forgetting curves: trained on stories of {' -> '.join(args['curriculum'])} (sentences:steps), "
                 f"tested at {', '.join(map(str, args['test_lengths']))} sentences; seeds {args['seeds']}",
                 fontsize=10)  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_stage(text: str) -> tuple[int, int]:
    length, _, steps = text.partition(":")
    if not (length.isdigit() and steps.isdigit() and int(length) > 0):
        raise argparse.ArgumentTypeError(f"a curriculum stage is LENGTH:STEPS (e.g. 30:600), got {text!r}")
    return int(length), int(steps)


def stored_runs(path: Path, settings: dict) -> dict:
    """The runs of an earlier invocation with the same settings (resume), else none."""
    if not path.exists():
        return {}
    earlier = json.loads(path.read_text())
    return earlier.get("runs", {}) if earlier.get("settings") == settings else {}


def variant_fields(name: str, config: dict) -> dict:
    """The config fields of a variant under --config; another memory type keeps as many vectors as RM has slots
    (16 by default, or --config num_memory_slots), so every variant remembers at the same size."""
    fields = VARIANTS[name][1] | config
    if "memory_type" in fields and "memory_capacity" not in config:
        fields["memory_capacity"] = config.get("num_memory_slots", RehearsalMemoryConfig.num_memory_slots)
    return fields


def trained_model(name, seed, args, training, tokenizer, answers, stage_rows, init_from):
    """Train one model through the curriculum (from the model `init_from` names, `choose_kept_model`'s, if any), or
    take the one kept in --models_dir for the same training settings (a model trained now is kept there too); the
    model, loaded from there with --test_config's fields when kept, and its training record."""
    folder = None if args.models_dir is None else args.models_dir / f"{name}_seed{seed}"
    training = {**training, "variant": name, "seed": seed}
    if folder is None or (record := kept_run(folder, training)) is None:
        torch.manual_seed(seed)
        model = make_model(tokenizer, answers, args.story_items, **variant_fields(name, args.config))
        if init_from:
            start_from_kept_model(model, tokenizer, answers, Path(init_from["model"]))
        stages = [(rows, steps) for rows, (_, steps) in zip(stage_rows, args.curriculum)]
        trained = train_stages(model, stages, seed, schedule=args.lr_schedule)
        record = {
            # the kept model it started from and that model's training CPU seconds: the run's cost is both
            **({"init_from": init_from} if init_from else {}),
            "train_cpu_seconds": trained["train_cpu_seconds"],
            "median_step_seconds_last_stage": trained["median_step_seconds"],
            "final_losses": trained["final_losses"],
            # per stage: step time, CPU seconds and final losses, to tell which length a run's cost or loss comes from
            "stages": [{"length": length, **stage} for (length, _), stage in zip(args.curriculum, trained["stages"])],
        }
        if folder is None:
            return model, record
        keep_model(folder, model, tokenizer, training, record)
    model = load_kept_model(RehearsalMemoryForQuestionAnswering, folder, args.test_config)
    if [model.config.id2label[i] for i in range(model.config.num_labels)] != answers:
        sys.exit(f"{folder} keeps a model with other answers than these stories have: choose another --models_dir")
    return model, record


def run_variant(
    name, seed, args, training, tokenizer, answers, stage_rows, init_from, test_rows, labels, coverage_rows
) -> dict:
    """Train one model (or take the kept one), test it; the run's record (hits as a 0/1 string)."""
    model, record = trained_model(name, seed, args, training, tokenizer, answers, stage_rows, init_from)
    start = time.perf_counter()
    hits = [p == y for p, y in zip(predict(model, test_rows), labels)]
    run = {"hits": "".join("1" if hit else "0" for hit in hits), **record, "eval_seconds": time.perf_counter() - start}
    if model.config.use_rehearsal:
        run["supporting_fact_coverage"] = fragment_coverage(model, coverage_rows)
    return run


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--curriculum", type=parse_stage, nargs="+", default=[(4, 100), (10, 300), (30, 200)],
                        help="Training stages LENGTH:STEPS (sentences per story: batches of 32), in order.")  # fmt: skip
    parser.add_argument("--lr_schedule", choices=["linear", "constant"], default="linear",
                        help="Learning rate 2e-3: 5%% warm-up and linear decay over the whole curriculum, or constant "
                        "(the runs recorded before 2026-12-02 evening; each stage then had its own optimizer).")  # fmt: skip
    parser.add_argument("--test_lengths", type=int, nargs="+", default=[30, 100, 300],
                        help="Sentences per test story; one test set per length.")  # fmt: skip
    parser.add_argument("--num_train", type=int, default=None,
                        help="Training stories per curriculum stage (default: as many as the stage reads, 32 per "
                        "step, so no story is read twice; a few thousand stories read many times over overfit them).")  # fmt: skip
    parser.add_argument("--num_test", type=int, default=300, help="Test stories per test length.")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="Model and batch-order seeds.")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--story_items", choices=["sentences", "tokens"], default="sentences",
                        help="Memory items: sentences (4 per segment) or tokens (32 per segment).")  # fmt: skip
    parser.add_argument("--question_types", nargs="+", choices=QUESTION_TYPES, default=list(QUESTION_TYPES))
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (1: on a shared 2-core machine more threads ran slower).")  # fmt: skip
    parser.add_argument("--config", type=parse_override, nargs="+", default=[], metavar="KEY=VALUE",
                        help="RehearsalMemoryConfig fields set for every variant (a sweep of settings); encoder.FIELD "
                        "sets a field of the segment encoder (encoder.num_hidden_layers=0: none).")  # fmt: skip
    parser.add_argument("--models_dir", type=Path, default=None,
                        help="Keep each trained model in MODELS_DIR/VARIANT_seedSEED; a run whose model is kept there "
                        "(trained with the same settings) is tested without training it again.")  # fmt: skip
    parser.add_argument("--test_config", type=parse_override, nargs="+", default=[], metavar="KEY=VALUE",
                        help="RehearsalMemoryConfig fields set only when a model kept in --models_dir is loaded for "
                        "testing (e.g. slot_write_threshold=0.3); part of the settings, so give each its own "
                        "--output_dir.")  # fmt: skip
    parser.add_argument("--test_seed", type=int, default=DEFAULT_TEST_SEED,
                        help="Test stories of length N are drawn with seed TEST_SEED + N; another value gives "
                        "validation stories, to choose --test_config on without looking at the test ones.")  # fmt: skip
    parser.add_argument("--init_from", default=None, metavar="KEPT_MODEL",
                        help="Start every variant from the weights of a model an earlier run kept (its "
                        "MODELS_DIR/VARIANT_seedSEED) instead of a fresh one: e.g. continue a `who_has` model on all "
                        "question types. Words and answers the kept model lacks start fresh. Given a MODELS_DIR of "
                        "several kept runs (e.g. seeds), the one whose training ended with the lowest answer loss; "
                        "the chosen model is part of the settings.")  # fmt: skip
    parser.add_argument("--output_dir", default=str(RESULTS))
    args = parser.parse_args()
    try:
        args.config = check_overrides(dict(args.config), encoder=True)
        args.test_config = check_overrides(dict(args.test_config))
    except ValueError as error:
        parser.error(str(error))
    if args.test_config and args.models_dir is None:
        parser.error("--test_config sets fields of the models kept in --models_dir when they are loaded: give one")
    torch.set_num_threads(args.threads)
    # chosen now among a folder's kept runs, so that the settings name the model every run starts from
    init_from = choose_kept_model(Path(args.init_from)) if args.init_from else None
    if init_from:
        args.init_from = init_from["model"]
    output_dir = Path(args.output_dir)
    # what makes runs comparable: everything but which variants and seeds run now, and where they go (--config,
    # --test_config, --test_seed and --init_from only when given: the settings of runs stored before the flags existed)
    ignored = ("variants", "seeds", "output_dir", "threads", "models_dir", *(() if args.config else ("config",)),
               *(() if args.test_config else ("test_config",)), *(() if args.test_seed != DEFAULT_TEST_SEED else ("test_seed",)),
               *(() if args.init_from else ("init_from",)))  # fmt: skip
    settings = {k: v for k, v in vars(args).items() if k not in ignored}
    settings = json.loads(json.dumps(settings))
    path = output_dir / "forgetting.json"
    runs = stored_runs(path, settings)
    if path.exists() and not runs:
        print(f"{path} holds runs with other settings: starting afresh")
    # what a kept model's training depends on
    training = {k: v for k, v in settings.items() if k not in ("test_lengths", "num_test", "test_config", "test_seed")}

    story = {"question_types": tuple(args.question_types)}
    stage_sizes = [args.num_train or BATCH_SIZE * steps for _, steps in args.curriculum]
    train_raw = [
        generate_stories(size, story_length=n, seed=n, **story) for size, (n, _) in zip(stage_sizes, args.curriculum)
    ]
    test_raw = draw_test_stories(args.test_lengths, args.num_test, args.test_seed, args.question_types)
    tokenizer, answers, train_rows, test_rows = build_task(concatenate_datasets(train_raw), test_raw)
    ends = list(itertools.accumulate(stage_sizes))
    stage_rows = [train_rows[end - size : end] for size, end in zip(stage_sizes, ends)]
    segment_length = make_model(tokenizer, answers, args.story_items, **args.config).config.segment_length
    lengths = [row["sentence_index"][-1] + 1 for row in test_rows]
    sentence_distance, segment_distance = zip(*(distances(row, segment_length, args.story_items) for row in test_rows))
    types = [row["question_type"] for row in test_rows]
    labels = [int(row["labels"]) for row in test_rows]
    coverage_rows = test_rows[: args.num_test]  # the shortest test stories: drawing is cheap there

    # the reference: always the training set's most common answer for the question's type
    majority = {
        t: Counter(int(r["labels"]) for r in train_rows if r["question_type"] == t).most_common(1)[0][0]
        for t in {r["question_type"] for r in train_rows}
    }  # fmt: skip
    chance_hits = [majority.get(t) == y for t, y in zip(types, labels)]

    def save():
        output_dir.mkdir(parents=True, exist_ok=True)
        # Another invocation may fill the same file with other variants or seeds (one per core): under a lock on the
        # folder, take the runs it stored since, and replace the file whole so a reader never sees half of it.
        folder = os.open(output_dir, os.O_RDONLY)
        try:
            fcntl.flock(folder, fcntl.LOCK_EX)
            runs.update({key: run for key, run in stored_runs(path, settings).items() if key not in runs})
            results = summarise_runs(runs, args, sentence_distance, segment_distance, lengths, types, chance_hits)
            results.update(settings=settings, runs=runs, segment_length=segment_length, test_questions=len(test_rows),
                           max_distance={"sentences": max(sentence_distance), "segments": max(segment_distance)})  # fmt: skip
            unfinished = path.with_suffix(".json.partial")
            unfinished.write_text(json.dumps(results, indent=2))
            unfinished.replace(path)
        finally:
            os.close(folder)  # releases the lock
        return results

    todo = [(name, seed) for name in args.variants for seed in args.seeds if f"{name}/{seed}" not in runs]
    for name, seed in tqdm(todo, desc="bench_forgetting", unit="model"):
        run = run_variant(name, seed, args, training, tokenizer, answers, stage_rows, init_from, test_rows,
                          labels, coverage_rows)  # fmt: skip
        runs[f"{name}/{seed}"] = run
        results = save()
        overall = results["accuracy"][name]["overall"][-1]
        tqdm.write(f"{VARIANTS[name][0]:<30} seed {seed}: accuracy {overall:.3f}, {run['train_cpu_seconds']:.0f} "
                   f"CPU s, final losses { {k: round(v, 3) for k, v in run['final_losses'].items()} }")  # fmt: skip
    results = save()
    plot(results, output_dir / "forgetting.png")

    curves = results["curves"]
    print(f"\n{len(test_rows)} test questions, segments of {segment_length} {args.story_items}; accuracy per distance "
          f"bin (mean over the seeds stored: {results['seeds']}):")  # fmt: skip
    for unit in ("sentences", "segments"):
        print(f"  {unit:<30}" + "".join(f"{label:>12}" for label in curves[unit]["chance"]["bins"]))
        for name, title in [*results["variants"].items(), ("chance", "majority answer")]:
            print(f"  {title[:30]:<30}" + "".join(f"{a:>12.3f}" for a in curves[unit][name]["mean"]))
    print(f"wrote {output_dir / 'forgetting.json'} and {output_dir / 'forgetting.png'}")


def summarise_runs(runs, args, sentence_distance, segment_distance, lengths, types, chance_hits) -> dict:
    """Curves (overall and per question type), accuracies and costs of every variant with stored runs (also those
    another invocation stored), in the order of `VARIANTS` and of the seeds (`seeds` says which)."""
    seeds = {name: sorted(int(key.split("/")[1]) for key in runs if key.split("/")[0] == name) for name in VARIANTS}
    done = {name: [runs[f"{name}/{seed}"] for seed in seeds[name]] for name in VARIANTS if seeds[name]}
    hits = {name: [[c == "1" for c in run["hits"]] for run in variant_runs] for name, variant_runs in done.items()}
    curves = {}
    for unit, values in (("sentences", sentence_distance), ("segments", segment_distance)):
        curves[unit] = {name: summarise([binned(values, h) for h in seed_hits]) for name, seed_hits in hits.items()}
        curves[unit]["chance"] = summarise([binned(values, chance_hits)])
    by_type = {}
    for question_type in sorted(set(types)):
        inside = [i for i, t in enumerate(types) if t == question_type]
        values = [sentence_distance[i] for i in inside]
        by_type[question_type] = {
            name: summarise([binned(values, [h[i] for i in inside]) for h in seed_hits])
            for name, seed_hits in hits.items()
        }
        by_type[question_type]["chance"] = summarise([binned(values, [chance_hits[i] for i in inside])])
    accuracy = {}
    for name, seed_hits in hits.items():
        result = {"overall": [sum(h) / len(h) for h in seed_hits], "by_test_length": {}, "by_question_type": {}}
        for key, groups in (("by_test_length", lengths), ("by_question_type", types)):
            for group in sorted(set(groups)):
                result[key][str(group)] = [
                    statistics.fmean(hit for g, hit in zip(groups, h) if g == group) for h in seed_hits
                ]
        accuracy[name] = result
    costs = {
        name: {
            "train_cpu_seconds": [run["train_cpu_seconds"] for run in variant_runs],
            "median_step_seconds_last_stage": [run["median_step_seconds_last_stage"] for run in variant_runs],
            "eval_seconds": [run["eval_seconds"] for run in variant_runs],
            "final_losses": [run["final_losses"] for run in variant_runs],
            "supporting_fact_coverage": [run.get("supporting_fact_coverage") for run in variant_runs],
        }
        for name, variant_runs in done.items()
    }
    curriculum = [f"{n}:{s}" for n, s in args.curriculum]
    return {
        **provenance(),
        "arguments": vars(args) | {"curriculum": curriculum, "models_dir": args.models_dir and str(args.models_dir)},
        "variants": {name: VARIANTS[name][0] for name in done},
        "curves": curves,
        "curves_by_question_type": by_type,
        "accuracy": accuracy,
        "chance": {
            "overall": sum(chance_hits) / len(chance_hits),
            "by_question_type": {
                t: sum(h for h, u in zip(chance_hits, types) if u == t) / types.count(t) for t in sorted(set(types))
            },
        },
        "runs_per_variant": {name: len(variant_runs) for name, variant_runs in done.items()},
        "seeds": {name: seeds[name] for name in done},
        "costs": costs,
    }


if __name__ == "__main__":
    main()
