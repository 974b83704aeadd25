"""Which bAbI questions a trained model gets wrong, by the form of the question: accuracy per question with its
names taken out ("Who gave the apple?" and "Who gave the milk?" are both "who gave the X"), beside how many test
questions have that form. A task's error often sits in one form: on task 5, RM trained from the bag-of-words start
answered "who gave the X" and "who received the X" at chance between the two people of the hand-over, and every
form that names one of them at 0.99 (README, Method: "Story items").

For RM with sentence items it also splits the accuracy by how many memory writes back the question's latest
supporting fact was written: 0 when it is in the story's last segment of `segment_length` sentences (segments start
at the story's first sentence), 1 in the segment before, and so on. On task 9 the full recollection weight lost
answers whose fact was in an earlier write (README, Results: "What the full recollection weight gets wrong").

Loads a `run_qa.py` output folder (model, tokenizer, answers; RM or the MemN2N baseline), reads the task's test
questions and answers each from the model alone; a name is any word that is one of the model's answers, or
capitalised after a question's first word. Nothing is trained; seconds to a minute on one CPU thread.

    python bench/diagnose_babi_questions.py outputs/bench_babi/rehearsal-qa5 --task 5

Prints the tables; --output also writes them as JSON.
"""

import argparse
import collections
import json
import re
import sys
from pathlib import Path

from qa_utils import predict
from transformers import AutoTokenizer

from rm_hf import RehearsalMemoryConfig
from rm_hf.babi import load_babi
from rm_hf.qa_data import encode_qa_dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from run_qa import ARCHITECTURES, MODEL_CLASSES  # noqa: E402  (the models run_qa.py trains, by architecture)


def question_form(question: str, names: set[str]) -> str:
    """The question, lowercase, its names replaced by X: 'Who gave the apple?' -> 'who gave the X'."""
    words = re.findall(r"[A-Za-z]+", question)
    return " ".join(
        "X" if word.lower() in names or (i > 0 and word[0].isupper()) else word.lower() for i, word in enumerate(words)
    )


def accuracy_by_form(questions: list[str], answers: list[str], predicted: list[str], names: set[str]) -> list[dict]:
    """Per question form: its number of questions and the share answered right, most frequent form first."""
    counts = collections.defaultdict(lambda: [0, 0])
    for question, answer, guess in zip(questions, answers, predicted):
        count = counts[question_form(question, names)]
        count[0] += 1
        count[1] += answer.lower() == guess.lower()
    return [
        {"form": form, "questions": total, "accuracy": right / total}
        for form, (total, right) in sorted(counts.items(), key=lambda item: (-item[1][0], item[0]))
    ]


def accuracy_by_writes_back(
    story_lengths: list[int], fact_positions: list[int], right: list[bool], segment_length: int
) -> list[dict]:
    """Per number of memory writes between a question's latest supporting fact and the story's end (the last bin
    holds 3 and more): its number of questions and the share answered right, nearest first."""
    counts = collections.defaultdict(lambda: [0, 0])
    for length, position, correct in zip(story_lengths, fact_positions, right):
        back = (length - 1) // segment_length - position // segment_length
        count = counts[min(back, 3)]
        count[0] += 1
        count[1] += correct
    return [
        {"writes_back": "3+" if back == 3 else back, "questions": total, "accuracy": correct / total}
        for back, (total, correct) in sorted(counts.items())
    ]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path, help="a run_qa.py --output_dir trained on bAbI")
    parser.add_argument("--task", type=int, required=True)
    parser.add_argument("--babi_dir", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/babi")
    parser.add_argument("--babi_subset", default="en-10k")
    parser.add_argument("--output", type=Path, help="also write the table here as JSON")
    args = parser.parse_args()

    config = RehearsalMemoryConfig.from_pretrained(args.model)
    architecture = (config.architectures or ["RehearsalMemoryForQuestionAnswering"])[0]
    if architecture not in ARCHITECTURES:
        parser.error(f"{args.model}: a {architecture}, not a run_qa.py model ({', '.join(ARCHITECTURES)})")
    model = MODEL_CLASSES[ARCHITECTURES[architecture]].from_pretrained(args.model)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    raw = load_babi(args.babi_dir, tasks=[args.task], split="test", subset=args.babi_subset)
    rows = list(encode_qa_dataset(raw, tokenizer, config.label2id))
    predicted = [config.id2label[index] for index in predict(model, rows)]
    names = {answer.lower() for answer in config.label2id}
    table = accuracy_by_form(raw["question"], raw["answer"], predicted, names)
    print(f"{'questions':>9}  accuracy  form")
    for row in table:
        print(f"{row['questions']:>9}  {row['accuracy']:8.3f}  {row['form']}")
    result = {"model": str(args.model), "task": args.task, "forms": table}
    if ARCHITECTURES[architecture] == "rm" and config.story_items == "sentences":  # one write per segment
        right = [answer.lower() == guess.lower() for answer, guess in zip(raw["answer"], predicted)]
        lengths = [len(story) for story in raw["story"]]
        latest = [max(positions) for positions in raw["supporting_positions"]]
        result["writes_back"] = accuracy_by_writes_back(lengths, latest, right, config.segment_length)
        print(f"\n{'questions':>9}  accuracy  latest supporting fact, memory writes back ({config.segment_length} "
              "sentences each)")  # fmt: skip
        for row in result["writes_back"]:
            print(f"{row['questions']:>9}  {row['accuracy']:8.3f}  {row['writes_back']}")
    if args.output:
        args.output.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
