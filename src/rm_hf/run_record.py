"""Which training run an output folder or a checkpoint belongs to, so that a restart continues its own run only.

A run is named by its arguments (`run_arguments`): the model, data and training arguments of a script, less those a
restart may change (`RESTART_ARGUMENTS`: where and how often it logs, evaluates and saves, how many steps or epochs
it trains, how it loads data and evaluates, and the restart flags themselves). `RunRecorder` writes them as
`run_arguments.json` into the output folder when training starts and into every checkpoint it saves.
`check_output_dir` refuses to train into a non-empty output folder unless the command continues the run the folder
holds (`--resume_from_checkpoint`) or `--overwrite_output_dir` is given, and `rm_hf.trainer.checkpoint_to_resume`
passes over checkpoints of another run when it resolves `last`.
"""

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

from transformers import TrainerCallback, TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from .file_utils import atomic_path

logger = logging.getLogger(__name__)

RUN_ARGUMENTS_NAME = "run_arguments.json"
# Arguments that may differ between the first start of a run and a restart of it. Any other difference makes
# another run: its checkpoints could not be loaded (another shape) or would continue something else (other data,
# another learning rate or seed).
RESTART_ARGUMENTS = frozenset(
    {
        # the restart itself, and where the run is
        "output_dir", "overwrite_output_dir", "resume_from_checkpoint", "do_train", "do_eval", "do_predict",
        "local_rank",
        # how long it trains: a restart may extend a run
        "max_steps", "num_train_epochs",
        # logging
        "logging_strategy", "logging_steps", "logging_first_step", "log_on_each_node", "logging_nan_inf_filter",
        "log_level", "log_level_replica", "disable_tqdm", "report_to", "run_name", "project", "trackio_space_id",
        "trackio_bucket_id", "trackio_static_space_id", "include_num_input_tokens_seen", "skip_memory_metrics",
        "debug",
        # evaluation
        "eval_strategy", "eval_steps", "eval_delay", "eval_on_start", "per_device_eval_batch_size",
        "eval_accumulation_steps", "eval_do_concat_batches", "eval_use_gather_object", "batch_eval_metrics",
        "prediction_loss_only", "include_for_metrics", "max_eval_samples",
        # saving and publishing
        "save_strategy", "save_steps", "save_total_limit", "save_on_each_node", "save_only_model",
        "enable_jit_checkpoint", "push_to_hub", "hub_token", "hub_private_repo", "hub_model_id", "hub_strategy",
        "hub_always_push", "hub_revision",
        # data loading and process plumbing
        "dataloader_num_workers", "dataloader_pin_memory", "dataloader_persistent_workers",
        "dataloader_prefetch_factor", "dataloader_multiprocessing_context", "ddp_timeout", "torch_empty_cache_steps",
    }
)  # fmt: skip
# What a run writes into its output folder that describes that run only: replaced, not merged, by a new run.
RUN_FILES = ("all_results.json", "train_results.json", "eval_results.json", "data_results.json", RUN_ARGUMENTS_NAME)


def run_arguments(*arguments) -> dict[str, Any]:
    """The arguments that name a training run: every field of the given dataclasses (a script's model, data and
    training arguments) except `RESTART_ARGUMENTS`, as JSON values (what `run_arguments.json` holds)."""
    values = {}
    for group in arguments:
        values.update(group.to_dict() if isinstance(group, TrainingArguments) else dataclasses.asdict(group))
    values = json.loads(json.dumps(values, default=str))
    return {name: values[name] for name in sorted(values) if name not in RESTART_ARGUMENTS}


def recorded_run(folder: str | Path) -> dict[str, Any] | None:
    """The run arguments recorded in `folder` (an output folder or a checkpoint); None when it records none."""
    try:
        recorded = json.loads((Path(folder) / RUN_ARGUMENTS_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return recorded if isinstance(recorded, dict) else None


def run_difference(recorded: dict[str, Any], run: dict[str, Any], shown: int = 4) -> str:
    """The arguments in which `recorded` and `run` differ, as `--name THERE there, HERE here` (the first `shown`)."""
    missing = "(not set)"
    names = sorted(
        name for name in recorded.keys() | run.keys() if recorded.get(name, missing) != run.get(name, missing)
    )
    parts = [f"--{name} {recorded.get(name, missing)} there, {run.get(name, missing)} here" for name in names[:shown]]
    if len(names) > shown:
        parts.append(f"and {len(names) - shown} more")
    return "; ".join(parts)


def run_problem(folder: str | Path, run: dict[str, Any] | None) -> str | None:
    """Why the checkpoint `folder` is not one of `run`'s (None when it is, or when `run` is None: not checked)."""
    if run is None:
        return None
    recorded = recorded_run(folder)
    if recorded is None:
        return f"it records no run arguments ({RUN_ARGUMENTS_NAME} is missing or unreadable)"
    if recorded != run:
        return f"it belongs to another run ({run_difference(recorded, run)})"
    return None


def check_output_dir(args: TrainingArguments, run: dict[str, Any]) -> None:
    """Before training into `args.output_dir`: refuse a folder that is not empty, unless

    - the command restarts the run the folder holds (`--resume_from_checkpoint`, same run arguments), or
    - `--overwrite_output_dir` is given: files written by the previous run that describe it alone (`RUN_FILES`:
      metrics and run record) are then removed, so they are not merged into this run's; its checkpoints stay but
      `last` never resumes them (they record another run).

    Call it on every process before any of them writes into the folder.
    """
    folder = Path(args.output_dir)
    entries = sorted(path.name for path in folder.iterdir()) if folder.is_dir() else []
    if not entries:
        return
    recorded = recorded_run(folder)
    restart = bool(args.resume_from_checkpoint) and recorded == run
    if getattr(args, "overwrite_output_dir", False):
        if not restart and args.should_save:
            logger.warning("--overwrite_output_dir: training a new run in %s, which is not empty.", folder)
            for name in RUN_FILES:
                (folder / name).unlink(missing_ok=True)
        return
    if restart:
        return
    listing = ", ".join(entries[:4]) + (f" and {len(entries) - 4} more" if len(entries) > 4 else "")
    if recorded is None:
        held = f"is not empty ({listing}) and records no run of these scripts ({RUN_ARGUMENTS_NAME} is missing)"
        remedy = "Choose a new or empty folder, or pass --overwrite_output_dir to train into it anyway."
    elif recorded != run:
        held = f"holds another run ({run_difference(recorded, run)})"
        remedy = (
            "Choose a new or empty folder, or pass --overwrite_output_dir to train a new run there (its checkpoints "
            "are then never resumed by --resume_from_checkpoint last)."
        )
    else:
        held = "already holds this run"
        remedy = (
            "Pass --resume_from_checkpoint last to continue it from its newest checkpoint (a finished run trains no "
            "further), or --overwrite_output_dir to train it again from the start."
        )
    raise ValueError(f"--output_dir {folder} {held}. {remedy}")


class RunRecorder(TrainerCallback):
    """Writes the run arguments into the output folder when training starts and into each checkpoint it saves
    (after Trainer's own files: a checkpoint cut short before it has none, and `last` passes over it)."""

    def __init__(self, run: dict[str, Any]):
        self.run = run

    def on_train_begin(self, args, state, control, **kwargs):
        if args.should_save:
            self._write(Path(args.output_dir))

    def on_save(self, args, state, control, **kwargs):
        checkpoint = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        if args.should_save and checkpoint.is_dir():
            self._write(checkpoint)

    def _write(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(folder / RUN_ARGUMENTS_NAME) as tmp:
            tmp.write_text(json.dumps(self.run, indent=2, sort_keys=True), encoding="utf-8")
