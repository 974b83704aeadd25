"""What rehearsal costs and buys, measured side by side in one run.

1. Accuracy with and without rehearsal on generated long stories whose supporting fact lies far back,
   same seeds, data and step budget (and on bAbI tasks with --babi_dir). Each sentence is one memory item by
   default (`--story_items tokens`: each token, as in the runs of 2026-11-22).
2. The history sampler: share of sampled fragments that cover a supporting-fact item, `uniform` vs `teacher`
   (trained with the task) vs `external` (the supporting facts themselves, an upper reference).
3. Overhead: median training-step time with rehearsal / without.

    python bench/bench_rehearsal.py                 # quick: about 6 minutes on one CPU core
    python bench/bench_rehearsal.py --steps 3000 --seeds 0 1 2 --babi_dir ../shared/data/babi --tasks 2 3

Writes bench/results/rehearsal.json.
"""

import argparse
import json
import statistics
from pathlib import Path

import torch
from cost_utils import provenance
from qa_utils import build_task, fragment_coverage, make_model, train_and_test
from tqdm import tqdm

from rm_hf.babi import load_babi
from rm_hf.story_generator import generate_stories

RESULTS = Path(__file__).parent / "results"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--story_length", type=int, default=30)
    parser.add_argument("--story_items", choices=["sentences", "tokens"], default="sentences",
                        help="memory items: sentences (4 per segment) or tokens (32 per segment)")  # fmt: skip
    parser.add_argument("--num_stories", type=int, default=3000)
    parser.add_argument("--babi_dir", default=None)
    parser.add_argument("--tasks", type=int, nargs="+", default=[2])
    parser.add_argument("--output", default=str(RESULTS / "rehearsal.json"))
    args = parser.parse_args()

    tasks = {}
    raw = generate_stories(args.num_stories, story_length=args.story_length, min_fact_distance=args.story_length // 2,
                           question_types=("where_person",), seed=0)  # fmt: skip
    split = int(0.85 * len(raw))
    tasks[f"generated ({args.story_length} sentences, fact >= {args.story_length // 2} back)"] = build_task(
        raw.select(range(split)), raw.select(range(split, len(raw)))
    )
    for task in args.tasks if args.babi_dir else []:
        subset = "en-10k" if task != 3 else "en"
        tasks[f"bAbI qa{task} ({subset})"] = build_task(
            load_babi(args.babi_dir, [task], "train", subset), load_babi(args.babi_dir, [task], "test", subset)
        )

    results = {**provenance(), "torch_threads": torch.get_num_threads(), "story_items": args.story_items,
               "steps": args.steps, "seeds": args.seeds, "accuracy": {}, "coverage": {},
               "step_seconds": {}}  # fmt: skip
    for name, (tokenizer, answers, train, test) in tasks.items():
        for use_rehearsal in (False, True):
            label = "with rehearsal" if use_rehearsal else "without rehearsal"
            runs = []
            for seed in tqdm(args.seeds, desc=f"{name}, {label}"):
                torch.manual_seed(seed)
                model = make_model(tokenizer, answers, args.story_items, use_rehearsal=use_rehearsal)
                accuracy, step_time = train_and_test(model, train, test, args.steps, seed)
                runs.append(accuracy)
                results["step_seconds"].setdefault(label, []).append(step_time)
            results["accuracy"].setdefault(name, {})[label] = runs
            print(f"{name:<50} {label:<18} accuracy per seed {[round(a, 3) for a in runs]}")

        coverage = {}
        for mode in ("uniform", "teacher", "external"):
            torch.manual_seed(0)
            model = make_model(tokenizer, answers, args.story_items, sampler_mode=mode)
            if mode == "teacher":
                train_and_test(model, train, test, args.steps, seed=0)
            coverage[mode] = fragment_coverage(model, test)
        results["coverage"][name] = coverage
        print(f"{name:<50} supporting-fact coverage of sampled fragments {coverage}")

    medians = {label: statistics.median(times) for label, times in results["step_seconds"].items()}
    results["step_seconds"] = medians
    results["overhead_ratio"] = medians["with rehearsal"] / medians["without rehearsal"]
    print(f"median step time {medians}; rehearsal overhead x{results['overhead_ratio']:.2f}")
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
