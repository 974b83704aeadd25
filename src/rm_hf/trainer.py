"""RehearsalMemoryTrainer: a `transformers.Trainer` that adds the rehearsal terms to the task loss
(`rehearsal.combine_losses`):

total = task + ramp * (w_rec * recollection + w_fam * familiarity + w_sampler * sampler) + w_memory * memory

where `memory` is the memory type's own loss (Expire-Span's span loss, the key-value memory's margin loss).

Each term is logged on its own (`task_loss`, `recollection_loss`, ...), averaged over the logging window
and over processes. The model returns a per-micro-batch mean, so the Trainer must divide by the
gradient-accumulation steps itself (`loss_is_scaled_for_ga = False`: with a `labels` column Trainer would otherwise
assume a loss already normalised by the items in the batch and not divide). Runs on
many GPUs unchanged through `accelerate launch` or `torchrun`.

With `fragment_teacher` (a trained `MemN2NForQuestionAnswering`), each training batch's `fragment_weights` are that
model's attention over the story sentences, which the history sampler (`sampler_mode="external"`) draws the
fragments to rehearse from: the paper's two-stage teacher. The teacher is neither trained nor saved.

Resuming is Trainer's own mechanism (weights, optimizer, scheduler and every RNG state from `checkpoint-N`); the
rehearsal fragments and donor items are drawn from torch's global RNG, so a resumed run repeats the uninterrupted
one exactly. `checkpoint_to_resume` passes over checkpoints with a file missing or cut short, and a run restarted
from its final checkpoint trains no further. Metrics files are replaced atomically and the final model folder holds
no pickle. `push_to_hub` keeps the model card the example scripts write, and neither it nor the pushes at each save
upload checkpoints, pickles or temporaries (`rm_hf.model_card.publish_ignore_patterns`).
"""

import contextlib
import functools
import json
import logging
import re
import zipfile
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch.distributed as dist
import transformers.trainer as transformers_trainer
import yaml
from huggingface_hub import ModelCard
from safetensors import SafetensorError, safe_open
from transformers import Trainer, TrainingArguments
from transformers.trainer import OPTIMIZER_NAME, SCALER_NAME, SCHEDULER_NAME, TRAINER_STATE_NAME, TRAINING_ARGS_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.utils import SAFE_WEIGHTS_NAME

from .file_utils import atomic_path
from .layers_rehearsal_memory import set_linear_reading
from .model_card import publish_ignore_patterns
from .rehearsal import LOSS_WEIGHTS, combine_losses
from .run_record import run_problem

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
        metadata={"help": "Weight of the memory type's own loss (expire_span, key_value); not warmed up or decayed."},
    )
    rehearsal_warmup_steps: int = field(
        default=0, metadata={"help": "Ramp the rehearsal weights linearly from 0 over this many optimizer steps."}
    )
    rehearsal_decay_start: int | None = field(
        default=None,
        metadata={
            "help": "From this optimizer step on, lower the rehearsal weights linearly, over --rehearsal_decay_steps, "
            "to --rehearsal_final_ratio of their value: rehearsal in full while the reader learns to use the memory, "
            "less once it does (off by default)."
        },
    )
    rehearsal_decay_steps: int = field(
        default=0, metadata={"help": "Length of that decay in optimizer steps (0: one step down)."}
    )
    rehearsal_final_ratio: float = field(
        default=0.25, metadata={"help": "What the decay leaves of the rehearsal weights, in [0, 1]."}
    )
    linear_start_steps: int = field(
        default=0,
        metadata={
            "help": "For this many optimizer steps the reader's attention hops weigh the memory by raw scores, "
            "without the softmax (MemN2N's linear start), so every hop gets gradient from the answer: it takes "
            "MemN2N off bAbI task 16's one-hop plateau (RM's reader not; see the README). Training only: "
            "evaluation, the saved model and inference read with the softmax. 0: off."
        },
    )
    resume_from_checkpoint: str | None = field(
        default=None,
        metadata={
            "help": "A checkpoint folder to continue training from, or `last`: the newest complete checkpoint of "
            "this run in --output_dir, or a fresh start when there is none (so one command serves a first run and "
            "every restart)."
        },
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "Train into a non-empty --output_dir that holds another run (or a finished run of this one, "
            "from the start). Without it the example scripts refuse such a folder."
        },
    )

    def __post_init__(self):
        super().__post_init__()
        steps = ("rehearsal_warmup_steps", "rehearsal_decay_steps", "linear_start_steps")
        for name in (*WEIGHT_ARGUMENTS.values(), *steps):
            if getattr(self, name) < 0:
                raise ValueError(f"RehearsalTrainingArguments.{name} must be >= 0, got {getattr(self, name)}.")
        if self.rehearsal_decay_start is not None and self.rehearsal_decay_start < 0:
            raise ValueError(
                f"RehearsalTrainingArguments.rehearsal_decay_start must be >= 0 (or None: no decay), got "
                f"{self.rehearsal_decay_start}."
            )
        if not 0 <= self.rehearsal_final_ratio <= 1:
            raise ValueError(
                f"RehearsalTrainingArguments.rehearsal_final_ratio must be in [0, 1], got {self.rehearsal_final_ratio}."
            )


def rehearsal_scale(args, step: int) -> float:
    """The factor on the rehearsal weights at optimizer step `step`: the warm-up's linear rise from 0, times the
    decay's linear fall to `rehearsal_final_ratio`. Plain TrainingArguments (no such fields) give 1."""
    warmup = getattr(args, "rehearsal_warmup_steps", 0)
    scale = min(1.0, step / warmup) if warmup else 1.0
    start = getattr(args, "rehearsal_decay_start", None)
    if start is not None and step >= start:
        length = args.rehearsal_decay_steps
        progress = min(1.0, (step - start) / length) if length else 1.0
        scale *= 1.0 - progress * (1.0 - args.rehearsal_final_ratio)
    return scale


def check_fragment_teacher(config, teacher_config) -> None:
    """A fragment teacher weighs the story sentences of the model it teaches: that model must rehearse, draw by
    external weights, read sentence items, and share the teacher's vocabulary."""
    if not (config.use_rehearsal and config.sampler_mode == "external"):
        raise ValueError(
            "fragment_teacher: its attention is what an external history sampler draws from; the model needs "
            f"use_rehearsal=True and sampler_mode='external' (it has {config.use_rehearsal} and "
            f"{config.sampler_mode!r})."
        )
    if config.story_items != "sentences" or teacher_config.story_items != "sentences":
        raise ValueError(
            "fragment_teacher weighs story sentences: the model and its teacher need story_items='sentences'."
        )
    ours, theirs = config.encoder_config.vocab_size, teacher_config.encoder_config.vocab_size
    if ours != theirs:
        raise ValueError(
            f"fragment_teacher has a vocabulary of {theirs} tokens, the model {ours}: train the teacher on the same "
            "data and tokenizer."
        )


class RehearsalMemoryTrainer(Trainer):
    loss_is_scaled_for_ga = False  # our models return a plain per-batch mean

    def __init__(self, *args, fragment_teacher=None, **kwargs):
        super().__init__(*args, **kwargs)
        self._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
        if fragment_teacher is not None:
            check_fragment_teacher(self.model.config, fragment_teacher.config)
            fragment_teacher = fragment_teacher.eval().requires_grad_(False).to(self.args.device)
        self.fragment_teacher = fragment_teacher

    def train(self, *args, **kwargs):
        try:
            return super().train(*args, **kwargs)
        finally:  # a run that ends inside its linear start leaves a model that reads as it will be used
            set_linear_reading(self.model, False)

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
        if self.fragment_teacher is not None and model.training:  # rehearsal (training only) draws by its weights
            inputs = {**inputs, "fragment_weights": self.fragment_teacher.sentence_importance(**inputs)}
        linear_start = getattr(self.args, "linear_start_steps", 0)
        set_linear_reading(model, model.training and self.state.global_step < linear_start)
        outputs = model(**inputs)
        # plain TrainingArguments train with the default weights
        weights = {name: getattr(self.args, WEIGHT_ARGUMENTS[name], default) for name, default in LOSS_WEIGHTS.items()}
        loss = combine_losses(outputs, weights, rehearsal_scale(self.args, self.state.global_step))
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

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        super()._save(output_dir, state_dict)
        # The folder people publish holds no pickle: the arguments go to JSON instead of training_args.bin, whether
        # `save_model` or `push_to_hub` saved it. Checkpoint folders keep Trainer's files (optimizer.pt,
        # rng_state.pth, ...), which it loads with weights_only=True.
        output_dir = Path(output_dir if output_dir is not None else self.args.output_dir)
        if self.args.should_save and not self._is_checkpoint_folder(output_dir):
            self._arguments_as_json(output_dir)

    def _is_checkpoint_folder(self, folder: Path) -> bool:
        return (
            bool(CHECKPOINT_NAME.fullmatch(folder.name)) and folder.resolve() != Path(self.args.output_dir).resolve()
        )

    def _arguments_as_json(self, folder: Path) -> None:
        (folder / TRAINING_ARGS_NAME).unlink(missing_ok=True)
        with atomic_path(folder / "training_args.json") as tmp:
            tmp.write_text(self.args.to_json_string(), encoding="utf-8")

    # ---- Publishing: our card is kept, and uploads of the output folder leave out checkpoints and pickles ----

    def create_model_card(self, *args, **kwargs) -> None:
        """Keep the card already in the output folder (the one `run_qa.py` / `run_ctr.py` write, or the user's own);
        write Trainer's draft only where there is none, or where the one there is an earlier draft.

        `Trainer.push_to_hub` calls this before it uploads, so `--push_to_hub` publishes our card."""
        if not self.is_world_process_zero():
            return
        path = Path(self.args.output_dir) / "README.md"
        if path.is_file() and not _is_trainer_draft(path):
            logger.info("Keeping the model card %s.", path)
            return
        super().create_model_card(*args, **kwargs)

    def push_to_hub(self, *args, **kwargs):
        """`Trainer.push_to_hub`, uploading what `rm_hf.model_card.upload_model_folder` uploads: the card in the
        output folder is kept, and checkpoints, pickles and temporaries stay local. Call it after the card is
        written (the example scripts do, with `--push_to_hub`)."""
        with self._publishable_uploads():
            return super().push_to_hub(*args, **kwargs)

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        """Trainer's push at each save (`hub_strategy`), with the output folder uploaded as by `push_to_hub`.
        Trainer pickles the arguments into the output folder first; they go back to JSON once the upload has
        started (it leaves `*.bin` out). A checkpoint pushed on its own (`hub_strategy="checkpoint"` or
        `"all_checkpoints"`, to resume from the Hub) is uploaded whole, as the user asked."""
        with self._publishable_uploads():
            super()._push_from_checkpoint(checkpoint_folder)
        if self.args.should_save:
            self._arguments_as_json(Path(self.args.output_dir))

    @contextlib.contextmanager
    def _publishable_uploads(self) -> Iterator[None]:
        """While open, Trainer's uploads of the output folder (it makes them through `transformers.trainer.hf_api`)
        also leave out `publish_ignore_patterns()`. Uploads of other folders are unchanged."""
        real = transformers_trainer.hf_api
        output_dir = Path(self.args.output_dir).resolve()

        class PublishingApi:
            def __getattr__(self, name):
                return getattr(real(), name)

            def upload_folder(self, *, folder_path, ignore_patterns=None, **kwargs):
                if Path(folder_path).resolve() == output_dir:
                    if isinstance(ignore_patterns, str):
                        ignore_patterns = [ignore_patterns]
                    ignore_patterns = [*(ignore_patterns or []), *publish_ignore_patterns()]
                return real().upload_folder(folder_path=folder_path, ignore_patterns=ignore_patterns, **kwargs)

        transformers_trainer.hf_api = PublishingApi
        try:
            yield
        finally:
            transformers_trainer.hf_api = real

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


def _is_trainer_draft(card: Path) -> bool:
    """Whether `card` is the draft `Trainer.create_model_card` writes (it tags it `generated_from_trainer`). A card
    whose metadata does not parse is someone's own, not a draft."""
    try:
        return "generated_from_trainer" in (ModelCard.load(card).data.tags or [])
    except (ValueError, yaml.YAMLError):
        return False


def checkpoint_to_resume(args: TrainingArguments, run: dict | None = None) -> str | None:
    """The checkpoint `args.resume_from_checkpoint` names, with `last` resolved to the newest `checkpoint-N` in
    `args.output_dir` that can resume this run exactly (None, a fresh start, when there is none).

    A crash while Trainer saves a checkpoint (or while it deletes an old one) leaves a folder with files missing
    or cut short; `last` passes over such a folder with a warning that says what is wrong with it. Given `run`
    (`rm_hf.run_record.run_arguments`, recorded in each checkpoint by `RunRecorder`), `last` also passes over the
    checkpoints of another run (other model, data or training arguments) and those that record none.
    """
    if args.resume_from_checkpoint != "last":
        # the caller chose this one: say what is wrong with it before Trainer fails on it, or quietly resumes less
        checkpoint = Path(args.resume_from_checkpoint or "")
        if args.resume_from_checkpoint and (
            problem := checkpoint_problem(checkpoint, args) or run_problem(checkpoint, run)
        ):
            logger.warning("Resuming from %s although %s.", args.resume_from_checkpoint, problem)
        return args.resume_from_checkpoint
    output_dir = Path(args.output_dir)
    folders = [path for path in output_dir.glob("*") if path.is_dir()]
    steps = {int(m[1]): path for path in folders if (m := CHECKPOINT_NAME.fullmatch(path.name))}
    for step in sorted(steps, reverse=True):
        if problem := checkpoint_problem(steps[step], args) or run_problem(steps[step], run):
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
