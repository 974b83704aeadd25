"""Train and evaluate a question-answering model on bAbI or on generated long stories: Rehearsal Memory (`--model rm`)
or the MemN2N baseline (`--model memn2n`, `rm_hf.qa_baselines`), which reads every story sentence at question time.

    # generated long stories (offline default); with neither --do_train nor --do_eval it trains, then evaluates
    python examples/run_qa.py --output_dir outputs/qa
    # long inputs: a length curriculum (stories of 4, then 10, 30 and 100 sentences), truncated backpropagation
    python examples/run_qa.py --curriculum 4:6400,10:32000,30:19200,100:9600 --backprop_segments 8 ...
    # `who_has` questions first, then all three types from that checkpoint (README: the warm start)
    python examples/run_qa.py --question_types who_has ... --output_dir outputs/stage1
    python examples/run_qa.py --model_name_or_path outputs/stage1 --do_train --do_eval ... --output_dir outputs/stage2
    # real bAbI v1.2, tasks 1-3 (the 10k split has no task-3 training file: it falls back to en/)
    python examples/run_qa.py --babi_dir ../shared/data/babi --tasks 1,2,3 --output_dir outputs/babi
    # evaluate a trained checkpoint (its tokenizer and answers), or train it further with --do_train
    python examples/run_qa.py --model_name_or_path outputs/babi --do_eval --babi_dir ... --output_dir outputs/eval
    # a pretrained encoder (and its tokenizer) as the backbone
    python examples/run_qa.py --encoder_name_or_path path/to/all-MiniLM-L6-v2 --output_dir outputs/qa-minilm
    # the full-access baseline on the same data (sentence items; no model card is written for it)
    python examples/run_qa.py --model memn2n --story_items sentences --babi_dir ... --output_dir outputs/memn2n
    # the paper's two-stage teacher: rehearse what that trained MemN2N attends to (same data, so same tokenizer)
    python examples/run_qa.py --story_items sentences --sampler_mode external --fragment_teacher outputs/memn2n ...
    # N CPU processes (torchrun or accelerate's torchrun launcher; `accelerate launch --cpu` starts one), or GPUs
    torchrun --nproc_per_node 2 examples/run_qa.py --use_cpu ...
    accelerate launch --multi_gpu --num_processes 2 examples/run_qa.py --use_cpu ...

Writes the model, the word-level tokenizer, the remote code, `all_results.json` (accuracy and error per
question type, and the number of malformed bAbI lines skipped with `--skip_bad_lines`) and a model card
(README.md) into `--output_dir`; `--push_to_hub` then publishes them (the card kept, checkpoints and pickles
left out). With `--save_steps N`, a run that dies continues where its last checkpoint left
off when started again with `--resume_from_checkpoint last`.
"""

import dataclasses
import itertools
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import transformers
from datasets import Dataset, concatenate_datasets
from transformers import AutoTokenizer, EarlyStoppingCallback, set_seed

from rm_hf import RehearsalMemoryConfig, RehearsalMemoryForQuestionAnswering
from rm_hf.babi import MAX_LINE_BYTES, MAX_MEMBER_BYTES, answer_vocabulary, load_babi
from rm_hf.configuration_rehearsal_memory import (
    MEMORY_TYPE_ALIASES,
    MEMORY_TYPES,
    SentencePositionStart,
    SlotAddressing,
)
from rm_hf.model_card import babi_dataset, local_dataset, write_qa_model_card
from rm_hf.qa_baselines import MemN2NForQuestionAnswering
from rm_hf.qa_data import (
    BABI_NAME_GROUPS,
    NamePermutation,
    QACollator,
    check_renamable_tasks,
    encode_qa_dataset,
    hold_out_stories,
    renamed_when_read,
)
from rm_hf.run_record import RunRecorder, check_output_dir, run_arguments
from rm_hf.script_utils import (
    choose_stages,
    freeze_encoder,
    load_pretrained_encoder,
    parse_script_args,
    refuse_fixed_flags,
    script_default,
    train_metrics,
    with_encoder_weights,
)
from rm_hf.story_generator import QUESTION_TYPES, generate_stories, generator_vocabulary
from rm_hf.tokenization import build_word_tokenizer
from rm_hf.trainer import (
    RehearsalMemoryTrainer,
    RehearsalTrainingArguments,
    checkpoint_to_resume,
    closes_process_group,
)

logger = logging.getLogger(__name__)

MODEL_CLASSES = {"rm": RehearsalMemoryForQuestionAnswering, "memn2n": MemN2NForQuestionAnswering}
ARCHITECTURES = {model_class.__name__: name for name, model_class in MODEL_CLASSES.items()}

# the config fields a flag of the same name sets
CONFIG_FIELDS = (
    "memory_type", "memory_capacity", "num_memory_slots", "num_memory_heads", "segment_length", "num_reasoning_hops",
    "story_items", "max_sentence_tokens", "use_rehearsal", "sampler_mode", "num_rehearsal_fragments",
    "rehearsal_fragment_length", "rehearsal_batch_fraction", "rehearsal_num_layers", "backprop_segments",
    "link_previous_item", "slot_addressing", "sentence_position_start", "reader_feed_forward",
)  # fmt: skip
ENCODER_FIELDS = ("hidden_size", "num_hidden_layers", "num_attention_heads")  # flags of the encoder config


@dataclass
class ModelArguments:
    _argument_group_name = "Model"
    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "A checkpoint written by this script (or its Hub id) to evaluate (--do_eval) or train further "
            "(--do_train): its model, tokenizer and answers are used, and the model flags below are refused where "
            "they differ from it."
        },
    )
    encoder_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "A pretrained Hugging Face encoder (folder or Hub id; e.g. all-MiniLM-L6-v2) for the backbone of "
            "a new model; its tokenizer replaces the word-level one, and it fixes --hidden_size, "
            "--num_hidden_layers and --num_attention_heads."
        },
    )
    freeze_encoder: bool = field(
        default=False,
        metadata={
            "help": "Keep the encoder backbone's weights (e.g. the pretrained --encoder_name_or_path) as they are and "
            "train the rest: a step then costs the backbone's forward pass only."
        },
    )
    model: Literal["rm", "memn2n"] = field(
        default="rm",
        metadata={
            "help": "Rehearsal Memory, or the MemN2N baseline, which reads every story sentence at question time "
            "(needs --story_items sentences; of the model flags it uses --hidden_size, --num_reasoning_hops and "
            "--max_sentence_tokens)."
        },
    )
    hidden_size: int = field(default=64, metadata={"help": "Encoder width (also the memory width)."})
    num_hidden_layers: int = field(default=2, metadata={"help": "Encoder layers."})
    num_attention_heads: int = field(default=4, metadata={"help": "Encoder attention heads."})
    num_memory_slots: int = field(default=16, metadata={"help": "K, the number of memory slots."})
    memory_type: Literal[(*MEMORY_TYPES, *MEMORY_TYPE_ALIASES)] = field(
        default="slots",
        metadata={
            "help": "The memory the story is written into: slots (K learned slots, the method), expire_span, "
            "lamemo or key_value ('rehearsal' and 'kv' are read as their earlier names)."
        },
    )
    memory_capacity: int = field(default=128, metadata={"help": "Entries kept by expire_span, lamemo and key_value."})
    num_memory_heads: int = field(default=4)
    segment_length: int = field(default=32, metadata={"help": "Tokens written into memory per step."})
    backprop_segments: int | None = field(
        default=None,
        metadata={
            "help": "Truncated backpropagation through the memory: gradients reach back at most this many segment "
            "writes, so a long story's activation memory stays bounded (default: the whole story)."
        },
    )
    num_reasoning_hops: int = field(default=3)
    reader_feed_forward: bool = field(
        default=False,
        metadata={
            "help": "End each reasoning hop with a feed-forward layer, so the answer can combine what the hops read "
            "nonlinearly (off: attention and a linear answer only)."
        },
    )
    story_items: Literal["tokens", "sentences"] = field(
        default="tokens", metadata={"help": "tokens, or sentences: each sentence one item (learns bAbI far faster)."}
    )
    max_sentence_tokens: int = field(default=16, metadata={"help": "Longest sentence with --story_items sentences."})
    sentence_position_start: SentencePositionStart = field(
        default="memn2n",
        metadata={
            "help": "With --story_items sentences: start the learned word-position weights as MemN2N's position "
            "encoding (memn2n) or as a bag of words (uniform, the start before 2026-12-06)."
        },
    )
    link_previous_item: bool = field(
        default=False,
        metadata={
            "help": "Add to each item a learned map of the item before it in its segment (zero at start), so a "
            "sentence that refers back (he, they) carries the names it refers to; bAbI's coreference tasks need it."
        },
    )
    slot_addressing: SlotAddressing = field(
        default="content",
        metadata={
            "help": "What a slot's write attention asks with: its own state (content, the paper's) or a learned key "
            "of its own that writing never changes (key)."
        },
    )
    use_rehearsal: bool = field(default=True, metadata={"help": "Self-supervised rehearsal during training."})
    sampler_mode: Literal["uniform", "teacher", "external"] = field(
        default="uniform",
        metadata={"help": "uniform, teacher, or external (supporting facts, or --fragment_teacher's attention)."},
    )
    fragment_teacher: str | None = field(
        default=None,
        metadata={
            "help": "A MemN2N model trained first on the same data (`--model memn2n`, same tokenizer): with "
            "--sampler_mode external, rehearsal draws its fragments by that model's attention over the story "
            "sentences (the paper's two-stage teacher) instead of the supporting facts."
        },
    )
    # Rehearsal's size: 2 fragments for a quarter of each batch's stories, read by a 1-layer rehearsal model, where
    # the config's defaults (4 fragments of every story, 2 layers) made a bAbI qa1 step with sentence items cost
    # about 3x one without; at equal training CPU these reached 99.6% on qa1 in 60 s, the config's 91.3%
    # (bench/results/babi_sweep/babi_curves.json, one seed).
    num_rehearsal_fragments: int = field(default=2, metadata={"help": "Fragments rehearsed per story."})
    rehearsal_fragment_length: int = field(default=8)
    rehearsal_batch_fraction: float = field(
        default=0.25, metadata={"help": "Share of each batch's stories rehearsed per step; rehearsal's cost scales."}
    )
    rehearsal_num_layers: int = field(default=1, metadata={"help": "Layers of the rehearsal model."})


@dataclass
class QATrainingArguments(RehearsalTrainingArguments):
    """Trainer's flags, with this script's learning rate, warm-up and batch: Trainer's 5e-5 left a model trained from
    scratch at 0.46 on qa1 after 60 CPU seconds (bench/results/babi_sweep/lr5e-5_trial.json), where 1e-3 with
    warm-up learns it (bench/results/babi_sweep/babi_curves.json: 3e-3 and 1e-2 left the model without rehearsal at
    0.26 and 0.15, 2e-3 reached 0.99). Trainer's batch of 8 left qa1 at 0.61 after 3,000 steps of the README's
    command, where 32 (the batch of every recorded bAbI result) reached 1.00 in 150 s of training against 88 s
    (bench/results/run_qa_batch_size.json; on a GPU a step of 32 costs what one of 256 does, bench/results/gpu/)."""

    learning_rate: float = script_default(RehearsalTrainingArguments, "learning_rate", 1e-3)
    warmup_steps: float = script_default(RehearsalTrainingArguments, "warmup_steps", 0.05)
    per_device_train_batch_size: int = script_default(RehearsalTrainingArguments, "per_device_train_batch_size", 32)
    early_stopping_patience: int | None = field(
        default=None,
        metadata={
            "help": "Stop training once validation accuracy (--validation_fraction) has not improved for this many "
            "evaluations (--eval_strategy steps or epoch); a checkpoint is saved whenever it improves "
            "(--save_strategy best) and the best one is loaded at the end, so --do_eval scores it on the test split."
        },
    )

    def __post_init__(self):
        if self.early_stopping_patience is not None:
            if self.early_stopping_patience < 1:
                raise ValueError(f"--early_stopping_patience must be >= 1, got {self.early_stopping_patience}.")
            # what the transformers callback needs, set before TrainingArguments checks the strategies
            self.load_best_model_at_end = True
            self.metric_for_best_model = self.metric_for_best_model or "accuracy"
            self.save_strategy = "best"
            self.save_total_limit = self.save_total_limit or 1  # the best checkpoint is always kept
        super().__post_init__()
        if self.early_stopping_patience is not None and self.eval_strategy == "no":
            raise ValueError(
                "--early_stopping_patience needs evaluations to watch: pass --eval_strategy steps or epoch."
            )


@dataclass
class DataArguments:
    _argument_group_name = "Data"
    babi_dir: str | None = field(
        default=None, metadata={"help": "bAbI v1.2 folder or tasks_1-20_v1-2.tar.gz; generated stories when omitted."}
    )
    babi_subset: str = field(default="en-10k", metadata={"help": "en (1k) or en-10k."})
    tasks: str = field(default="1", metadata={"help": "Comma-separated bAbI task ids, e.g. 1,2,3."})
    num_train_stories: int = field(default=4000, metadata={"help": "Generated stories for training."})
    num_eval_stories: int = field(default=500)
    story_length: int = field(default=30, metadata={"help": "Sentences per generated story."})
    curriculum: str | None = field(
        default=None,
        metadata={
            "help": "Generated stories: train on a length curriculum LENGTH:STORIES,... shortest first, e.g. "
            "4:6400,10:32000,30:19200,100:9600 (one epoch reads the stages in order; the training sampler is then "
            "sequential). Replaces --story_length and --num_train_stories for training; evaluation stories have "
            "the last stage's length."
        },
    )
    max_fact_distance: int | None = field(default=None, metadata={"help": "Furthest supporting fact (sentences)."})
    question_types: str = field(
        default=",".join(QUESTION_TYPES),
        metadata={
            "help": "Generated stories: the question types asked, comma-separated. A new model knows every type's "
            "words and answers, so it can be trained further on the others (--model_name_or_path)."
        },
    )
    validation_fraction: float | None = field(
        default=None,
        metadata={
            "help": "Hold out this share of the training stories (whole stories, drawn under --seed) as the "
            "validation set that evaluations during training (--eval_strategy) score; without it they score the "
            "evaluation split. --do_eval always scores the evaluation split (bAbI's test file)."
        },
    )
    max_story_tokens: int | None = field(default=None, metadata={"help": "Keep only the most recent story tokens."})
    permute_names: bool = field(
        default=False,
        metadata={
            "help": "Rename bAbI's places, people and objects at random each time a training question is read, "
            "alike in story, question and answer (rm_hf.qa_data.NamePermutation): fewer stories learnt by heart "
            "where a task has few (qa3: 1,000). bAbI tasks 1-5 and 13 only, where a name means no more than the story "
            "says."
        },
    )
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Evaluate on the first N evaluation questions only."}
    )
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


def load_raw_data(data_args: DataArguments, seed: int, train: bool = True) -> tuple[Dataset | None, Dataset, str, int]:
    """Training rows (None unless `train`) and evaluation rows, the data's name and the number of malformed lines
    skipped."""
    if data_args.babi_dir:
        name = f"bAbI {data_args.babi_subset} tasks {data_args.tasks}"
        training, skipped_train = load_babi_tasks(data_args, "train") if train else (None, 0)
        evaluation, skipped = load_babi_tasks(data_args, "test")
        return training, evaluation, name, skipped_train + skipped
    stages = story_stages(data_args)
    distance = {"max_fact_distance": data_args.max_fact_distance, "question_types": question_types(data_args)}
    training = None
    if train:  # each stage its own seed, so no two stages repeat a story
        parts = [generate_stories(count, story_length=n, seed=seed + 7919 * i, **distance)
                 for i, (n, count) in enumerate(stages)]  # fmt: skip
        training = concatenate_datasets(parts)
    evaluation = generate_stories(data_args.num_eval_stories, story_length=stages[-1][0], seed=seed + 1, **distance)
    lengths = " -> ".join(str(length) for length, _ in stages)
    return training, evaluation, f"generated stories of {lengths} sentences", 0


def question_types(data_args: DataArguments) -> tuple[str, ...]:
    """--question_types as a tuple, refusing an unknown or missing type by name."""
    chosen = tuple(name.strip() for name in data_args.question_types.split(","))
    unknown = [name for name in chosen if name not in QUESTION_TYPES]
    if unknown:  # an empty name ("who_has,") too
        raise ValueError(
            f"--question_types {data_args.question_types!r}: {', '.join(map(repr, unknown))} is not a question type "
            f"of generated stories ({', '.join(QUESTION_TYPES)})."
        )
    return chosen


def story_stages(data_args: DataArguments) -> list[tuple[int, int]]:
    """(sentences per story, stories) of each training stage of generated stories: the curriculum, or one stage."""
    if data_args.curriculum:
        return parse_curriculum(data_args.curriculum)
    return [(data_args.story_length, data_args.num_train_stories)]


def parse_curriculum(text: str) -> list[tuple[int, int]]:
    """ "4:6400,10:32000" -> [(4, 6400), (10, 32000)]: (sentences per story, stories) per stage, in order."""
    stages = []
    for stage in text.split(","):
        length, _, count = stage.strip().partition(":")
        if not (length.isdigit() and count.isdigit() and int(length) > 0 and int(count) > 0):
            raise ValueError(f"--curriculum: each stage is LENGTH:STORIES with both > 0, got {stage!r} in {text!r}.")
        stages.append((int(length), int(count)))
    return stages


def build_config(args: ModelArguments, vocab_size: int, pad_token_id: int, answers: list[str], encoder_config=None):
    """A new model's config: the flags, the answer vocabulary and a BERT encoder of the flags' shape (or
    `encoder_config`, a pretrained encoder's)."""
    if encoder_config is None:
        encoder_config = {
            "model_type": "bert",
            "vocab_size": vocab_size,
            "hidden_size": args.hidden_size,
            "num_hidden_layers": args.num_hidden_layers,
            "num_attention_heads": args.num_attention_heads,
            "intermediate_size": 4 * args.hidden_size,
            "max_position_embeddings": max(64, args.segment_length),
            "pad_token_id": pad_token_id,
        }
    return RehearsalMemoryConfig(
        encoder_config=encoder_config,
        id2label=dict(enumerate(answers)),
        label2id={answer: i for i, answer in enumerate(answers)},
        pad_token_id=pad_token_id,
        **{name: getattr(args, name) for name in CONFIG_FIELDS},
    )


def load_model_source(args: ModelArguments, given: set[str]):
    """Before any data is read: the config of `--model_name_or_path` or the pretrained `--encoder_name_or_path`
    (one of them, or neither), refusing the model flags given that they fix (a checkpoint's shape and memory cannot
    change: silently ignoring such a flag would evaluate or train something else than asked). For a new model, its
    config is built once from the flags, so a bad combination fails here rather than after loading the data.
    Returns (checkpoint config or None, pretrained encoder or None)."""
    # one name per memory type (aliases read as their names), in the run record too
    args.memory_type = MEMORY_TYPE_ALIASES.get(args.memory_type, args.memory_type)
    flags = dataclasses.asdict(args)
    if args.model_name_or_path:
        if args.encoder_name_or_path:
            raise ValueError(
                "--model_name_or_path and --encoder_name_or_path exclude each other: a checkpoint has its encoder."
            )
        config = RehearsalMemoryConfig.from_pretrained(args.model_name_or_path)
        # a checkpoint that names no architecture predates the baseline
        model = ARCHITECTURES.get(config.architectures[0]) if config.architectures else "rm"
        if model is None:
            raise ValueError(
                f"--model_name_or_path {args.model_name_or_path} holds a {', '.join(config.architectures)}, not a "
                f"{' or '.join(ARCHITECTURES)}."
            )
        fixed = {"model": model, **{name: getattr(config.encoder_config, name) for name in ENCODER_FIELDS}}
        fixed.update({name: getattr(config, name) for name in CONFIG_FIELDS})
        refuse_fixed_flags(given, flags, fixed, f"the checkpoint {args.model_name_or_path}")
        args.model = model
        return config, None
    if args.model == "memn2n" and args.story_items != "sentences":
        raise ValueError("--model memn2n reads the story sentence by sentence: pass --story_items sentences.")
    encoder = None
    if args.encoder_name_or_path:
        if args.model != "rm":
            raise ValueError(f"--encoder_name_or_path: --model {args.model} has no encoder (only rm has).")
        encoder = load_pretrained_encoder(args.encoder_name_or_path)
        fixed = {name: getattr(encoder.config, name, None) for name in ENCODER_FIELDS}
        refuse_fixed_flags(given, flags, fixed, f"the encoder {args.encoder_name_or_path}")
    build_config(args, 8, 0, ["answer"], encoder.config if encoder is not None else None)
    return None, encoder


def load_fragment_teacher(path: str, tokenizer) -> MemN2NForQuestionAnswering:
    """--fragment_teacher: a MemN2N checkpoint whose token ids are this run's (its attention reads our stories)."""
    config = RehearsalMemoryConfig.from_pretrained(path)
    if config.architectures != [MemN2NForQuestionAnswering.__name__]:
        raise ValueError(
            f"--fragment_teacher {path} holds a {', '.join(config.architectures or ['model of no architecture'])}, "
            "not a MemN2NForQuestionAnswering (train one with --model memn2n)."
        )
    if AutoTokenizer.from_pretrained(path).get_vocab() != tokenizer.get_vocab():
        raise ValueError(
            f"--fragment_teacher {path} has another vocabulary than this run's tokenizer: train it on the same "
            "training data (the word tokenizer is built from it)."
        )
    return MemN2NForQuestionAnswering.from_pretrained(path)


def teacher_note(path: str | None) -> str:
    return "" if path is None else f"; rehearsal drew its fragments by the attention of the MemN2N model `{path}`"


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
def main(argv: list[str] | None = None, callbacks: list | None = None) -> dict:
    """Run the script on `argv` (default: the command line); `callbacks`: more `TrainerCallback`s for the
    Trainer (bench/bench_babi_curves.py measures training CPU time with one)."""
    (model_args, data_args, training_args), given = parse_script_args(
        (ModelArguments, DataArguments, QATrainingArguments), __doc__, argv
    )
    # the collator needs columns the model does not take (supporting facts for the external sampler)
    training_args.remove_unused_columns = False
    # info (the config, the training set-up) unless --log_level says otherwise; replicas follow --log_level_replica
    log_level = training_args.get_process_log_level() if "log_level" in given else logging.INFO
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=log_level)
    if training_args.should_log or "log_level" in given:
        transformers.utils.logging.set_verbosity(log_level)
    choose_stages(training_args, given, model_args.model_name_or_path)
    if data_args.curriculum:
        if data_args.babi_dir:
            raise ValueError("--curriculum grows generated stories: it does not apply to --babi_dir.")
        if "train_sampling_strategy" in given and training_args.train_sampling_strategy != "sequential":
            raise ValueError("--curriculum reads its stages in order: it needs --train_sampling_strategy sequential.")
        parse_curriculum(data_args.curriculum)  # a bad stage fails here, before anything is loaded
        training_args.train_sampling_strategy = "sequential"
    if data_args.babi_dir and "question_types" in given:
        raise ValueError(
            "--question_types chooses the questions of generated stories: it does not apply to --babi_dir."
        )
    question_types(data_args)  # a bad type fails here, before anything is loaded
    if data_args.permute_names:
        if not data_args.babi_dir:
            raise ValueError(
                "--permute_names renames the names of bAbI tasks 1-5 and 13 (--babi_dir), not of generated stories."
            )
        check_renamable_tasks(int(task) for task in data_args.tasks.split(","))
    if training_args.early_stopping_patience is not None and not data_args.validation_fraction:
        raise ValueError(
            "--early_stopping_patience chooses the training's length on held-out data: pass --validation_fraction "
            "(stopping on the test split would tune to it)."
        )
    checkpoint_config, encoder = load_model_source(model_args, given)
    run = run_arguments(model_args, data_args, training_args)
    if training_args.do_train:
        check_output_dir(training_args, run)  # on every process, before any of them writes into it
    set_seed(training_args.seed)

    with training_args.main_process_first(desc="load and encode data"):
        # a new model's tokenizer and answers come from the training data: load it unless evaluating a checkpoint
        raw_train, raw_eval, dataset_name, skipped_lines = load_raw_data(
            data_args, training_args.seed, train=training_args.do_train or checkpoint_config is None
        )
        if skipped_lines:
            logger.warning(f"Skipped {skipped_lines} malformed bAbI lines (--skip_bad_lines); see the warnings above.")
        used = [raw for raw in (raw_train, raw_eval) if raw is not None]
        if checkpoint_config is not None:
            tokenizer = AutoTokenizer.from_pretrained(model_args.model_name_or_path)
            label2id = dict(checkpoint_config.label2id)
            unknown = sorted(set(answer_vocabulary(used)) - label2id.keys())
            if unknown:
                raise ValueError(
                    f"{len(unknown)} answers of the data are not among the {len(label2id)} answers of "
                    f"{model_args.model_name_or_path} (e.g. {', '.join(map(repr, unknown[:5]))}): it cannot give them."
                )
        else:
            # generated stories: every sentence and answer the generator has, so that other question types can follow
            generated_sentences, generated_answers = ([], []) if data_args.babi_dir else generator_vocabulary()
            if encoder is not None:
                tokenizer = AutoTokenizer.from_pretrained(model_args.encoder_name_or_path)
            else:
                tokenizer = build_word_tokenizer(
                    itertools.chain(
                        (
                            sentence
                            for row in raw_train
                            for sentence in (*row["story"], row["question"], row["answer"])
                        ),
                        generated_sentences,
                    )
                )
            # before --max_eval_samples, which must not change the model
            answers = sorted({*answer_vocabulary(used), *generated_answers})
            label2id = {answer: i for i, answer in enumerate(answers)}
        if data_args.max_eval_samples:
            raw_eval = raw_eval.select(range(min(data_args.max_eval_samples, len(raw_eval))))
        train_dataset = validation_dataset = None
        if training_args.do_train:
            if data_args.validation_fraction:
                raw_train, raw_validation = hold_out_stories(
                    raw_train, data_args.validation_fraction, training_args.seed
                )
                validation_dataset = encode_qa_dataset(raw_validation, tokenizer, label2id, data_args.max_story_tokens)
            train_dataset = encode_qa_dataset(raw_train, tokenizer, label2id, data_args.max_story_tokens)
            if data_args.permute_names:
                rename = NamePermutation.from_words(tokenizer, label2id, BABI_NAME_GROUPS)
                train_dataset = renamed_when_read(train_dataset, rename, training_args.seed)
        eval_dataset = encode_qa_dataset(raw_eval, tokenizer, label2id, data_args.max_story_tokens)

    model_class = MODEL_CLASSES[model_args.model]
    if checkpoint_config is not None:
        model = model_class.from_pretrained(model_args.model_name_or_path)
    else:
        config = build_config(
            model_args, len(tokenizer), tokenizer.pad_token_id, answers, encoder.config if encoder else None
        )
        model = model_class(config)
        if encoder is not None:
            with_encoder_weights(model, encoder)
    if model_args.freeze_encoder:
        freeze_encoder(model, model_args.model)
    teacher = load_fragment_teacher(model_args.fragment_teacher, tokenizer) if model_args.fragment_teacher else None
    if training_args.early_stopping_patience is not None:
        callbacks = [EarlyStoppingCallback(training_args.early_stopping_patience), *(callbacks or [])]
    trainer = RehearsalMemoryTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset if validation_dataset is None else validation_dataset,
        data_collator=QACollator(
            pad_token_id=tokenizer.pad_token_id, sentence_items=model.config.story_items == "sentences"
        ),
        processing_class=tokenizer,
        compute_metrics=compute_metrics,
        fragment_teacher=teacher,
        callbacks=([RunRecorder(run)] if training_args.do_train else []) + (callbacks or []),
    )
    metrics, results = {}, None
    if training_args.do_train:
        checkpoint = checkpoint_to_resume(training_args, run)
        train_result = trainer.train(resume_from_checkpoint=checkpoint)
        trainer.save_model()  # model, config, remote code and tokenizer
        metrics = {**train_result.metrics, "train_samples": len(train_dataset)}
        metrics = train_metrics(training_args, metrics, checkpoint, trainer.state.global_step)
        if training_args.load_best_model_at_end and trainer.state.best_global_step is not None:
            # the model saved and evaluated below is the best checkpoint's, not the last step's
            metrics.update(best_step=trainer.state.best_global_step, best_validation_metric=trainer.state.best_metric)
        trainer.save_metrics("train", metrics)

    if training_args.do_eval:
        prediction = trainer.predict(eval_dataset, metric_key_prefix="eval")
        results = accuracy_by_type(
            prediction.predictions.argmax(-1), prediction.label_ids, list(eval_dataset["question_type"])
        )
        evaluation = {**prediction.metrics, "eval_samples": len(eval_dataset)}
        evaluation.update({f"eval_{name}_accuracy": row["accuracy"] for name, row in results.items()})
        evaluation.update({f"eval_{name}_error": 1 - row["accuracy"] for name, row in results.items()})
        trainer.save_metrics("eval", evaluation)
        metrics.update(evaluation)
    trainer.save_metrics("data", {"skipped_bad_lines": skipped_lines})
    metrics["skipped_bad_lines"] = skipped_lines
    if results is not None and trainer.is_world_process_zero():
        print_table(results)
    # a card for the model this run trained (the card describes Rehearsal Memory: none for the baseline)
    if training_args.do_train and trainer.is_world_process_zero() and model_args.model == "rm":
        # a retried finished run without its train_results.json has no training time to report
        runtime = f"{metrics['train_runtime']:.0f} s" if "train_runtime" in metrics else "an unrecorded time"
        training = (
            f"Trained with `examples/run_qa.py` on {len(train_dataset)} questions ({dataset_name}) for "
            f"{trainer.state.global_step} steps, batch size {training_args.per_device_train_batch_size} x "
            f"{training_args.world_size} processes, learning rate {training_args.learning_rate}, rehearsal weights "
            f"{training_args.recollection_weight} (recollection) / {training_args.familiarity_weight} (familiarity); "
            f"{runtime} of training{teacher_note(model_args.fragment_teacher)}. Command: "
            f"`python examples/run_qa.py {' '.join(sys.argv[1:] if argv is None else argv)}`"
        )
        write_card(training_args, data_args, trainer, results, training, raw_eval, len(train_dataset), dataset_name)
    if training_args.do_train and training_args.push_to_hub:  # after the card, which the push keeps
        trainer.push_to_hub(commit_message="End of training")
    return {"metrics": metrics, "results": results}


def write_card(training_args, data_args, trainer, results, training, raw_eval, train_questions, dataset_name) -> None:
    """The model card (README.md): true dataset metadata, one result per question type, and a usage snippet
    about the shortest of the first evaluation stories."""
    evaluated = len(raw_eval) if results is not None else "no (--do_eval not given)"
    if data_args.babi_dir:
        dataset = babi_dataset(data_args.babi_subset, data_args.tasks)
        data = (
            f"Trained on {train_questions} questions of the training split and evaluated on {evaluated} questions "
            f"of the test split of {dataset.name} (Facebook's release, read from `--babi_dir`; on the Hub as "
            f"`{dataset.hub_id}`)."
        )
        if data_args.permute_names:
            data += (
                " Each time a training question was read, its places, people and objects were renamed at random, "
                "alike in story, question and answer (`--permute_names`)."
            )
    else:
        dataset = local_dataset(dataset_name, "generated-stories")
        stages = story_stages(data_args)
        lengths = " -> ".join(str(length) for length, _ in stages)
        data = (
            f"Generated stories (`rm_hf.story_generator`: our own bAbI-style wording, not bAbI, and no Hub dataset): "
            f"{train_questions} training questions (seed {training_args.seed}) and {evaluated} evaluation "
            f"questions (seed {training_args.seed + 1}), one per story; training stories of {lengths} sentences "
            f"(in this order), evaluation stories of {stages[-1][0]} sentences."
        )
    example = min(raw_eval.select(range(min(200, len(raw_eval)))), key=lambda row: len(row["story"]))
    write_qa_model_card(
        Path(training_args.output_dir) / "README.md",
        trainer.model,
        results,
        dataset,
        training,
        data,
        model_id=trainer.hub_model_id or training_args.hub_model_id,
        example=example,
    )


def print_table(results: dict[str, dict]) -> None:
    print(f"\n{'question type':<16}{'examples':>10}{'accuracy':>10}")
    for name, row in results.items():
        print(f"{name:<16}{row['count']:>10}{row['accuracy']:>10.3f}")


if __name__ == "__main__":
    main(sys.argv[1:])
