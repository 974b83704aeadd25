"""RehearsalMemoryTrainer: a `transformers.Trainer` that adds the rehearsal terms to the task loss.

total = task + ramp * (w_rec * recollection + w_fam * familiarity + w_sampler * sampler)

Each term is logged on its own (`task_loss`, `recollection_loss`, ...), averaged over the logging window
and over processes. The model returns a per-micro-batch mean, so the Trainer must divide by the
gradient-accumulation steps itself (`loss_is_scaled_for_ga = False`; see hf-conventions §3.1). Runs on
many GPUs unchanged through `accelerate launch` or `torchrun`.
"""

from collections import defaultdict
from dataclasses import dataclass, field

from transformers import Trainer, TrainingArguments

REHEARSAL_TERMS = ("recollection_loss", "familiarity_loss", "sampler_loss")


@dataclass
class RehearsalTrainingArguments(TrainingArguments):
    recollection_weight: float = field(default=1.0, metadata={"help": "Weight of the recollection loss."})
    familiarity_weight: float = field(default=0.5, metadata={"help": "Weight of the familiarity loss."})
    sampler_weight: float = field(default=1.0, metadata={"help": "Weight of the history sampler's loss."})
    rehearsal_warmup_steps: int = field(
        default=0, metadata={"help": "Ramp the rehearsal weights linearly from 0 over this many optimizer steps."}
    )

    def __post_init__(self):
        super().__post_init__()
        for name in ("recollection_weight", "familiarity_weight", "sampler_weight", "rehearsal_warmup_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"RehearsalTrainingArguments.{name} must be >= 0, got {getattr(self, name)}.")


class RehearsalMemoryTrainer(Trainer):
    loss_is_scaled_for_ga = False  # our models return a plain per-batch mean

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}

    def rehearsal_weights(self) -> dict[str, float]:
        args = self.args
        warmup = getattr(args, "rehearsal_warmup_steps", 0)
        ramp = min(1.0, self.state.global_step / warmup) if warmup else 1.0
        return {
            "recollection_loss": ramp * getattr(args, "recollection_weight", 1.0),
            "familiarity_loss": ramp * getattr(args, "familiarity_weight", 0.5),
            "sampler_loss": ramp * getattr(args, "sampler_weight", 1.0),
        }

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        outputs = model(**inputs)
        loss = outputs["loss"]
        mode = "train" if model.training else "eval"
        self.record(mode, "task_loss", loss)
        for name, weight in self.rehearsal_weights().items():
            term = outputs.get(name)
            if term is not None:
                # added even at weight 0, so every parameter keeps a gradient (DDP without unused parameters)
                loss = loss + weight * term
                self.record(mode, name, term)
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
