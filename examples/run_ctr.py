r"""Train and evaluate click prediction on long user behaviour histories: Rehearsal Memory or a baseline.

Data: the synthetic long-history task (`--data synthetic`), the Taobao `UserBehavior.csv` log, MovieLens
ratings or a generic behaviour CSV. Models: `rm` (Rehearsal Memory, `--use_rehearsal`, `--sampler_mode`),
`mean_pool` and `target_attention` (they read the raw history). Writes the model, `behavior_vocab.json` and
`all_results.json` (eval AUC and accuracy, and the number of malformed lines skipped with `--skip_bad_lines`)
and, after training, a model card (README.md) into `--output_dir`; `--push_to_hub` then publishes them (the card
kept, checkpoints and pickles left out). With `--save_steps N`, a run that dies continues where its last
checkpoint left off when started again with `--resume_from_checkpoint last`.

    # the defaults: Rehearsal Memory on 2000 synthetic users x 1000 behaviours, 400 steps of 64 (AUC 1.0 in ~1 minute
    # on one CPU thread; bench/results/ctr_defaults.json)
    python examples/run_ctr.py --output_dir outputs/ctr
    # evaluate a trained checkpoint (its model and behavior_vocab.json), or train it further with --do_train
    python examples/run_ctr.py --model_name_or_path outputs/ctr --do_eval --data synthetic ... --output_dir outputs/e
    # N CPU processes (torchrun or accelerate's torchrun launcher; `accelerate launch --cpu` starts one), or GPUs
    torchrun --nproc_per_node 2 examples/run_ctr.py ... --use_cpu
    accelerate launch --multi_gpu --num_processes 2 examples/run_ctr.py ... --use_cpu

With neither --do_train nor --do_eval it trains, then evaluates. Eval metrics: AUC, accuracy and log-loss.
"""

import dataclasses
import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import transformers
from datasets import DatasetDict
from sklearn.metrics import roc_auc_score
from transformers import EvalPrediction

from rm_hf import RehearsalMemoryConfig, RehearsalMemoryForClickPrediction
from rm_hf.configuration_rehearsal_memory import MEMORY_TYPE_ALIASES, MEMORY_TYPES
from rm_hf.ctr_baselines import MeanPoolClickModel, TargetAttentionClickModel
from rm_hf.ctr_data import (
    MAX_LINE_BYTES,
    VOCAB_FILE_NAME,
    BehaviorVocab,
    ClickCollator,
    HistoryPrefixCurriculum,
    generate_behavior_histories,
    load_behavior_log,
    load_movielens,
    load_taobao,
    parse_history_curriculum,
)
from rm_hf.model_card import local_dataset, write_click_model_card
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
from rm_hf.trainer import (
    RehearsalMemoryTrainer,
    RehearsalTrainingArguments,
    checkpoint_to_resume,
    closes_process_group,
)

logger = logging.getLogger(__name__)

MODEL_CLASSES = {
    "rm": RehearsalMemoryForClickPrediction,
    "mean_pool": MeanPoolClickModel,
    "target_attention": TargetAttentionClickModel,
}


ARCHITECTURES = {model_class.__name__: name for name, model_class in MODEL_CLASSES.items()}
# the config fields a flag of the same name sets
CONFIG_FIELDS = (
    "use_rehearsal", "sampler_mode", "num_memory_slots", "memory_type", "memory_capacity", "segment_length",
    "item_embedding_dim", "num_rehearsal_fragments", "rehearsal_batch_fraction", "rehearsal_num_layers",
)  # fmt: skip


@dataclass
class ModelArguments:
    _argument_group_name = "Model"
    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "A checkpoint written by this script (or its Hub id) to evaluate (--do_eval) or train further "
            "(--do_train): its model and behavior_vocab.json are used, and the model flags below are refused where "
            "they differ from it."
        },
    )
    encoder_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "A pretrained Hugging Face encoder (folder or Hub id) for the backbone of a new `rm` model; it "
            "fixes --hidden_size and --num_layers (--num_attention_heads then sets the memory's and rehearsal's)."
        },
    )
    freeze_encoder: bool = field(
        default=False,
        metadata={
            "help": "Keep the encoder backbone's weights (e.g. the pretrained --encoder_name_or_path) as they are and "
            "train the rest: a step then costs the backbone's forward pass only."
        },
    )
    model: Literal["rm", "mean_pool", "target_attention"] = field(
        default="rm", metadata={"help": "Rehearsal Memory, or a baseline reading the raw history."}
    )
    use_rehearsal: bool = field(default=True, metadata={"help": "Train `rm` with the rehearsal losses."})
    sampler_mode: Literal["uniform", "teacher"] = field(
        default="uniform", metadata={"help": "Which fragments of the history `rm` rehearses."}
    )
    # Rehearsal's size: 2 fragments of a quarter of each batch's histories through a 1-layer rehearsal model keep
    # a training step with rehearsal at 1.10-1.31x one without (bench/results/ctr_train_cost.json).
    num_rehearsal_fragments: int = field(default=2, metadata={"help": "Fragments rehearsed per history."})
    rehearsal_batch_fraction: float = field(
        default=0.25, metadata={"help": "Share of each batch's histories rehearsed per step; rehearsal's cost scales."}
    )
    rehearsal_num_layers: int = field(default=1, metadata={"help": "Layers of the rehearsal model."})
    # The sizes default to a small model (the one bench/bench_ctr.py compares) that, with the training defaults,
    # learns the default synthetic task in about a minute on one CPU thread: bench/results/ctr_defaults.json.
    num_memory_slots: int = field(default=8, metadata={"help": "K, the memory slots per user."})
    memory_type: Literal[(*MEMORY_TYPES, *MEMORY_TYPE_ALIASES)] = field(
        default="slots",
        metadata={
            "help": "The memory each user's history is written into: slots (K learned slots, the method), expire_span, "
            "lamemo or key_value ('rehearsal' and 'kv' are read as their earlier names)."
        },
    )
    memory_capacity: int = field(default=128, metadata={"help": "Entries kept by expire_span, lamemo and key_value."})
    segment_length: int = field(default=250, metadata={"help": "Behaviours written into memory per step."})
    item_embedding_dim: int = field(default=16, metadata={"help": "Item and category embedding size."})
    hidden_size: int = field(default=32, metadata={"help": "Encoder width, memory slot size and MLP width."})
    num_layers: int = field(
        default=0,
        metadata={
            "help": "Encoder (BERT) layers. 0 by default: behaviours enter the memory through BERT's embeddings "
            "(position within the segment, layer norm) only; the default task is learned without a layer "
            "(bench/results/ctr_defaults.json)."
        },
    )
    num_attention_heads: int = field(default=2, metadata={"help": "Heads of the encoder, memory and rehearsal."})
    dropout: float = field(
        default=0.0,
        metadata={
            "help": "Hidden and attention dropout of the encoder of a new `rm` model (a checkpoint or pretrained "
            "encoder keeps its own). 0 by default: each CPU training step takes about a third less time than with "
            "BERT's 0.1."
        },
    )


@dataclass
class DataArguments:
    _argument_group_name = "Data"
    data: Literal["synthetic", "taobao", "movielens", "csv"] = field(default="synthetic")
    taobao_csv: str | None = field(default=None, metadata={"help": "Taobao UserBehavior.csv (for --data taobao)."})
    ratings_csv: str | None = field(default=None, metadata={"help": "MovieLens ratings.csv (for --data movielens)."})
    movies_csv: str | None = field(default=None, metadata={"help": "MovieLens movies.csv (for --data movielens)."})
    behavior_csv: str | None = field(
        default=None, metadata={"help": "CSV with user,item,category,timestamp[,label][,behavior] (--data csv)."}
    )
    num_users: int = field(default=2000, metadata={"help": "Synthetic users."})
    history_length: int = field(default=1000, metadata={"help": "Synthetic events per user (answer in first 10%%)."})
    num_items: int = field(default=50, metadata={"help": "Synthetic items."})
    num_categories: int = field(default=5, metadata={"help": "Synthetic categories."})
    num_interests: int = field(
        default=1,
        metadata={
            "help": "Synthetic interest categories per user (shown early; as many others never shown). With more "
            "than one, the default model learns more slowly and less surely."
        },
    )
    max_history: int = field(default=1000, metadata={"help": "Real data: keep each history's most recent events."})
    history_curriculum: str | None = field(
        default=None,
        metadata={
            "help": "Train on history prefixes first: EVENTS:SHARE,... reads only each history's first EVENTS events "
            "for the first SHARE of the training steps (e.g. 1000:0.4 on 10,000-event histories), whole histories "
            "after the last stage and in every evaluation. A prefix is an older view of a user than the label's: on "
            "real logs use it knowingly."
        },
    )
    test_fraction: float = field(default=0.2, metadata={"help": "Share of users held out for evaluation."})
    dataset_seed: int = field(default=0, metadata={"help": "Seed of the synthetic data and of the user split."})
    skip_bad_lines: bool = field(default=False, metadata={"help": "Skip malformed CSV lines instead of failing."})
    max_line_bytes: int = field(default=MAX_LINE_BYTES, metadata={"help": "Longest CSV line read, in bytes."})
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Evaluate on the first N evaluation samples only."}
    )

    def __post_init__(self):
        needed = {"taobao": ["taobao_csv"], "movielens": ["ratings_csv", "movies_csv"], "csv": ["behavior_csv"]}
        missing = [f"--{name}" for name in needed.get(self.data, []) if getattr(self, name) is None]
        if missing:
            raise ValueError(f"--data {self.data} needs {' and '.join(missing)}.")
        if self.history_curriculum is not None:
            parse_history_curriculum(self.history_curriculum)  # a bad stage fails before anything is loaded


@dataclass
class ClickTrainingArguments(RehearsalTrainingArguments):
    """Trainer's flags, with defaults that train the default model on the default task (AUC 1.0 after the 400
    steps, about a minute on one CPU thread), where Trainer's own (learning rate 5e-5, no warm-up) leave it at
    chance. Batches of 64: a step has a fixed cost (the segment loop, the rehearsal model) that batches of 16 pay
    four times as often per history. For other data set --max_steps, or -1 to train for --num_train_epochs."""

    learning_rate: float = script_default(RehearsalTrainingArguments, "learning_rate", 3e-3)
    warmup_steps: float = script_default(RehearsalTrainingArguments, "warmup_steps", 0.05)
    max_steps: int = script_default(RehearsalTrainingArguments, "max_steps", 400)
    per_device_train_batch_size: int = script_default(RehearsalTrainingArguments, "per_device_train_batch_size", 64)


def load_data(args: DataArguments):
    if args.data == "synthetic":
        return generate_behavior_histories(
            num_users=args.num_users,
            history_length=args.history_length,
            num_items=args.num_items,
            num_categories=args.num_categories,
            num_interests=args.num_interests,
            seed=args.dataset_seed,
            test_fraction=args.test_fraction,
        )
    common = {
        "max_history": args.max_history,
        "seed": args.dataset_seed,
        "skip_bad_lines": args.skip_bad_lines,
        "max_line_bytes": args.max_line_bytes,
    }
    if args.data == "taobao":
        return load_taobao(args.taobao_csv, **common)  # split by time, as MIMN does
    if args.data == "movielens":
        return load_movielens(args.ratings_csv, args.movies_csv, test_fraction=args.test_fraction, **common)
    return load_behavior_log(args.behavior_csv, test_fraction=args.test_fraction, **common)


def build_config(args: ModelArguments, vocab, encoder_config=None) -> RehearsalMemoryConfig:
    """A new model's config: the flags, the vocabulary's sizes and a BERT encoder of the flags' shape (or
    `encoder_config`, a pretrained encoder's)."""
    encoder = encoder_config or {
        "model_type": "bert",
        "hidden_size": args.hidden_size,
        "num_hidden_layers": args.num_layers,
        "num_attention_heads": args.num_attention_heads,
        "intermediate_size": 4 * args.hidden_size,
        "max_position_embeddings": args.segment_length,
        "hidden_dropout_prob": args.dropout,
        "attention_probs_dropout_prob": args.dropout,
        "vocab_size": 2,  # behaviours enter as features (input_feature_dim); the token table is never read
    }
    return RehearsalMemoryConfig(
        encoder_config=encoder,
        num_memory_heads=args.num_attention_heads,
        item_vocab_size=vocab.item_vocab_size,
        category_vocab_size=vocab.category_vocab_size,
        behavior_vocab_size=vocab.behavior_vocab_size,
        rehearsal_num_heads=args.num_attention_heads,
        **{name: getattr(args, name) for name in CONFIG_FIELDS},
    )


def load_model_source(args: ModelArguments, given: set[str]):
    """Before any data is read: the config and vocabulary of `--model_name_or_path`, or the pretrained
    `--encoder_name_or_path` (one of them, or neither), refusing the model flags given that they fix (a checkpoint's
    model, shape and memory cannot change: silently ignoring such a flag would evaluate or train something else
    than asked). For a new model, its config is built once from the flags, so a bad combination fails here rather
    than after loading the data. Returns (checkpoint config or None, its vocabulary or None, encoder or None)."""
    # one name per memory type (aliases read as their names), in the run record too
    args.memory_type = MEMORY_TYPE_ALIASES.get(args.memory_type, args.memory_type)
    flags = dataclasses.asdict(args)
    if args.model_name_or_path:
        if args.encoder_name_or_path:
            raise ValueError(
                "--model_name_or_path and --encoder_name_or_path exclude each other: a checkpoint has its encoder."
            )
        path = args.model_name_or_path
        config = RehearsalMemoryConfig.from_pretrained(path)
        model = ARCHITECTURES.get((config.architectures or [None])[0])
        if model is None:
            raise ValueError(f"--model_name_or_path {path} holds a {config.architectures}, not a click model.")
        if not (Path(path) / VOCAB_FILE_NAME).is_file():
            raise FileNotFoundError(f"--model_name_or_path {path} has no {VOCAB_FILE_NAME}: its item ids are unknown.")
        encoder = config.encoder_config
        fixed = {"model": model, "hidden_size": encoder.hidden_size, "num_layers": encoder.num_hidden_layers}
        fixed["num_attention_heads"] = encoder.num_attention_heads
        fixed["dropout"] = getattr(encoder, "hidden_dropout_prob", None)
        fixed.update({name: getattr(config, name) for name in CONFIG_FIELDS})
        refuse_fixed_flags(given, flags, fixed, f"the checkpoint {path}")
        args.model = model
        return config, BehaviorVocab.load(path), None
    encoder = None
    if args.encoder_name_or_path:
        if args.model != "rm":
            raise ValueError(f"--encoder_name_or_path: --model {args.model} has no encoder (only rm has).")
        encoder = load_pretrained_encoder(args.encoder_name_or_path)
        fixed = {"hidden_size": encoder.config.hidden_size, "num_layers": encoder.config.num_hidden_layers}
        fixed["dropout"] = getattr(encoder.config, "hidden_dropout_prob", None)
        refuse_fixed_flags(given, flags, fixed, f"the encoder {args.encoder_name_or_path}")
    placeholder = BehaviorVocab(items={"1": 1}, categories={"1": 1}, item_categories=[0, 1])
    build_config(args, placeholder, encoder.config if encoder is not None else None)
    return None, None, encoder


def in_vocabulary(datasets: DatasetDict, vocab: BehaviorVocab, saved: BehaviorVocab, path: str) -> DatasetDict:
    """`datasets`, whose ids are `vocab`'s (the one built while reading the data), in the ids of `saved` (a
    checkpoint's). An item or category that `saved` lacks has no embedding in the checkpoint: refused, named."""
    if vocab == saved:
        return datasets
    tables = {}
    for kind in ("items", "categories", "behaviors"):
        ours, theirs = getattr(vocab, kind), getattr(saved, kind)
        unknown = sorted(raw for raw in ours if raw not in theirs)
        if unknown:
            raise ValueError(
                f"{len(unknown)} {kind} of the data are not in {path}/{VOCAB_FILE_NAME} (e.g. "
                f"{', '.join(map(repr, unknown[:5]))}): the checkpoint has no embedding for them."
            )
        table = np.zeros(max(ours.values(), default=0) + 1, dtype=np.int64)
        for raw, index in ours.items():
            table[index] = theirs[raw]
        tables[kind] = table
    columns = {
        "history_items": "items",
        "target_item": "items",
        "history_categories": "categories",
        "target_category": "categories",
        "history_behaviors": "behaviors",
    }

    def translate(batch):
        for column, kind in columns.items():
            if column.startswith("history_"):  # one list per sample
                batch[column] = [tables[kind][np.asarray(row, dtype=np.int64)].tolist() for row in batch[column]]
            else:
                batch[column] = tables[kind][np.asarray(batch[column], dtype=np.int64)].tolist()
        return batch

    return datasets.map(translate, batched=True, desc="Ids of the checkpoint's vocabulary")


def compute_metrics(prediction: EvalPrediction) -> dict[str, float]:
    logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
    logits, labels = logits.astype(np.float64), prediction.label_ids.astype(np.float64)
    # AUC is undefined when the evaluation set holds one class only
    auc = roc_auc_score(labels, logits) if np.unique(labels).size == 2 else float("nan")
    # log-loss (binary cross-entropy) from the logits: log(1 + e^z) - y z, exact for any z
    log_loss = np.logaddexp(0.0, logits) - labels * logits
    return {
        "auc": float(auc),
        "accuracy": float(((logits > 0) == (labels > 0.5)).mean()),
        "log_loss": float(log_loss.mean()),
    }


@closes_process_group
def main(argv: list[str] | None = None) -> None:
    (model_args, data_args, training_args), given = parse_script_args(
        (ModelArguments, DataArguments, ClickTrainingArguments), __doc__, argv
    )
    # Named, so evaluation returns label ids for compute_metrics (Trainer cannot infer them here). remove_unused_columns
    # drops only `user_id`: the Trainer keeps `label` for the collator, which turns it into `labels`.
    training_args.label_names = ["labels"]

    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", handlers=[logging.StreamHandler(sys.stdout)]
    )
    log_level = training_args.get_process_log_level()
    logger.setLevel(log_level)
    transformers.utils.logging.set_verbosity(log_level)
    choose_stages(training_args, given, model_args.model_name_or_path)
    checkpoint_config, saved_vocab, encoder = load_model_source(model_args, given)
    run = run_arguments(model_args, data_args, training_args)
    if training_args.do_train:
        check_output_dir(training_args, run)  # on every process, before any of them writes into it
    logger.info("Model %s, data %s; %s", model_args, data_args, training_args)

    transformers.set_seed(training_args.seed)
    with training_args.main_process_first(desc="building the click dataset"):
        datasets, vocab = load_data(data_args)
        if saved_vocab is not None:  # a checkpoint's ids: the data's must be translated to them
            datasets = in_vocabulary(datasets, vocab, saved_vocab, model_args.model_name_or_path)
            saved_vocab.bad_lines, vocab = vocab.bad_lines, saved_vocab
    logger.info("Data: %s; %d items, %d categories", datasets, len(vocab.items), len(vocab.categories))
    eval_dataset = datasets["test"]
    if data_args.max_eval_samples:
        eval_dataset = eval_dataset.select(range(min(data_args.max_eval_samples, len(eval_dataset))))

    model_class = MODEL_CLASSES[model_args.model]
    if checkpoint_config is not None:
        model = model_class.from_pretrained(model_args.model_name_or_path)
    else:
        model = model_class(build_config(model_args, vocab, encoder.config if encoder is not None else None))
        if encoder is not None:
            with_encoder_weights(model, encoder)
    if model_args.freeze_encoder:
        freeze_encoder(model, model_args.model)
    logger.info("%s with %.2fM parameters", model_class.__name__, model.num_parameters() / 1e6)

    collator = ClickCollator()
    callbacks = [RunRecorder(run)] if training_args.do_train else []
    if training_args.do_train and data_args.history_curriculum:
        callbacks.append(HistoryPrefixCurriculum(collator, parse_history_curriculum(data_args.history_curriculum)))
    trainer = RehearsalMemoryTrainer(
        model=model,
        args=training_args,
        train_dataset=datasets["train"] if training_args.do_train else None,
        eval_dataset=eval_dataset if training_args.do_eval else None,
        data_collator=collator,
        compute_metrics=compute_metrics,
        callbacks=callbacks,
    )

    if training_args.do_train:
        checkpoint = checkpoint_to_resume(training_args, run)
        result = trainer.train(resume_from_checkpoint=checkpoint)
        trainer.save_model()  # model, config and (for `rm`) the code for trust_remote_code loading
        if trainer.is_world_process_zero():
            vocab.save(training_args.output_dir)
        metrics = {**result.metrics, "train_samples": len(datasets["train"])}
        metrics = train_metrics(training_args, metrics, checkpoint, trainer.state.global_step)
        trainer.log_metrics("train", metrics)
        trainer.save_metrics("train", metrics)
        trainer.save_state()

    if training_args.do_eval:
        metrics = trainer.evaluate()
        metrics["eval_samples"] = len(eval_dataset)
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)

    data_metrics = {"skipped_bad_lines": vocab.bad_lines}  # with --skip_bad_lines; 0 otherwise
    trainer.log_metrics("data", data_metrics)
    trainer.save_metrics("data", data_metrics)

    if training_args.do_train:
        if trainer.is_world_process_zero():
            write_card(model_args, data_args, training_args, trainer, datasets, vocab, argv)
        if training_args.push_to_hub:  # after the card, which the push keeps
            trainer.push_to_hub(commit_message="End of training")


CARD_DATA = {  # --data: the model-index dataset type and what the card says the data was
    "synthetic": "synthetic-click-histories",
    "taobao": "taobao-user-behavior",
    "movielens": "movielens-ratings",
    "csv": "behavior-csv",
}


def describe_data(args: DataArguments) -> tuple[str, str]:
    """The data's name and the card's paragraph about it (none of these is a Hub dataset)."""
    if args.data == "synthetic":
        name = f"synthetic behaviour histories ({args.num_users} users x {args.history_length} behaviours)"
        return name, (
            f"Synthetic histories from `rm_hf.ctr_data.generate_behavior_histories` (seed {args.dataset_seed}; no Hub "
            f"dataset): {args.num_users} users of {args.history_length} behaviours over {args.num_items} items in "
            f"{args.num_categories} categories, {args.num_interests} interest{'s' * (args.num_interests != 1)} each. "
            "Whether the target is clicked is decided by the first ~10% of the history only, so the task measures "
            "memory over long histories; "
            f"{args.test_fraction:.0%} of the users are held out for evaluation."
        )
    if args.data == "taobao":
        return "Taobao UserBehavior", (
            "The Taobao user behaviour log (`UserBehavior.csv`, released by Alibaba on Tianchi; no Hub dataset), "
            f"read from `--taobao_csv`: one sample per user, built the way MIMN does, with the user's last "
            f"{args.max_history} behaviours; users are split into training and evaluation by the time of their last "
            "behaviour. Check the dataset's terms before publishing a model trained on it."
        )
    if args.data == "movielens":
        return "MovieLens ratings", (
            "MovieLens ratings (GroupLens; no Hub dataset) read from `--ratings_csv` and `--movies_csv`: a rating "
            f">= 4 is a click, a movie's first genre its category, histories keep the last {args.max_history} "
            f"ratings, and {args.test_fraction:.0%} of the users are held out for evaluation. GroupLens' usage "
            "licence applies to the data; check it before publishing a model trained on it."
        )
    return "a behaviour log CSV", (
        f"A behaviour log supplied as a CSV (`--behavior_csv`; no Hub dataset): histories keep the last "
        f"{args.max_history} events, and {args.test_fraction:.0%} of the users are held out for evaluation."
    )


def write_card(model_args, data_args, training_args, trainer, datasets, vocab, argv) -> None:
    """The model card (README.md): what the data was, the evaluation metrics in `all_results.json`, and (for
    Rehearsal Memory) a usage snippet scoring an evaluation user's last behaviours."""
    output_dir = Path(training_args.output_dir)
    results = json.loads((output_dir / "all_results.json").read_text(encoding="utf-8"))
    name, data = describe_data(data_args)
    command = " ".join(sys.argv[1:] if argv is None else argv)
    training = (
        f"Trained with `examples/run_ctr.py` (`--model {model_args.model}`) on {results.get('train_samples')} click "
        f"samples for {trainer.state.global_step} steps, batch size {training_args.per_device_train_batch_size} x "
        f"{training_args.world_size} processes, learning rate {training_args.learning_rate}"
        + (
            f", rehearsal weights {training_args.recollection_weight} (recollection) / "
            f"{training_args.familiarity_weight} (familiarity)"
            if model_args.model == "rm" and model_args.use_rehearsal
            else ""
        )
        + f"; {results.get('train_runtime', 0):.0f} s of training. Command: `python examples/run_ctr.py {command}`"
    )
    example = None
    test = datasets["test"]
    if model_args.model == "rm" and len(test):
        names = {
            "items": {i: raw for raw, i in vocab.items.items()},
            "categories": {i: raw for raw, i in vocab.categories.items()},
            "behaviors": {i: raw for raw, i in vocab.behaviors.items()},
        }
        row = test[0]
        columns = zip(row["history_items"], row["history_categories"], row["history_behaviors"])
        history = [[names["items"][i], names["categories"][c], names["behaviors"][b]] for i, c, b in columns][-8:]
        targets = dict.fromkeys(names["items"][int(t)] for t in test[: min(len(test), 8)]["target_item"])
        example = {"history": history, "candidates": list(targets)[:3]}
    write_click_model_card(
        output_dir / "README.md",
        trainer.model,
        results,
        local_dataset(name, CARD_DATA[data_args.data]),
        training,
        data,
        model_id=trainer.hub_model_id or training_args.hub_model_id,
        example=example,
        eval_samples=results.get("eval_samples"),
    )


if __name__ == "__main__":
    main(sys.argv[1:])
