"""Forgetting curves: accuracy as a function of how far back the supporting fact lies.

On generated long stories (`rm_hf.story_generator`; questions where_person / where_object / who_has, the
supporting fact `fact_distance` sentences before the end, uniform over the story), small RM question-answering
models are trained on stories of `--train_length` sentences, then read test stories of every `--test_lengths`
length once, segment by segment, into their fixed-size memory and answer from the memory alone. Test stories
may be longer than the training ones (the memory does not grow; the encoder's max_position_embeddings only bounds
a segment), so the curve reaches far beyond the training distances. Each test question is binned by its
distance in sentences and in segments (tokens after the supporting fact / segment_length); per bin the plot
shows the mean accuracy over seeds with a min-max band, one line per variant:

- no rehearsal;
- rehearsal, uniform history sampler;
- rehearsal, teacher history sampler (trained with the task).

The dotted reference is the majority answer per question type of the training set (what a model that ignores
the story gets). Same data, seeds and step budget for every variant.

    python bench/bench_forgetting.py        # quick: train on 30 sentences, test at 30/100/300; about 10 min
    python bench/bench_forgetting.py --test_lengths 30 300 1000 2000 --num_test 200 --steps 1000 --seeds 0 1 2 \\
        --variants no_rehearsal rehearsal_uniform rehearsal_teacher --output_dir bench/results/forgetting_long
    python bench/bench_forgetting.py --train_length 100 --test_lengths 100 300 1000 2000 --steps 3000 \\
        --num_train 10000 --seeds 0 1 2      # longer training stories and budget (not run yet)

Writes bench/results/forgetting.json and bench/results/forgetting.png (or --output_dir).
"""

import argparse
import itertools
import json
import time
from collections import Counter
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from cost_utils import RESULTS, provenance
from datasets import concatenate_datasets
from qa_utils import build_task, make_model, predict, train
from tqdm.auto import tqdm

from rm_hf.story_generator import QUESTION_TYPES, generate_stories

VARIANTS = {
    "no_rehearsal": ("no rehearsal", {"use_rehearsal": False}),
    "rehearsal_uniform": ("rehearsal, uniform sampler", {"use_rehearsal": True, "sampler_mode": "uniform"}),
    "rehearsal_teacher": ("rehearsal, teacher sampler", {"use_rehearsal": True, "sampler_mode": "teacher"}),
    # the other memory types as published (no rehearsal), keeping as many vectors as RM's 16 slots
    **{
        memory_type: (f"{title} memory", {"use_rehearsal": False, "memory_type": memory_type, "memory_capacity": 16})
        for memory_type, title in (("expire_span", "Expire-Span"), ("lamemo", "LaMemo"), ("key_value", "key-value"))
    },
}
# Distance bins [lo, hi): roughly x3 apart, so short and very long distances both get a few bins.
EDGES = (0, 1, 3, 10, 30, 100, 300, 1000, 3000, 10000, float("inf"))


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
    fig.suptitle(f"Forgetting curves: trained on {args['train_length']}-sentence stories, {args['steps']} steps, "
                 f"tested at {', '.join(map(str, args['test_lengths']))} sentences; seeds {args['seeds']}",
                 fontsize=10)  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train_length", type=int, default=30, help="Sentences per training story.")
    parser.add_argument("--test_lengths", type=int, nargs="+", default=[30, 100, 300],
                        help="Sentences per test story; one test set per length.")  # fmt: skip
    parser.add_argument("--num_train", type=int, default=3000, help="Training stories.")
    parser.add_argument("--num_test", type=int, default=300, help="Test stories per test length.")
    parser.add_argument("--steps", type=int, default=200, help="Training steps (batches of 32) per model.")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="Model and batch-order seeds.")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--story_items", choices=["sentences", "tokens"], default="sentences",
                        help="Memory items: sentences (4 per segment) or tokens (32 per segment).")  # fmt: skip
    parser.add_argument("--question_types", nargs="+", choices=QUESTION_TYPES, default=list(QUESTION_TYPES))
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (1: on a shared 2-core machine more threads ran slower).")  # fmt: skip
    parser.add_argument("--output_dir", default=str(RESULTS))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    story = {"question_types": tuple(args.question_types)}
    train_raw = generate_stories(args.num_train, story_length=args.train_length, seed=0, **story)
    test_raw = concatenate_datasets(
        [generate_stories(args.num_test, story_length=n, seed=1000 + n, **story) for n in args.test_lengths]
    )
    tokenizer, answers, train_rows, test_rows = build_task(train_raw, test_raw)
    segment_length = make_model(tokenizer, answers, args.story_items).config.segment_length
    lengths = [row["sentence_index"][-1] + 1 for row in test_rows]
    sentence_distance, segment_distance = zip(*(distances(row, segment_length, args.story_items) for row in test_rows))
    types = [row["question_type"] for row in test_rows]
    labels = [int(row["labels"]) for row in test_rows]

    # the reference: always the training set's most common answer for the question's type
    majority = {
        t: Counter(int(r["labels"]) for r in train_rows if r["question_type"] == t).most_common(1)[0][0]
        for t in {r["question_type"] for r in train_rows}
    }  # fmt: skip
    chance_hits = [majority.get(t) == y for t, y in zip(types, labels)]

    per_seed = {name: {"sentences": [], "segments": []} for name in args.variants}
    accuracy = {name: {"overall": [], "by_test_length": {}, "by_question_type": {}} for name in args.variants}
    timing = {name: {"median_step_seconds": [], "eval_seconds": []} for name in args.variants}
    runs = [(name, seed) for name in args.variants for seed in args.seeds]
    for name, seed in tqdm(runs, desc="bench_forgetting", unit="model"):
        torch.manual_seed(seed)
        model = make_model(tokenizer, answers, args.story_items, **VARIANTS[name][1])
        timing[name]["median_step_seconds"].append(train(model, train_rows, args.steps, seed))
        start = time.perf_counter()
        hits = [p == y for p, y in zip(predict(model, test_rows), labels)]
        timing[name]["eval_seconds"].append(time.perf_counter() - start)
        per_seed[name]["sentences"].append(binned(sentence_distance, hits))
        per_seed[name]["segments"].append(binned(segment_distance, hits))
        result = accuracy[name]
        result["overall"].append(sum(hits) / len(hits))
        for key, groups in (("by_test_length", lengths), ("by_question_type", types)):
            for group in sorted(set(groups)):
                inside = [hit for g, hit in zip(groups, hits) if g == group]
                result[key].setdefault(str(group), []).append(sum(inside) / len(inside))
        tqdm.write(f"{VARIANTS[name][0]:<28} seed {seed}: accuracy {result['overall'][-1]:.3f}, by test length "
                   f"{ {k: round(v[-1], 3) for k, v in result['by_test_length'].items()} }")  # fmt: skip

    curves = {}
    for unit, values in (("sentences", sentence_distance), ("segments", segment_distance)):
        curves[unit] = {name: summarise(per_seed[name][unit]) for name in args.variants}
        curves[unit]["chance"] = summarise([binned(values, chance_hits)])
    results = {
        **provenance(),
        "arguments": vars(args),
        "variants": {name: VARIANTS[name][0] for name in args.variants},
        "segment_length": segment_length,
        "test_questions": len(test_rows),
        "max_distance": {"sentences": max(sentence_distance), "segments": max(segment_distance)},
        "curves": curves,
        "accuracy": accuracy,
        "chance": {
            "overall": sum(chance_hits) / len(chance_hits),
            "by_question_type": {
                t: sum(h for h, u in zip(chance_hits, types) if u == t) / types.count(t) for t in sorted(set(types))
            },
        },
        "timing": timing,
    }
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "forgetting.json").write_text(json.dumps(results, indent=2))
    plot(results, output_dir / "forgetting.png")

    print(f"\n{len(test_rows)} test questions, segments of {segment_length} {args.story_items}; accuracy per distance bin "
          f"(mean over seeds {args.seeds}):")  # fmt: skip
    for unit in ("sentences", "segments"):
        print(f"  {unit:<28}" + "".join(f"{label:>10}" for label in curves[unit]["chance"]["bins"]))
        for name in [*args.variants, "chance"]:
            title = VARIANTS[name][0] if name in VARIANTS else "majority answer"
            print(f"  {title[:28]:<28}" + "".join(f"{a:>10.3f}" for a in curves[unit][name]["mean"]))
    print(f"wrote {output_dir / 'forgetting.json'} and {output_dir / 'forgetting.png'}")


if __name__ == "__main__":
    main()
