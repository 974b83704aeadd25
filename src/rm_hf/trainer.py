"""RehearsalMemoryTrainer: a `transformers.Trainer` that adds the rehearsal terms to the task loss
(`rehearsal.combine_losses`):

total = task + ramp * (w_rec * recollection + w_fam * familiarity + w_sampler * sampler) + w_memory * memory

where `memory` is the memory type's own loss (Expire-Span's span loss, the key-value memory's margin loss).

Each term is logged on its own (`task_loss`, `recollection_loss`, ...), averaged over the logging window
and over processes. The model returns a per-micro-batch mean, so the Trainer must divide by the
gradient-accumulation steps itself (`loss_is_scaled_for_ga = False`: with a `labels` column Trainer would otherwise
assume a loss already normalised by the items in the batch and not divide). Runs on
many GPUs unchanged through `accelerate launch` or `torchrun`.

Resuming is Trainer's own mechanism (weights, optimizer, scheduler and every RNG state from `checkpoint-N`); the
rehearsal fragments and donor items are drawn from torch's global RNG, so a resumed run repeats the uninterrupted
one exactly. `checkpoint_to_resume` passes over checkpoints with a file missing or cut short, and a run restarted
from its final checkpoint trains no further. Metrics files are replaced atomically and the final model folder holds
no pickle.
"""

import functools
import json
import logging
import re
import zipfile
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch.distributed as dist
from safetensors import SafetensorError, safe_open
from transformers import Trainer, TrainingArguments
from transformers.trainer import OPTIMIZER_NAME, SCALER_NAME, SCHEDULER_NAME, TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.utils import SAFE_WEIGHTS_NAME

from .file_utils import atomic_path
from .rehearsal import LOSS_WEIGHTS, combine_losses

logger = logging.getLogger(__name__)
CHECKPOINT_NAME = re.compile(rf"{PREFIX_CHECKPOINT_DIR}-(\d+)")
WEIGHT_ARGUMENTS = {
    "recollection_loss": "recollection_weight",
    "familiarity_loss": "familiarity_weight",
    "sampler_loss": "sampler_weight",
    "memory_loss": "memory_loss_weight",
}


@dataclass
class RehearsalTrainingArguments(TrainingArguments):
    recollection_weight: float = field(
        default=LOSS_WEIGHTS["recollection_loss"], metadata={"help": "Weight of the recollection loss."}
    )
    familiarity_weight: float = field(
        default=LOSS_WEIGHTS["familiarity_loss"], metadata={"help": "Weight of the familiarity loss."}
    )
    sampler_weight: float = field(
        default=LOSS_WEIGHTS["sampler_loss"], metadata={"help": "Weight of the history sampler's loss."}
    )
    memory_loss_weight: float = field(
        default=LOSS_WEIGHTS["memory_loss"],
        metadata={"help": "Weight of the memory type's own loss (expire_span, key_value); not ramped."},
    )
    rehearsal_warmup_steps: int = field(
        default=0, metadata={"help": "Ramp the rehearsal weights linearly from 0 over this many optimizer steps."}
    )
    resume_from_checkpoint: str | None = field(
        default=None,
        metadata={
            "help": "A checkpoint folder to continue training from, or `last`: the newest complete checkpoint in "
            "--output_dir, or a fresh start when there is none (so one command serves a first run and every restart)."
        },
    )

    def __post_init__(self):
        super().__post_init__()
        for name in (*WEIGHT_ARGUMENTS.values(), "rehearsal_warmup_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"RehearsalTrainingArguments.{name} must be >= 0, got {getattr(self, name)}.")


class RehearsalMemoryTrainer(Trainer):
    loss_is_scaled_for_ga = False  # our models return a plain per-batch mean

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}

    def _init_training_state(self, max_steps, steps_per_epoch, num_train_epochs, *args, **kwargs):
        """Trainer's own, except that a checkpoint already at `max_steps` leaves no epoch to run.

        Trainer compares the step count with `max_steps` only after an optimizer step, so resuming from the last
        checkpoint of a finished run (a retried job) would train one step more: new weights and a checkpoint past
        the end.
        """
        trained = super()._init_training_state(max_steps, steps_per_epoch, num_train_epochs, *args, **kwargs)
        if self.state.global_step < max_steps:
            return trained
        logger.info("Resumed at step %d of %d: nothing left to train.", self.state.global_step, max_steps)
        return num_train_epochs, 0

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        outputs = model(**inputs)
        # plain TrainingArguments train with the default weights
        weights = {name: getattr(self.args, WEIGHT_ARGUMENTS[name], default) for name, default in LOSS_WEIGHTS.items()}
        warmup = getattr(self.args, "rehearsal_warmup_steps", 0)
        loss = combine_losses(outputs, weights, min(1.0, self.state.global_step / warmup) if warmup else 1.0)
        mode = "train" if model.training else "eval"
        self.record(mode, "task_loss", outputs["loss"])
        for name in weights:
            if outputs.get(name) is not None:
                self.record(mode, name, outputs[name])
        return (loss, outputs) if return_outputs else loss

    def record(self, mode, name, value):
        self._metrics[mode][name].append(self.accelerator.gather_for_metrics(value.detach()).mean().item())

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "train" if self.model.training else "eval"
        averages = {name: sum(values) / len(values) for name, values in self._metrics[mode].items() if values}
        if mode == "eval":
            averages = {f"eval_{name}": value for name, value in averages.items()}
        logs.update(averages)
        super().log(logs, start_time)
        self._metrics[mode].clear()

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        super().save_model(output_dir, _internal_call)
        # The folder people publish holds no pickle: the arguments go to JSON instead of training_args.bin.
        # Checkpoint folders keep Trainer's files (optimizer.pt, rng_state.pth, ...), which it loads with
        # weights_only=True.
        if _internal_call or not self.args.should_save:
            return
        output_dir = Path(output_dir if output_dir is not None else self.args.output_dir)
        (output_dir / "training_args.bin").unlink(missing_ok=True)
        with atomic_path(output_dir / "training_args.json") as tmp:
            tmp.write_text(self.args.to_json_string(), encoding="utf-8")

    def save_metrics(self, split: str, metrics: dict[str, float], combined: bool = True) -> None:
        """`Trainer.save_metrics` (`{split}_results.json`, merged into `all_results.json`), with each file
        replaced atomically, so a crash never leaves half a JSON file."""
        if not self.is_world_process_zero():
            return
        output_dir = Path(self.args.output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        files = {f"{split}_results.json": metrics}
        if combined:
            path = output_dir / "all_results.json"
            files["all_results.json"] = {**(json.loads(path.read_text()) if path.exists() else {}), **metrics}
        for name, values in files.items():
            with atomic_path(output_dir / name) as tmp:
                tmp.write_text(json.dumps(values, indent=4, sort_keys=True), encoding="utf-8")


def checkpoint_to_resume(args: TrainingArguments) -> str | None:
    """The checkpoint `args.resume_from_checkpoint` names, with `last` resolved to the newest `checkpoint-N` in
    `args.output_dir` that can resume this run exactly (None, a fresh start, when there is none).

    A crash while Trainer saves a checkpoint (or while it deletes an old one) leaves a folder with files missing
    or cut short; `last` passes over such a folder with a warning that says what is wrong with it.
    """
    if args.resume_from_checkpoint != "last":
        # the caller chose this one: say what is wrong with it before Trainer fails on it, or quietly resumes less
        if args.resume_from_checkpoint and (problem := checkpoint_problem(Path(args.resume_from_checkpoint), args)):
            logger.warning("Resuming from %s although %s.", args.resume_from_checkpoint, problem)
        return args.resume_from_checkpoint
    output_dir = Path(args.output_dir)
    folders = [path for path in output_dir.glob("*") if path.is_dir()]
    steps = {int(m[1]): path for path in folders if (m := CHECKPOINT_NAME.fullmatch(path.name))}
    for step in sorted(steps, reverse=True):
        if problem := checkpoint_problem(steps[step], args):
            logger.warning("Passing over %s: %s.", steps[step], problem)
            continue
        logger.info("Resuming from %s, the newest complete checkpoint.", steps[step])
        return str(steps[step])
    if steps:
        logger.warning("No complete checkpoint in %s: training starts from scratch.", output_dir)
    else:
        logger.info("No checkpoint in %s yet: training starts from scratch.", output_dir)
    return None


def checkpoint_problem(checkpoint: Path, args: TrainingArguments) -> str | None:
    """What keeps `checkpoint` from resuming this run exactly: the first file Trainer would load that is missing
    or damaged, or a trainer_state.json for another step than the folder's name. None when it is whole.

    Reads headers only, so checking costs little next to loading.
    """
    names = [TRAINER_STATE_NAME, SAFE_WEIGHTS_NAME]
    if not args.save_only_model:  # otherwise Trainer saves the weights alone
        # each process loads its own RNG file; all are checked so that every process picks the same checkpoint
        rng = ["rng_state.pth"] if args.world_size <= 1 else [f"rng_state_{i}.pth" for i in range(args.world_size)]
        names += [OPTIMIZER_NAME, SCHEDULER_NAME, *rng]
    if (checkpoint / SCALER_NAME).exists():  # saved only when training in fp16
        names.append(SCALER_NAME)
    for name in names:
        if problem := file_problem(checkpoint / name):
            return problem
    step = json.loads((checkpoint / TRAINER_STATE_NAME).read_text(encoding="utf-8")).get("global_step")
    if (m := CHECKPOINT_NAME.fullmatch(checkpoint.name)) and step != int(m[1]):
        return f"its {TRAINER_STATE_NAME} is at step {step}"
    return None


def file_problem(path: Path) -> str | None:
    """Why `path` cannot be loaded (missing, or cut short by a crash while writing it), judged from its header or
    directory alone; None when it looks whole."""
    try:
        if path.suffix == ".json":
            json.loads(path.read_text(encoding="utf-8"))
        elif path.suffix == ".safetensors":
            with safe_open(path, "pt"):  # checks that the tensors the header lists fill the file exactly
                pass
        else:
            # torch.save writes a zip archive, whose directory comes last: a file cut short has none
            zipfile.ZipFile(path).close()
    except FileNotFoundError:
        return f"{path.name} is missing"
    except (OSError, ValueError, SafetensorError, zipfile.BadZipFile) as error:
        return f"{path.name} is damaged ({error})"
    return None


def closes_process_group(main: Callable) -> Callable:
    """Wrap a training script's `main` so each process closes its process group on the way out, however it ends.

    A gloo group left open is torn down during interpreter finalisation, while its worker threads may still hold
    tensors; now and then a rank then aborts at exit (`terminate called without an active exception`, SIGABRT)
    after a good run. Closing it while the interpreter is whole removes that race. A no-op in a single process.
    """

    @functools.wraps(main)
    def run(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        finally:
            if dist.is_available() and dist.is_initialized():
                dist.destroy_process_group()

    return run
