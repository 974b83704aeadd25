"""The README's main job: train a Rehearsal Memory model on generated stories with a length curriculum, reload it
through the Auto classes, and let it read stories of 1,000 sentences once each, then answer questions about facts
from their first tenth from the memory alone.

    python examples/demo.py --output_dir outputs/demo
    python examples/demo.py --model_name_or_path outputs/stage2   # only the test, of a model trained elsewhere

Training goes through `examples/run_qa.py` (its logs at warning level, so the answers stay in view). The test
stories are new (another seed), each story is written into memory segment by segment and then dropped; the
questions are answered from the memories only. The table gives accuracy per question type and per distance of
the supporting fact from the end of the story, in sentences: the far bin is the first tenth of the story.
"""

import argparse
import os

import torch
from run_qa import main as train_qa
from transformers import AutoModelForQuestionAnswering, AutoTokenizer

import rm_hf  # noqa: F401  (registers the Auto classes)
from rm_hf.qa_data import QACollator, encode_qa_example
from rm_hf.story_generator import QUESTION_TYPES, generate_stories

TRAINING = {
    # stories of 4, then 10, 30 and 100 sentences: a fact must survive ever more writes (README, Method)
    "curriculum": "4:6400,10:25600,30:19200,100:9600",
    "num_train_epochs": 1,  # one pass over the stages: 200, 800, 600 and 300 steps
    "num_eval_stories": 300,
    "story_items": "sentences",  # each sentence one memory item: learns far faster than tokens (README, Results)
    "segment_length": 4,  # sentences written per memory update
    "use_rehearsal": False,
    "per_device_train_batch_size": 32,
    "learning_rate": 2e-3,
    "warmup_steps": 0.02,
    "max_grad_norm": 1.0,
    "logging_steps": 200,
    "save_strategy": "no",
    "use_cpu": True,
    "seed": 0,
    "log_level": "warning",
    "disable_tqdm": True,
}
TEST_LENGTH = 1000  # sentences per test story
# distance of the supporting fact from the end, as shares of the story: the last bin is its first tenth
DISTANCE_SHARES = ((0, 0.03), (0.03, 0.3), (0.3, 0.9), (0.9, 1.0))
STORIES_PER_BIN = 40  # per question type


def distance_bins(length: int) -> list[tuple[int, int]]:
    """[low, high) sentences between the fact and the end: 0-29, 30-299, 300-899, 900-999 for 1,000 sentences."""
    return [(round(low * length), round(high * length)) for low, high in DISTANCE_SHARES]


def test_stories(length: int, per_bin: int, seed: int):
    """Stories of `length` sentences, `per_bin` per question type and distance bin (fact `distance` back)."""
    rows = []
    for index, (low, high) in enumerate(distance_bins(length)):
        for type_index, question_type in enumerate(QUESTION_TYPES):
            high = min(high, length - 3)  # object questions keep two sentences of setup before the fact
            stories = generate_stories(per_bin, story_length=length, min_fact_distance=low, max_fact_distance=high - 1,
                                       question_types=(question_type,), seed=seed + 10 * index + type_index)  # fmt: skip
            rows += list(stories)
    return rows


def answer_from_memory(model, tokenizer, rows, batch_size=40) -> list[str]:
    """Write each story into memory once, then answer its question from the memory alone."""
    collate = QACollator(pad_token_id=tokenizer.pad_token_id, sentence_items=model.config.story_items == "sentences")
    answers = []
    for first in range(0, len(rows), batch_size):
        chunk = rows[first : first + batch_size]
        batch = collate([encode_qa_example(row, tokenizer, model.config.label2id) for row in chunk])
        with torch.inference_mode():
            memory = model.write(None, batch["input_ids"], batch["attention_mask"])  # the stories end here
            logits = model.answer(memory, batch["question_input_ids"], batch["question_attention_mask"])
        answers += [model.config.id2label[i] for i in logits.argmax(-1).tolist()]
    return answers


def print_table(rows, answers, length: int) -> None:
    bins = distance_bins(length)
    labels = [f"{low}-{high - 1}" for low, high in bins]
    print(f"\nAccuracy from memory alone on {len(rows)} stories of {length} sentences, by sentences between the "
          f"supporting fact and the end ({labels[-1]}: the story's first tenth)")  # fmt: skip
    print(f"{'question type':<16}" + "".join(f"{label:>12}" for label in labels))
    for question_type in (*QUESTION_TYPES, "all"):
        cells = []
        for low, high in bins:
            hits = [
                answer == row["answer"]
                for row, answer in zip(rows, answers)
                if low <= row["fact_distance"] < high and question_type in (row["question_type"], "all")
            ]
            cells.append(f"{sum(hits) / len(hits):>12.3f}" if hits else f"{'-':>12}")
        print(f"{question_type:<16}" + "".join(cells))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="outputs/demo")
    parser.add_argument("--quick", action="store_true", help="a few steps and short test stories (for tests)")
    parser.add_argument("--model_name_or_path", default=None,
                        help="Train nothing: test this run_qa.py checkpoint of generated stories on the demo's stories.")  # fmt: skip
    args = parser.parse_args()
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(1)  # on a shared 2-core machine more threads ran slower
    training = TRAINING
    test_length, per_bin = TEST_LENGTH, STORIES_PER_BIN
    if args.quick:
        training = dict(TRAINING, curriculum="4:32,10:32", num_eval_stories=16, max_steps=4)
        test_length, per_bin = 40, 2
    model_path = args.model_name_or_path
    if model_path is None:
        model_path = args.output_dir
        # a demo run again starts afresh in its folder (run_qa.py refuses a non-empty one without this flag)
        argv = ["--output_dir", model_path, "--overwrite_output_dir"] + [f"--{k}={v}" for k, v in training.items()]
        print(
            f"Training on generated stories, curriculum {training['curriculum']} (sentences:stories) ...", flush=True
        )
        train_qa(argv)

    print(f"\nReloading {model_path} through AutoModelForQuestionAnswering and AutoTokenizer")
    model = AutoModelForQuestionAnswering.from_pretrained(model_path).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    rows = test_stories(test_length, per_bin, seed=12345)
    answers = answer_from_memory(model, tokenizer, rows)
    far = [
        (row, answer)
        for row, answer in zip(rows, answers)
        if row["fact_distance"] >= distance_bins(test_length)[-1][0]
    ]
    for row, answer in far[:: max(1, len(far) // 6)][:6]:
        fact = row["story"][row["supporting_positions"][0]]
        verdict = "right" if answer == row["answer"] else f"wrong, expected {row['answer']}"
        print(f"\nsentence {row['supporting_positions'][0] + 1} of {len(row['story'])}: {fact!r} (then "
              f"{row['fact_distance']} more)\n  Q: {row['question']}  A: {answer} ({verdict})")  # fmt: skip
    print_table(rows, answers, test_length)


if __name__ == "__main__":
    main()
