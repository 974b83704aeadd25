"""Which questions of a retention run are lost, split finer than by question type: `who_has` by its answer (a name
when the supporting fact is a pick-up, "nobody" when it is a drop), and `who_has` name answers by whether the holder
moved after taking the object.

Reads a `bench_forgetting.py` result (forgetting.json: its settings and each run's hit per test question), draws the
same test stories again from those settings, and reports per variant the accuracy per distance bin (mean over the
seeds stored) of each group, beside the groups' question counts. Nothing is trained or run; a few seconds.

    python bench/diagnose_object_answers.py bench/results/retention/forgetting.json

Writes object_answers.json next to the input.
"""

import argparse
import json
from pathlib import Path

from bench_forgetting import DEFAULT_TEST_SEED, binned, draw_test_stories, summarise

from rm_hf.story_generator import MOVE_VERBS, NOBODY


def holder_moved(row) -> bool:
    """Whether the person who took the object (the answer) moves in the sentences after the supporting fact."""
    after = row["story"][len(row["story"]) - row["fact_distance"] :]
    return any(sentence.startswith(f"{row['answer']} {verb} ") for sentence in after for verb in MOVE_VERBS)


def group(row) -> list[str]:
    """The groups a test question belongs to."""
    if row["question_type"] != "who_has":
        return [row["question_type"]]
    if row["answer"] == NOBODY:
        return ["who_has: nobody"]
    return ["who_has: a name", f"who_has: a name, holder {'moved' if holder_moved(row) else 'stayed'} after"]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", type=Path, help="a bench_forgetting.py forgetting.json")
    args = parser.parse_args()
    results = json.loads(args.results.read_text())
    settings = results["settings"]
    if settings["story_items"] != "sentences":
        raise SystemExit(f"{args.results}: only runs with sentence items are supported, got {settings['story_items']}")
    stories = draw_test_stories(
        settings["test_lengths"],
        settings["num_test"],
        settings.get("test_seed", DEFAULT_TEST_SEED),
        settings["question_types"],
    )
    if len(stories) != results["test_questions"]:
        raise SystemExit(f"{args.results}: {results['test_questions']} test questions stored, {len(stories)} drawn")
    groups = [group(row) for row in stories]
    names = sorted({name for row_groups in groups for name in row_groups})
    report = {}
    for variant, seeds in results["seeds"].items():
        report[variant] = {}
        for name in names:
            members = [i for i, row_groups in enumerate(groups) if name in row_groups]
            distances = [stories[i]["fact_distance"] for i in members]
            per_seed = [
                binned(distances, [results["runs"][f"{variant}/{seed}"]["hits"][i] == "1" for i in members])
                for seed in seeds
            ]
            report[variant][name] = summarise(per_seed)
    output = args.results.with_name("object_answers.json")
    output.write_text(json.dumps({"source": str(args.results), "groups": report}, indent=1) + "\n")
    for variant, by_group in report.items():
        print(f"\n{variant} (seeds {results['seeds'][variant]}): accuracy per sentences back (questions)")
        for name, curve in by_group.items():
            cells = "  ".join(f"{b} {m:.2f} ({c})" for b, m, c in zip(curve["bins"], curve["mean"], curve["count"]))
            print(f"  {name:38} {cells}")
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
