"""What `examples/run_qa.py` and `examples/run_ctr.py` share around their own work: the command line (the module
docstring as `--help`'s description, a required `--output_dir`, which flags were given), which stages run when
neither `--do_train` nor `--do_eval` is given, a script's own defaults for Trainer flags, flags that a checkpoint or a pretrained encoder already fixes, a head
around a pretrained encoder, a warning when a launcher started one process where several were asked for, and the
training metrics of a retried run that had nothing left to train."""

import argparse
import dataclasses
import json
import logging
import os
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from transformers import AutoModel, HfArgumentParser, PreTrainedModel, TrainingArguments
from transformers.trainer import TRAINER_STATE_NAME

logger = logging.getLogger(__name__)

TRAIN_RESULTS_NAME = "train_results.json"


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults in each flag's help (as HfArgumentParser gives them), and the description laid out as written."""


def script_default(arguments: type, name: str, default):
    """A field of the `arguments` dataclass (e.g. a Trainer flag) with this script's `default`, keeping its help.
    `parse_script_args` gives such a subclass of the package's `RehearsalTrainingArguments` back as that class."""
    return dataclasses.field(default=default, metadata=arguments.__dataclass_fields__[name].metadata)


def parse_script_args(dataclass_types: Iterable[type], doc: str, argv: list[str] | None) -> tuple[tuple, set[str]]:
    """Parse `argv` (default: `sys.argv[1:]`) into the dataclasses, with `doc` as `--help`'s description and
    `--output_dir` required (TrainingArguments would default to `./trainer_output`). Returns the dataclasses and the
    names of the arguments given on the command line (to tell `--hidden_size 64` from the default 64)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = HfArgumentParser(
        tuple(dataclass_types),
        usage="%(prog)s --output_dir DIR [--do_train] [--do_eval] [--model_name_or_path CHECKPOINT] [flags]",
        description=doc.strip(),
        formatter_class=HelpFormatter,
    )
    for action in parser._actions:
        if action.dest == "output_dir":
            action.required, action.default = True, argparse.SUPPRESS
            action.help = "Where the model, metrics and checkpoints are written (required)."
    # the script's own groups (dataclasses with an `_argument_group_name`) first, Trainer's many flags after them
    training = parser._optionals
    training.title = "Training (transformers' TrainingArguments and the rehearsal loss weights)"
    parser._action_groups.remove(training)
    parser._action_groups.append(training)
    parsed = parser.parse_args_into_dataclasses(args=argv, look_for_args_file=False)
    for arguments in parsed:
        # Trainer pickles its arguments into the output (training_args.bin). A script's subclass differs from the
        # library's class only in defaults (`script_default`): as the library's class they load without the
        # script, and pickle even where the script was loaded by path (tests run it in-process), whose own
        # classes pickle cannot find by name.
        if isinstance(arguments, TrainingArguments) and not type(arguments).__module__.startswith("rm_hf"):
            arguments.__class__ = next(c for c in type(arguments).__mro__ if c.__module__.startswith("rm_hf"))
    return tuple(parsed), given_arguments(dataclass_types, argv)


def given_arguments(dataclass_types: Iterable[type], argv: list[str]) -> set[str]:
    """The dataclass fields set on the command line `argv` (abbreviated and `--no_*` forms included)."""
    probe = HfArgumentParser(tuple(dataclass_types))
    for action in probe._actions:
        action.default = argparse.SUPPRESS
        action.required = False
    namespace, _ = probe.parse_known_args(argv)
    return set(vars(namespace)) - {"help"}


def choose_stages(args: TrainingArguments, given: set[str], model_name_or_path: str | None) -> None:
    """With neither `--do_train` nor `--do_eval` given, train and then evaluate (unlike the transformers examples,
    which then do nothing, and exit 0 having done it). `--do_eval` alone evaluates a trained checkpoint, which
    `--model_name_or_path` must name."""
    if not given & {"do_train", "do_eval"}:
        args.do_train = args.do_eval = True  # TrainingArguments may have set do_eval from --eval_strategy
        logger.info("Neither --do_train nor --do_eval given: training, then evaluating.")
    if not args.do_train and not model_name_or_path:
        stage = "--do_eval" if args.do_eval else "--do_train false"
        raise ValueError(
            f"{stage} without --do_train would use an untrained model: name a trained checkpoint with "
            "--model_name_or_path, or add --do_train."
        )
    warn_if_launched_alone(args)


def warn_if_launched_alone(args: TrainingArguments) -> None:
    """`accelerate launch --cpu --num_processes N` runs one process: on CPU, accelerate starts N only through
    mpirun (an MPI installation and `--mpirun_hostfile`, or `accelerate config` multi-CPU with mpirun). It still
    sets MASTER_ADDR for N > 1, which this process can see."""
    launched_alone = (
        os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
        and "MASTER_ADDR" in os.environ
        and args.world_size == 1
    )
    if launched_alone:
        logger.warning(
            "`accelerate launch --cpu` started this script as ONE process (it starts several on CPU only through "
            "mpirun). For N CPU processes use `torchrun --nproc_per_node N` or `accelerate launch --multi_gpu "
            "--num_processes N`, with --use_cpu; see the README."
        )


def refuse_fixed_flags(given: set[str], flags: Mapping[str, Any], fixed: Mapping[str, Any], source: str) -> None:
    """ValueError for each flag given on the command line whose value differs from the one `source` (a checkpoint,
    a pretrained encoder) fixes: `fixed` maps flag names to those values, `flags` to the ones given."""
    conflicts = [
        f"--{name} {flags[name]} ({source} has {value})"
        for name, value in fixed.items()
        if name in given and flags[name] != value
    ]
    if conflicts:
        raise ValueError(
            f"{'; '.join(conflicts)}: {source} fixes {'this' if len(conflicts) == 1 else 'these'}. Drop the "
            f"flag{'' if len(conflicts) == 1 else 's'}, or train a new model without it."
        )


def load_pretrained_encoder(name_or_path: str) -> PreTrainedModel:
    """A pretrained Hugging Face encoder (local folder or Hub id), to build a head around with
    `with_encoder_weights`."""
    return AutoModel.from_pretrained(name_or_path)


def with_encoder_weights(model: PreTrainedModel, encoder: PreTrainedModel) -> PreTrainedModel:
    """`model` (a head built from a config whose `encoder_config` is `encoder.config`) with the weights of
    `encoder` in its backbone, `model.rehearsal_memory.encoder`. The pooler is left out, as the model drops it."""
    backbone = model.rehearsal_memory.encoder
    missing, unexpected = backbone.load_state_dict(encoder.state_dict(), strict=False)
    unexpected = [name for name in unexpected if not name.startswith("pooler.")]
    if missing or unexpected:
        raise ValueError(
            f"The pretrained encoder does not fit the model's backbone: missing {missing}, unexpected {unexpected}."
        )
    return model


def freeze_encoder(model: PreTrainedModel, model_name: str) -> None:
    """`--freeze_encoder`: the backbone `model.rehearsal_memory.encoder` (e.g. a pretrained one) keeps its weights
    while the rest trains. Its parameters take no gradient, so the optimizer leaves them out, and with token inputs
    autograd keeps none of its activations: a step costs the backbone's forward pass only."""
    backbone = getattr(getattr(model, "rehearsal_memory", None), "encoder", None)
    if backbone is None:
        raise ValueError(f"--freeze_encoder: --model {model_name} has no encoder (only rm has).")
    backbone.requires_grad_(False)


def train_metrics(args: TrainingArguments, metrics: dict[str, float], checkpoint: str | None, steps: int) -> dict:
    """The training metrics to report. A retried finished run (resumed from a checkpoint already at its last step:
    `steps`, the step count after training, is the checkpoint's) trained nothing, and Trainer then reports a loss of
    0 and a runtime near 0 s. Such a run keeps the metrics the finished run saved in `train_results.json`; where
    there are none (it died after its last checkpoint), the loss and speed figures are left out rather than
    reported wrong."""
    if checkpoint is None:
        return metrics
    try:
        resumed_at = json.loads((Path(checkpoint) / TRAINER_STATE_NAME).read_text(encoding="utf-8"))["global_step"]
    except (OSError, ValueError, KeyError, TypeError):
        return metrics
    if resumed_at != steps:
        return metrics
    saved = Path(args.output_dir) / TRAIN_RESULTS_NAME
    try:
        finished = json.loads(saved.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        finished = None
    if not isinstance(finished, dict):
        logger.warning("Nothing left to train, and %s holds no metrics of the finished run to keep.", saved)
        return {name: value for name, value in metrics.items() if not name.startswith(("train_", "total_flos"))}
    logger.info("Nothing left to train: keeping the finished run's training metrics (%s).", saved)
    return finished
