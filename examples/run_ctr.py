"""Train and evaluate click prediction on long user behaviour histories: Rehearsal Memory or a baseline.

Data: the synthetic long-history task (`--data synthetic`), the Taobao `UserBehavior.csv` log, MovieLens
ratings or a generic behaviour CSV. Models: `rm` (Rehearsal Memory, `--use_rehearsal`, `--sampler_mode`),
`mean_pool` and `target_attention` (they read the raw history). Writes the model, `behavior_vocab.json` and
`all_results.json` (eval AUC and accuracy, and the number of malformed lines skipped with `--skip_bad_lines`)
into `--output_dir`. With `--save_steps N`, a run that dies continues where its last checkpoint left off when
started again with `--resume_from_checkpoint last`.

    python examples/run_ctr.py --data synthetic --num_users 2000 --history_length 1000 --model rm \
        --output_dir outputs/ctr --do_train --do_eval --max_steps 500 --learning_rate 3e-3
    torchrun --nproc_per_node 2 examples/run_ctr.py ... --use_cpu   # or: accelerate launch examples/run_ctr.py ...
"""

import logging
import sys
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import transformers
from sklearn.metrics import roc_auc_score
from transformers import EvalPrediction, HfArgumentParser

from rm_hf import RehearsalMemoryConfig, RehearsalMemoryForClickPrediction
from rm_hf.configuration_rehearsal_memory import MEMORY_TYPE_ALIASES, MEMORY_TYPES
from rm_hf.ctr_baselines import MeanPoolClickModel, TargetAttentionClickModel
from rm_hf.ctr_data import (
    MAX_LINE_BYTES,
    ClickCollator,
    generate_behavior_histories,
    load_behavior_log,
    load_movielens,
    load_taobao,
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


@dataclass
class ModelArguments:
    model: Literal["rm", "mean_pool", "target_attention"] = field(
        default="rm", metadata={"help": "Rehearsal Memory, or a baseline reading the raw history."}
    )
    use_rehearsal: bool = field(default=True, metadata={"help": "Train `rm` with the rehearsal losses."})
    sampler_mode: Literal["uniform", "teacher"] = field(
        default="uniform", metadata={"help": "Which fragments of the history `rm` rehearses."}
    )
    num_memory_slots: int = field(default=16, metadata={"help": "K, the memory slots per user."})
    memory_type: str = field(
        default="slots",
        metadata={
            "help": "The memory each user's history is written into: slots (K learned slots, the method), expire_span, "
            "lamemo or key_value ('rehearsal' and 'kv' are read as their earlier names).",
            "choices": [*MEMORY_TYPES, *MEMORY_TYPE_ALIASES],
        },
    )
    memory_capacity: int = field(default=128, metadata={"help": "Entries kept by expire_span, lamemo and key_value."})
    segment_length: int = field(default=32, metadata={"help": "Behaviours written into memory per step."})
    item_embedding_dim: int = field(default=32, metadata={"help": "Item and category embedding size."})
    hidden_size: int = field(default=64, metadata={"help": "Encoder width, memory slot size and MLP width."})
    num_layers: int = field(default=2, metadata={"help": "Encoder (BERT) layers."})
    num_attention_heads: int = field(default=4, metadata={"help": "Heads of the encoder, memory and rehearsal."})


@dataclass
class DataArguments:
    data: Literal["synthetic", "taobao", "movielens", "csv"] = field(default="synthetic")
    taobao_csv: str | None = field(default=None, metadata={"help": "Taobao UserBehavior.csv (for --data taobao)."})
    ratings_csv: str | None = field(default=None, metadata={"help": "MovieLens ratings.csv (for --data movielens)."})
    movies_csv: str | None = field(default=None, metadata={"help": "MovieLens movies.csv (for --data movielens)."})
    behavior_csv: str | None = field(
        default=None, metadata={"help": "CSV with user,item,category,timestamp[,label][,behavior] (--data csv)."}
    )
    num_users: int = field(default=2000, metadata={"help": "Synthetic users."})
    history_length: int = field(default=1000, metadata={"help": "Synthetic events per user (answer in first 10%%)."})
    num_items: int = field(default=500, metadata={"help": "Synthetic items."})
    num_categories: int = field(default=20, metadata={"help": "Synthetic categories."})
    num_interests: int = field(default=3, metadata={"help": "Synthetic interest categories per user."})
    max_history: int = field(default=1000, metadata={"help": "Real data: keep each history's most recent events."})
    test_fraction: float = field(default=0.2, metadata={"help": "Share of users held out for evaluation."})
    dataset_seed: int = field(default=0, metadata={"help": "Seed of the synthetic data and of the user split."})
    skip_bad_lines: bool = field(default=False, metadata={"help": "Skip malformed CSV lines instead of failing."})
    max_line_bytes: int = field(default=MAX_LINE_BYTES, metadata={"help": "Longest CSV line read, in bytes."})

    def __post_init__(self):
        needed = {"taobao": ["taobao_csv"], "movielens": ["ratings_csv", "movies_csv"], "csv": ["behavior_csv"]}
        missing = [f"--{name}" for name in needed.get(self.data, []) if getattr(self, name) is None]
        if missing:
            raise ValueError(f"--data {self.data} needs {' and '.join(missing)}.")


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


def build_config(args: ModelArguments, vocab) -> RehearsalMemoryConfig:
    encoder = {
        "model_type": "bert",
        "hidden_size": args.hidden_size,
        "num_hidden_layers": args.num_layers,
        "num_attention_heads": args.num_attention_heads,
        "intermediate_size": 4 * args.hidden_size,
        "max_position_embeddings": args.segment_length,
        "vocab_size": 2,  # behaviours enter as features (input_feature_dim); the token table is never read
    }
    return RehearsalMemoryConfig(
        encoder_config=encoder,
        memory_type=args.memory_type,
        memory_capacity=args.memory_capacity,
        num_memory_slots=args.num_memory_slots,
        num_memory_heads=args.num_attention_heads,
        segment_length=args.segment_length,
        item_vocab_size=vocab.item_vocab_size,
        category_vocab_size=vocab.category_vocab_size,
        behavior_vocab_size=vocab.behavior_vocab_size,
        item_embedding_dim=args.item_embedding_dim,
        use_rehearsal=args.use_rehearsal,
        rehearsal_num_heads=args.num_attention_heads,
        sampler_mode=args.sampler_mode,
    )


def compute_metrics(prediction: EvalPrediction) -> dict[str, float]:
    logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
    labels = prediction.label_ids
    # AUC is undefined when the evaluation set holds one class only
    auc = roc_auc_score(labels, logits) if np.unique(labels).size == 2 else float("nan")
    return {"auc": float(auc), "accuracy": float(((logits > 0) == (labels > 0.5)).mean())}


@closes_process_group
def main(argv: list[str] | None = None) -> None:
    parser = HfArgumentParser((ModelArguments, DataArguments, RehearsalTrainingArguments))
    model_args, data_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    # Named, so evaluation returns label ids for compute_metrics (Trainer cannot infer them here). remove_unused_columns
    # drops only `user_id`: the Trainer keeps `label` for the collator, which turns it into `labels`.
    training_args.label_names = ["labels"]

    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", handlers=[logging.StreamHandler(sys.stdout)]
    )
    log_level = training_args.get_process_log_level()
    logger.setLevel(log_level)
    transformers.utils.logging.set_verbosity(log_level)
    logger.info("Model %s, data %s; %s", model_args, data_args, training_args)

    transformers.set_seed(training_args.seed)
    with training_args.main_process_first(desc="building the click dataset"):
        datasets, vocab = load_data(data_args)
    logger.info("Data: %s; %d items, %d categories", datasets, len(vocab.items), len(vocab.categories))

    model_class = MODEL_CLASSES[model_args.model]
    model = model_class(build_config(model_args, vocab))
    logger.info("%s with %.2fM parameters", model_class.__name__, model.num_parameters() / 1e6)

    trainer = RehearsalMemoryTrainer(
        model=model,
        args=training_args,
        train_dataset=datasets["train"] if training_args.do_train else None,
        eval_dataset=datasets["test"] if training_args.do_eval else None,
        data_collator=ClickCollator(),
        compute_metrics=compute_metrics,
    )

    if training_args.do_train:
        result = trainer.train(resume_from_checkpoint=checkpoint_to_resume(training_args))
        trainer.save_model()  # model, config and (for `rm`) the code for trust_remote_code loading
        if trainer.is_world_process_zero():
            vocab.save(training_args.output_dir)
        metrics = result.metrics
        metrics["train_samples"] = len(datasets["train"])
        trainer.log_metrics("train", metrics)
        trainer.save_metrics("train", metrics)
        trainer.save_state()

    if training_args.do_eval:
        metrics = trainer.evaluate()
        metrics["eval_samples"] = len(datasets["test"])
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)

    data_metrics = {"skipped_bad_lines": vocab.bad_lines}  # with --skip_bad_lines; 0 otherwise
    trainer.log_metrics("data", data_metrics)
    trainer.save_metrics("data", data_metrics)


if __name__ == "__main__":
    main(sys.argv[1:])
