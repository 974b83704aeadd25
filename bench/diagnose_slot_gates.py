"""Where a slot memory puts "who holds what", and which later sentences write over it: why `who_has` is lost.

For each question-answering model kept by `bench_forgetting.py --models_dir` (slot memory with its write gate), a
generated story of `--context_length` sentences is written into memory (as the benchmark's test stories are), then
each probe sentence below is written alone from that same memory, and each slot's write gate for it is recorded
(the relevance r_k of `memory_slots.py`: how far the slot moves toward its update). Probes, for a random holder,
object, other person and other object:

- `pick_up`: "<holder> picked up the <object>." The slots this opens are where the memory puts the binding.
- the follow-ups a story may bring next: the same sentence again, the holder drops the object, the holder moves,
  the holder picks up another object, another person moves, another person picks up another object, and a
  weather sentence.

For each follow-up it reports the *overlap*: the mean over the pick-up's slots, weighted by the pick-up's gate, of
the follow-up's gate, i.e. how far, on average, the follow-up moves the slots that took the pick-up in (0: it leaves
them alone; for the same sentence again it is sum(r^2) / sum(r), reported from the pick-up's own gates as
`pick_up_self_overlap`). A memory that keeps who holds each object opens
those slots for the object's own next event (the drop) and leaves them for everything else; one that files the
binding under "a pick-up happened" opens them as wide for another person's pick-up of another object, and the next
pick-up overwrites the last. Averaged over `--num_stories` stories; nothing is trained, a few seconds per model.

It also counts, on generated stories of each `--story_lengths` length (no model involved), how often the most recent
pick-up of any object is the answer to a `who_has` question answered by a name (no pick-up follows the supporting
fact): how far the shortcut "who picked something up last" goes at each stage of a curriculum.

    python bench/diagnose_slot_gates.py --models content=outputs/models/retention_all_types_content/rehearsal_uniform_seed1 \
        key=outputs/models/retention_all_types_key/rehearsal_uniform_seed1 --output bench/results/retention/slot_gates.json
"""

import argparse
import json
import random
from pathlib import Path

import torch
from cost_utils import provenance
from diagnose_write_gate import load_gated_slots_model, parse_model
from transformers import PreTrainedTokenizerFast

from rm_hf import RehearsalMemoryQuestionAnsweringPipeline
from rm_hf.story_generator import NOBODY, OBJECTS, PEOPLE, PICK_UP_VERBS, PLACES, generate_stories

FOLLOW_UPS = {
    "same_sentence_again": "{holder} picked up the {object}.",
    "holder_drops_it": "{holder} dropped the {object} in the {place}.",
    "holder_moves": "{holder} went to the {place}.",
    "holder_picks_up_another_object": "{holder} picked up the {other_object}.",
    "another_person_moves": "{other} went to the {place}.",
    "another_person_picks_up_another_object": "{other} picked up the {other_object}.",
    "weather": "It started to rain.",
}


def slot_gates(pipe, memory, sentence: str) -> torch.Tensor:
    """Each slot's write gate (K,) for `sentence` written alone from `memory` (one segment)."""
    writer = pipe.model.rehearsal_memory.bank.writer
    calls = []
    handle = writer.register_forward_hook(lambda module, args, output: calls.append(args))
    try:
        pipe.write([sentence], memory=memory)
    finally:
        handle.remove()
    return writer.read(*calls[0])[1][0]


def overlaps(pipe, num_stories: int, context_length: int, seed: int) -> dict:
    """The pick-up's total gate and each follow-up's overlap with it, each averaged over the stories."""
    stories = generate_stories(num_stories, story_length=context_length, seed=seed, question_types=("where_person",))
    rng = random.Random(seed)
    totals = {"pick_up_total_gate": 0.0, "pick_up_self_overlap": 0.0, **dict.fromkeys(FOLLOW_UPS, 0.0)}
    with torch.no_grad():
        for row in stories:
            memory = pipe.write(row["story"])
            holder, other = rng.sample(PEOPLE[:4], 2)  # the generator's default cast: 4 people, 4 objects, 6 places
            obj, other_object = rng.sample(OBJECTS[:4], 2)
            words = {"holder": holder, "other": other, "object": obj, "other_object": other_object,
                     "place": rng.choice(PLACES[:6])}  # fmt: skip
            pick_up = slot_gates(pipe, memory, f"{holder} picked up the {obj}.")
            weights = pick_up / pick_up.sum()
            totals["pick_up_total_gate"] += pick_up.sum().item()
            # what `same_sentence_again` must give when every probe is written from the same memory
            totals["pick_up_self_overlap"] += (weights * pick_up).sum().item()
            for name, template in FOLLOW_UPS.items():
                totals[name] += (weights * slot_gates(pipe, memory, template.format(**words))).sum().item()
    return {name: round(total / num_stories, 4) for name, total in totals.items()}


def last_pick_up_share(story_length: int, num_stories: int, seed: int) -> float:
    """The share of `who_has` questions answered by a name whose supporting fact no other pick-up follows."""
    rows = generate_stories(num_stories, story_length=story_length, seed=seed, question_types=("who_has",))
    named = [row for row in rows if row["answer"] != NOBODY]
    pick_up = tuple(f" {verb} the " for verb in PICK_UP_VERBS)
    last = [
        not any(
            verb in sentence
            for sentence in row["story"][len(row["story"]) - row["fact_distance"] :]
            for verb in pick_up
        )
        for row in named
    ]
    return round(sum(last) / len(last), 4)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=parse_model, nargs="+", required=True, metavar="NAME=FOLDER")
    parser.add_argument("--num_stories", type=int, default=100)
    parser.add_argument("--context_length", type=int, default=30, help="sentences written before the probes")
    parser.add_argument("--seed", type=int, default=77)
    parser.add_argument("--story_lengths", type=int, nargs="*", default=[4, 10, 30, 100, 300, 1000])
    parser.add_argument("--shortcut_stories", type=int, default=1000, help="stories per length for the shortcut count")
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    results = {**provenance(), "settings": {k: v for k, v in vars(args).items() if k not in ("models", "output")}}
    results["models"] = {}
    for name, folder in args.models:
        model = load_gated_slots_model(folder)
        pipe = RehearsalMemoryQuestionAnsweringPipeline(
            model=model, tokenizer=PreTrainedTokenizerFast.from_pretrained(folder)
        )
        found = overlaps(pipe, args.num_stories, args.context_length, args.seed)
        results["models"][name] = {"folder": str(folder), "slot_addressing": model.config.slot_addressing, **found}
        print(
            f"{name} ({model.config.slot_addressing} addressing): "
            + ", ".join(f"{k} {v:.3f}" for k, v in found.items())
        )
    shares = {str(n): last_pick_up_share(n, args.shortcut_stories, args.seed) for n in args.story_lengths}
    results["last_pick_up_is_the_answer"] = shares
    print("who_has name answers that are the last pick-up of any object, by story length: " + str(shares))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
