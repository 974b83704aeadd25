"""The README's main job: train a Rehearsal Memory model on generated long stories, reload it through the
Auto classes, and answer questions about a fresh story that the model has only seen through its memory.

    python examples/demo.py --output_dir outputs/demo
"""

import argparse

import torch
from run_qa import main as train_qa
from transformers import AutoModelForQuestionAnswering, AutoTokenizer

import rm_hf  # noqa: F401  (registers the Auto classes)
from rm_hf.qa_data import QACollator, encode_qa_example
from rm_hf.story_generator import generate_stories

TRAINING = {
    "num_train_stories": 6000,
    "num_eval_stories": 600,
    "story_length": 30,
    "story_items": "sentences",  # each sentence one memory item: learns far faster than tokens (README, Results)
    "segment_length": 4,  # sentences written per memory update
    "num_train_epochs": 3,
    "per_device_train_batch_size": 32,
    "learning_rate": 2e-3,
    "warmup_steps": 0.05,
    "logging_steps": 50,
    "save_strategy": "no",
    "use_cpu": True,
    "seed": 0,
}


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output_dir", default="outputs/demo")
    parser.add_argument("--quick", action="store_true", help="a few steps only (for tests)")
    args = parser.parse_args()
    training = dict(
        TRAINING, **({"num_train_stories": 64, "num_eval_stories": 32, "max_steps": 4} if args.quick else {})
    )
    # a demo run again starts afresh in its folder (run_qa.py refuses a non-empty one without this flag)
    argv = ["--output_dir", args.output_dir, "--overwrite_output_dir"] + [f"--{k}={v}" for k, v in training.items()]
    train_qa(argv)

    print(f"\nReloading {args.output_dir} through AutoModelForQuestionAnswering and AutoTokenizer")
    model = AutoModelForQuestionAnswering.from_pretrained(args.output_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(args.output_dir)
    story = generate_stories(6, story_length=TRAINING["story_length"], seed=12345)
    label2id = model.config.label2id
    encoded = [encode_qa_example(row, tokenizer, label2id) for row in story]
    sentences = model.config.story_items == "sentences"
    batch = QACollator(pad_token_id=tokenizer.pad_token_id, sentence_items=sentences)(encoded)
    with torch.no_grad():
        # the stories are written into memory once; the questions are answered from the memories alone
        memory = model.write(None, batch["input_ids"], batch["attention_mask"])
        answers = model.answer(memory, batch["question_input_ids"], batch["question_attention_mask"]).argmax(-1)
    for row, answer in zip(story, answers.tolist()):
        predicted = model.config.id2label[answer]
        verdict = "right" if predicted == row["answer"] else f"wrong, expected {row['answer']}"
        print(
            f"\n{len(row['story'])} sentences, the fact {row['fact_distance']} sentences back: "
            f"...{' '.join(row['story'][-3:])}\n  Q: {row['question']}  A: {predicted} ({verdict})"
        )


if __name__ == "__main__":
    main()
