"""Train and evaluate a Rehearsal Memory question-answering model on bAbI or on generated long stories.

    # generated long stories (offline default)
    python examples/run_qa.py --output_dir outputs/qa
    # real bAbI v1.2, tasks 1-3 (the 10k split has no task-3 training file: it falls back to en/)
    python examples/run_qa.py --babi_dir ../shared/data/babi --tasks 1,2,3 --output_dir outputs/babi
    # many GPUs, or two CPU processes
    accelerate launch examples/run_qa.py --babi_dir ... --output_dir ...
    torchrun --nproc_per_node 2 examples/run_qa.py --use_cpu ...

Writes the model, the word-level tokenizer, the remote code, `all_results.json` (accuracy and error per
question type, and the number of malformed bAbI lines skipped with `--skip_bad_lines`) and a model card
(README.md) into `--output_dir`. With `--save_steps N`, a run that dies continues where its last checkpoint left
off when started again with `--resume_from_checkpoint last`.
"""

import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import transformers
from datasets import Dataset, concatenate_datasets
from transformers import HfArgumentParser, set_seed

from rm_hf import RehearsalMemoryConfig, RehearsalMemoryForQuestionAnswering
from rm_hf.babi import MAX_LINE_BYTES, MAX_MEMBER_BYTES, answer_vocabulary, load_babi
from rm_hf.configuration_rehearsal_memory import MEMORY_TYPE_ALIASES, MEMORY_TYPES
from rm_hf.model_card import write_qa_model_card
from rm_hf.qa_data import QACollator, encode_qa_dataset
from rm_hf.story_generator import generate_stories
from rm_hf.tokenization import build_word_tokenizer
from rm_hf.trainer import (
    RehearsalMemoryTrainer,
    RehearsalTrainingArguments,
    checkpoint_to_resume,
    closes_process_group,
)

logger = logging.getLogger(__name__)


@dataclass
class ModelArguments:
    hidden_size: int = field(default=64, metadata={"help": "Encoder width (also the memory width)."})
    num_hidden_layers: int = field(default=2, metadata={"help": "Encoder layers."})
    num_attention_heads: int = field(default=4, metadata={"help": "Encoder attention heads."})
    num_memory_slots: int = field(default=16, metadata={"help": "K, the number of memory slots."})
    memory_type: str = field(
        default="slots",
        metadata={
            "help": "The memory the story is written into: slots (K learned slots, the method), expire_span, "
            "lamemo or key_value ('rehearsal' and 'kv' are read as their earlier names).",
            "choices": [*MEMORY_TYPES, *MEMORY_TYPE_ALIASES],
        },
    )
    memory_capacity: int = field(default=128, metadata={"help": "Entries kept by expire_span, lamemo and key_value."})
    num_memory_heads: int = field(default=4)
    segment_length: int = field(default=32, metadata={"help": "Tokens written into memory per step."})
    num_reasoning_hops: int = field(default=3)
    story_items: str = field(
        default="tokens", metadata={"help": "tokens, or sentences: each sentence one item (learns bAbI far faster)."}
    )
    max_sentence_tokens: int = field(default=16, metadata={"help": "Longest sentence with --story_items sentences."})
    use_rehearsal: bool = field(default=True, metadata={"help": "Self-supervised rehearsal during training."})
    sampler_mode: str = field(default="uniform", metadata={"help": "uniform, teacher or external (supporting facts)."})
    num_rehearsal_fragments: int = field(default=4)
    rehearsal_fragment_length: int = field(default=8)


@dataclass
class DataArguments:
    babi_dir: str | None = field(
        default=None, metadata={"help": "bAbI v1.2 folder or tasks_1-20_v1-2.tar.gz; generated stories when omitted."}
    )
    babi_subset: str = field(default="en-10k", metadata={"help": "en (1k) or en-10k."})
    tasks: str = field(default="1", metadata={"help": "Comma-separated bAbI task ids, e.g. 1,2,3."})
    num_train_stories: int = field(default=4000, metadata={"help": "Generated stories for training."})
    num_eval_stories: int = field(default=500)
    story_length: int = field(default=30, metadata={"help": "Sentences per generated story."})
    max_fact_distance: int | None = field(default=None, metadata={"help": "Furthest supporting fact (sentences)."})
    max_story_tokens: int | None = field(default=None, metadata={"help": "Keep only the most recent story tokens."})
    max_eval_samples: int | None = field(default=None)
    skip_bad_lines: bool = field(
        default=False, metadata={"help": "Skip malformed bAbI lines (and the rest of their story) instead of failing."}
    )
    max_line_bytes: int = field(default=MAX_LINE_BYTES, metadata={"help": "Longest bAbI line read, in bytes."})
    max_member_bytes: int = field(
        default=MAX_MEMBER_BYTES, metadata={"help": "Largest bAbI file read from a .tar.gz archive, in bytes."}
    )


def load_babi_tasks(data_args: DataArguments, split: str) -> tuple[Dataset, int]:
    """Each task from the chosen subset, or from en/ where the subset lacks it (en-10k has no qa3 train file),
    and the number of malformed lines skipped."""
    parts, skipped = [], 0
    for task in (int(t) for t in data_args.tasks.split(",")):
        read = {
            "tasks": [task],
            "split": split,
            "skip_bad_lines": data_args.skip_bad_lines,
            "return_skipped_line_count": True,
            "max_line_bytes": data_args.max_line_bytes,
            "max_member_bytes": data_args.max_member_bytes,
        }
        try:
            part, bad = load_babi(data_args.babi_dir, subset=data_args.babi_subset, **read)
        except FileNotFoundError:
            logger.warning(f"bAbI task {task} {split} is missing from {data_args.babi_subset}/; reading it from en/")
            part, bad = load_babi(data_args.babi_dir, subset="en", **read)
        parts.append(part)
        skipped += bad
    return concatenate_datasets(parts), skipped


def load_raw_data(data_args: DataArguments, seed: int) -> tuple[Dataset, Dataset, str, int]:
    """Training and evaluation rows, the data's name and the number of malformed lines skipped."""
    if data_args.babi_dir:
        name = f"bAbI {data_args.babi_subset} tasks {data_args.tasks}"
        (train, skipped_train), (evaluation, skipped_eval) = (load_babi_tasks(data_args, s) for s in ("train", "test"))
        return train, evaluation, name, skipped_train + skipped_eval
    generate = {"story_length": data_args.story_length, "max_fact_distance": data_args.max_fact_distance}
    train = generate_stories(data_args.num_train_stories, seed=seed, **generate)
    evaluation = generate_stories(data_args.num_eval_stories, seed=seed + 1, **generate)
    return train, evaluation, f"generated stories of {data_args.story_length} sentences", 0


def accuracy_by_type(predictions: np.ndarray, labels: np.ndarray, types: list[str]) -> dict[str, dict]:
    correct = predictions == labels
    results = {"all": {"accuracy": float(correct.mean()), "count": len(labels)}}
    for name in sorted(set(types)):
        rows = np.array([t == name for t in types])
        results[name] = {"accuracy": float(correct[rows].mean()), "count": int(rows.sum())}
    return results


def compute_metrics(prediction):
    return {"accuracy": float((prediction.predictions.argmax(-1) == prediction.label_ids).mean())}


@closes_process_group
def main(argv: list[str] | None = None) -> dict:
    parser = HfArgumentParser((ModelArguments, DataArguments, RehearsalTrainingArguments))
    model_args, data_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    # the collator needs columns the model does not take (supporting facts for the external sampler)
    training_args.remove_unused_columns = False
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    if training_args.should_log:
        transformers.utils.logging.set_verbosity_info()
    set_seed(training_args.seed)

    with training_args.main_process_first(desc="load and encode data"):
        raw_train, raw_eval, dataset_name, skipped_lines = load_raw_data(data_args, training_args.seed)
        if skipped_lines:
            logger.warning(f"Skipped {skipped_lines} malformed bAbI lines (--skip_bad_lines); see the warnings above.")
        if data_args.max_eval_samples:
            raw_eval = raw_eval.select(range(min(data_args.max_eval_samples, len(raw_eval))))
        tokenizer = build_word_tokenizer(
            sentence for row in raw_train for sentence in (*row["story"], row["question"], row["answer"])
        )
        answers = answer_vocabulary([raw_train, raw_eval])
        label2id = {answer: i for i, answer in enumerate(answers)}
        train_dataset = encode_qa_dataset(raw_train, tokenizer, label2id, data_args.max_story_tokens)
        eval_dataset = encode_qa_dataset(raw_eval, tokenizer, label2id, data_args.max_story_tokens)

    config = RehearsalMemoryConfig(
        encoder_config={
            "model_type": "bert",
            "vocab_size": len(tokenizer),
            "hidden_size": model_args.hidden_size,
            "num_hidden_layers": model_args.num_hidden_layers,
            "num_attention_heads": model_args.num_attention_heads,
            "intermediate_size": 4 * model_args.hidden_size,
            "max_position_embeddings": max(64, model_args.segment_length),
            "pad_token_id": tokenizer.pad_token_id,
        },
        id2label=dict(enumerate(answers)),
        label2id=label2id,
        pad_token_id=tokenizer.pad_token_id,
        **{
            name: getattr(model_args, name)
            for name in (
                "memory_type",
                "memory_capacity",
                "num_memory_slots",
                "num_memory_heads",
                "segment_length",
                "num_reasoning_hops",
                "story_items",
                "max_sentence_tokens",
                "use_rehearsal",
                "sampler_mode",
                "num_rehearsal_fragments",
                "rehearsal_fragment_length",
            )
        },
    )
    model = RehearsalMemoryForQuestionAnswering(config)
    trainer = RehearsalMemoryTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=QACollator(
            pad_token_id=tokenizer.pad_token_id, sentence_items=model_args.story_items == "sentences"
        ),
        processing_class=tokenizer,
        compute_metrics=compute_metrics,
    )
    train_result = trainer.train(resume_from_checkpoint=checkpoint_to_resume(training_args))
    trainer.save_model()  # model, config, remote code and tokenizer
    metrics = {**train_result.metrics, "skipped_bad_lines": skipped_lines}

    prediction = trainer.predict(eval_dataset)
    results = accuracy_by_type(
        prediction.predictions.argmax(-1), prediction.label_ids, list(eval_dataset["question_type"])
    )
    metrics.update({f"eval_{name}_accuracy": row["accuracy"] for name, row in results.items()})
    metrics.update({f"eval_{name}_error": 1 - row["accuracy"] for name, row in results.items()})
    trainer.save_metrics("all", metrics, combined=False)
    if trainer.is_world_process_zero():
        print_table(results)
        training = (
            f"Trained with `examples/run_qa.py` on {len(train_dataset)} questions ({dataset_name}) for "
            f"{trainer.state.global_step} steps, batch size {training_args.per_device_train_batch_size} x "
            f"{training_args.world_size} processes, learning rate {training_args.learning_rate}, rehearsal weights "
            f"{training_args.recollection_weight} (recollection) / {training_args.familiarity_weight} (familiarity); "
            f"{metrics['train_runtime']:.0f} s of training. Command: "
            f"`python examples/run_qa.py {' '.join(sys.argv[1:] if argv is None else argv)}`"
        )
        data = f"Evaluated on {len(eval_dataset)} questions of {dataset_name}."
        write_qa_model_card(Path(training_args.output_dir) / "README.md", model, results, dataset_name, training, data)
    return {"metrics": metrics, "results": results}


def print_table(results: dict[str, dict]) -> None:
    print(f"\n{'question type':<16}{'examples':>10}{'accuracy':>10}")
    for name, row in results.items():
        print(f"{name:<16}{row['count']:>10}{row['accuracy']:>10.3f}")


if __name__ == "__main__":
    main(sys.argv[1:])
