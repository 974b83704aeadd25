"""Model cards for trained checkpoints, and publishing a trained model's folder without what should stay local.

`write_qa_model_card` (`examples/run_qa.py`) and `write_click_model_card` (`examples/run_ctr.py`) fill one template
each, built from shared parts (metadata, install line, training, results, limits, data, citations), with the
results of the run that made the checkpoint. The metadata lists a Hub dataset only where the data is that dataset
(bAbI: `facebook/babi_qa`), gives each question type or task its own model-index entry, and sets no
`pipeline_tag`: no Hub widget can run these models. The usage snippets need only `transformers` and `torch`: the
checkpoint ships its modeling and pipeline code (`pipeline("rehearsal-memory-qa" | "rehearsal-memory-click", ...)`).

A trained folder also holds what should not be published: Trainer's `checkpoint-*` folders (with the pickles
`optimizer.pt`, `rng_state.pth`, `training_args.bin`) and temporary files. `upload_model_folder` uploads the rest;
`RehearsalMemoryTrainer.push_to_hub` uploads the same files and keeps the card.
"""

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData

from .file_utils import atomic_path

BABI_HUB_ID = "facebook/babi_qa"
TRANSFORMERS_REQUIREMENT = "transformers>=5.23,<6"  # the shipped code uses transformers 5 APIs

# What `upload_model_folder` and `RehearsalMemoryTrainer.push_to_hub` leave out of an upload: Trainer's checkpoint
# folders (they resume training, they are not the model), anything pickled, hidden files (temporaries of
# `atomic_path`, editor files) and `_`-prefixed scratch, as Trainer's own push leaves out.
PUBLISH_IGNORE_PATTERNS = (
    "checkpoint-*",
    "*/checkpoint-*",
    "*.bin",
    "*.pt",
    "*.pth",
    "*.pkl",
    "*.pickle",
    "*.ckpt",
    ".*",
    "*/.*",
    "_*",
)


def publish_ignore_patterns() -> list[str]:
    """The `ignore_patterns` for `HfApi().upload_folder` that leave checkpoints, pickles and temporaries out of an
    upload of a trained folder (a new list: `upload_folder` appends to the one it is given)."""
    return list(PUBLISH_IGNORE_PATTERNS)


def upload_model_folder(folder: str | os.PathLike, repo_id: str, api: HfApi | None = None, **kwargs):
    """Upload a folder written by `run_qa.py` / `run_ctr.py` to the Hub repo `repo_id` (created if missing): the
    model, its code, tokenizer or vocabulary, results and card, without checkpoints, pickles or temporaries.

    `kwargs` go to `HfApi.upload_folder` (`commit_message`, `revision`, `token`, more `ignore_patterns`, ...).
    Returns what `upload_folder` returns.
    """
    api = api or HfApi()
    folder = Path(folder)
    if not (folder / "README.md").is_file():
        raise FileNotFoundError(f"{folder} has no model card (README.md): write one before publishing.")
    ignore = [*publish_ignore_patterns(), *(kwargs.pop("ignore_patterns", None) or [])]
    api.create_repo(repo_id, exist_ok=True, token=kwargs.get("token"), private=kwargs.pop("private", None))
    return api.upload_folder(repo_id=repo_id, folder_path=str(folder), ignore_patterns=ignore, **kwargs)


@dataclass(frozen=True)
class CardDataset:
    """What a card says about the data a model was evaluated on.

    `type` is the model-index `dataset.type`: the Hub id where the data is a Hub dataset, otherwise a plain name
    without a namespace. `hub_id` is set only where the data really is that Hub dataset; it then goes under
    `datasets:`. `configs` maps a question type to its config of the Hub dataset (bAbI: "qa1" -> "en-10k-qa1").
    """

    name: str
    type: str
    hub_id: str | None = None
    split: str = "test"
    configs: Mapping[str, str] = field(default_factory=dict)


def babi_dataset(subset: str, tasks: str) -> CardDataset:
    """bAbI v1.2 as Facebook released it (`--babi_dir`): the Hub's `facebook/babi_qa`, whose configs are
    `{subset}-qa{task}`."""
    task_ids = [int(task) for task in str(tasks).split(",")]
    name = f"bAbI v1.2 {subset}, task{'s' if len(task_ids) > 1 else ''} {','.join(map(str, task_ids))}"
    configs = {f"qa{task}": f"{subset}-qa{task}" for task in task_ids}
    return CardDataset(name=name, type=BABI_HUB_ID, hub_id=BABI_HUB_ID, configs=configs)


def local_dataset(name: str, type: str) -> CardDataset:
    """Data that is no Hub dataset (generated stories, synthetic click histories, a user's CSV): no `datasets:`
    entry; `type` names it in the model-index."""
    return CardDataset(name=name, type=type)


# ---------------------------------------------------------------------------------------------------------
# Templates: shared parts, and one body per task

HEADER = """---
{{ card_data }}
---

# {{ model_name }}

{{ summary }}
"""

INSTALL = """
## How to use

The checkpoint ships its modeling and pipeline code, so `transformers` and `torch` are all it needs; loading it runs
that code (`trust_remote_code=True`), so read the `.py` files in the repository first. `rm_hf`, the package that
trained it, is not on PyPI and is not needed.

```bash
pip install "{{ transformers_requirement }}" torch
```
"""

TRAINING_AND_RESULTS = """
## Training

{{ training }}

## Results

{{ results_intro }}

{{ results_table }}
"""

DATA_AND_CITATION = """
## Data and licences

{{ data }}

## Citation

```bibtex
@inproceedings{zhang2021rehearsal,
  title = {Learning to Rehearse in Long Sequence Memorization},
  author = {Zhang, Zhu and Zhou, Chang and Ma, Jianxin and Lin, Zhijie and Zhou, Jingren and Yang, Hongxia and Zhao, Zhou},
  booktitle = {International Conference on Machine Learning (ICML)},
  year = {2021}
}
{%- for entry in extra_citations %}
{{ entry }}
{%- endfor %}
```
"""

QA_ABOUT = """
## What it is

- Encoder backbone: {{ encoder }}; memory (`memory_type="{{ memory_type }}"`): {{ memory_size }}, written every
  {{ segment_length }} {{ items }} by {{ memory_write }}; {{ hops }} reasoning hops read the memory for each question.
{% if sentence_items %}- Each story sentence is one memory item: the sum of its word embeddings weighted by a learned vector per
  position (`story_items="sentences"`); the question is encoded the same way.
{% endif %}- Answers are classified over {{ num_labels }} answer strings (`config.id2label`); the tokenizer is the one saved
  with the model (word-level, unless the run started from a pretrained encoder and its tokenizer).
- Self-supervised rehearsal during training: {{ rehearsal }}.
"""

QA_USAGE = """
```python
from transformers import pipeline

model_id = "{{ model_id }}"
qa = pipeline("rehearsal-memory-qa", model=model_id, trust_remote_code=True)

story = [
{%- for sentence in example.story %}
    {{ sentence | tojson }},
{%- endfor %}
]
print(qa(story, {{ example.question | tojson }}))  # {"answer": ..., "score": ...}; the story says {{ example.answer | tojson }}
```
{% if model_id_is_folder %}
`{{ model_id }}` is the folder this card was written into: use its path, or the Hub id it is uploaded under.
{% endif %}
The pipeline writes the story into memory once and answers every question from the memory alone: pass a list of
questions for several, `top_k=k` for the k likeliest answers, and `return_memory=True` / `memory=` to keep a
story's memory and ask later without the story (or to stream a long story in pieces). A story may also be one
string, split into sentences at ".", "!" and "?". Underneath are `model.write(memory, input_ids)` and
`model.answer(memory, question_input_ids)`; see `pipeline_rehearsal_memory.py` in the repository.
"""

QA_LIMITS = """
## Intended use and limits

A research model for memory over long inputs. It answers only questions of the kinds it was trained on, in the
vocabulary of its tokenizer; unknown words become `[UNK]` and answers outside `id2label` cannot be
produced. Its training and evaluation data are synthetic: accuracy on them says nothing about natural text.
"""

CLICK_ABOUT = """
## What it is

{{ what_it_is }}
"""

CLICK_USAGE = """
```python
import json

from transformers import pipeline
from transformers.utils import cached_file

model_id = "{{ model_id }}"
clicks = pipeline("rehearsal-memory-click", model=model_id, trust_remote_code=True)
with open(cached_file(model_id, "behavior_vocab.json")) as f:
    vocab = json.load(f)  # raw item, category and behaviour ids -> the model's ids

# one user's behaviours, oldest first: (item, category, behaviour)
history = [
{%- for event in example.history %}
    {{ event | tojson }},
{%- endfor %}
]
candidates = {{ example.candidates | tojson }}  # raw item ids to score

scores = clicks(
    [vocab["items"][item] for item, _, _ in history],
    [vocab["items"][item] for item in candidates],
    history_categories=[vocab["categories"][category] for _, category, _ in history],
    history_behaviors=[vocab["behaviors"][behavior] for _, _, behavior in history],
    candidate_categories=[vocab["item_categories"][vocab["items"][item]] for item in candidates],
)
print(scores)  # [{"item": the model's item id, "score": click probability}, ...] in the order given
```
{% if model_id_is_folder %}
`{{ model_id }}` is the folder this card was written into: use its path, or the Hub id it is uploaded under.
{% endif %}
The pipeline writes the history into memory once and scores every candidate from it; with `return_memory=True` it
returns the user's memory too, and `memory=` continues from it: new behaviours are written on top, and candidates
can be scored without any history, so a request costs O(memory), not O(history). Underneath are `model.write` and
`model.score`; see `pipeline_rehearsal_memory.py` in the repository.
"""

BASELINE_USAGE = """
## How to use

This baseline's modeling code (`rm_hf.ctr_baselines.{{ model_class }}`) is not shipped with the checkpoint
(only its configuration's is), so loading it needs the `rm_hf` source this model was trained with:
`{{ model_class }}.from_pretrained(folder)`. It is published as a point of comparison for the Rehearsal Memory
click models.
"""

CLICK_LIMITS = """
## Intended use and limits

A research model for click prediction from long behaviour histories. It scores only items, categories and
behaviour types in its vocabulary (`behavior_vocab.json`); it was measured on the data named below only, and says
nothing about other users, catalogues or time periods.
"""

QA_TEMPLATE = HEADER + QA_ABOUT + INSTALL + QA_USAGE + TRAINING_AND_RESULTS + QA_LIMITS + DATA_AND_CITATION
# a Rehearsal Memory click model ships its code, a baseline does not
CLICK_TEMPLATE = (
    HEADER + CLICK_ABOUT + "{% if snippet %}" + INSTALL + CLICK_USAGE + "{% else %}" + BASELINE_USAGE + "{% endif %}"
    + TRAINING_AND_RESULTS + CLICK_LIMITS + DATA_AND_CITATION
)  # fmt: skip

BABI_CITATION = r"""@article{weston2015babi,
  title = {Towards AI-Complete Question Answering: A Set of Prerequisite Toy Tasks},
  author = {Weston, Jason and Bordes, Antoine and Chopra, Sumit and Rush, Alexander M. and van Merri{\"e}nboer, Bart and Joulin, Armand and Mikolov, Tomas},
  journal = {arXiv preprint arXiv:1502.05698},
  year = {2015}
}"""

BABI_LICENCE = "bAbI (Weston et al., 2015, arXiv:1502.05698) is released by Facebook under CC BY 3.0."


NO_EVALUATION = "No evaluation was run (`--do_eval`)."

# how the card names each memory type: its name, its size and how a segment is written
MEMORY_DESCRIPTIONS = {
    "slots": lambda config: {
        "memory_name": "a Rehearsal Memory slot memory",
        "memory_size": f"{config.num_memory_slots} memory slots",
        "memory_write": "slot-to-item attention and a shared GRU cell",
    },
    "expire_span": lambda config: {
        "memory_name": "an Expire-Span memory (Sukhbaatar et al., 2021)",
        "memory_size": f"at most {config.memory_capacity} item states",
        "memory_write": f"keeping each item for a learned span of up to {config.expire_span_max_span} items",
    },
    "lamemo": lambda config: {
        "memory_name": "a look-ahead memory (LaMemo, Ji et al., 2022)",
        "memory_size": f"the last {config.memory_capacity} item states",
        "memory_write": "refreshing the kept states with look-ahead attention to the new items",
    },
    "key_value": lambda config: {
        "memory_name": "a lifelong key-value memory (Kaiser et al., 2017)",
        "memory_size": f"{config.memory_capacity} key-value entries",
        "memory_write": "the nearest-key update rule (merge on a value match, else replace the oldest entry)",
    },
}


def _model_names(model_id: str | None, path: Path) -> dict[str, Any]:
    """The id the usage snippet loads (the Hub id, else the card's folder) and the model's name."""
    folder_name = path.resolve().parent.name
    model_id = model_id or folder_name
    return {
        "model_id": model_id,
        "model_name": model_id.rstrip("/").split("/")[-1],
        "model_id_is_folder": "/" not in model_id,
    }


def _table(header: list[str], rows: list[list[str]]) -> str:
    align = ["---"] + ["---:"] * (len(header) - 1)
    return "\n".join("| " + " | ".join(cells) + " |" for cells in [header, align, *rows])


def _memory_facts(config) -> dict[str, Any]:
    encoder = config.encoder_config
    return {
        "memory_type": config.memory_type,
        "memory_dim": config.memory_dim,
        **MEMORY_DESCRIPTIONS[config.memory_type](config),
        "segment_length": config.segment_length,
        "hops": config.num_reasoning_hops,
        "encoder": f"{encoder.model_type} ({encoder.num_hidden_layers} layers, hidden size {encoder.hidden_size})",
        "rehearsal": f"on (sampler: {config.sampler_mode})" if config.use_rehearsal else "off",
    }


def _save(path: str | os.PathLike, card_data: ModelCardData, template: str, **values) -> ModelCard:
    card = ModelCard.from_template(card_data, template_str=template, transformers_requirement=TRANSFORMERS_REQUIREMENT,
                                   **values)  # fmt: skip
    with atomic_path(path) as tmp:  # a crash never leaves half a card
        card.save(str(tmp))
    return card


def _as_dataset(dataset: CardDataset | str) -> CardDataset:
    return dataset if isinstance(dataset, CardDataset) else local_dataset(dataset, "generated-stories")


def question_type_label(name: str) -> str:
    """How a card names a question type: bAbI's "qa3" as "task 3 (qa3)", "all" as "all questions"."""
    if name == "all":
        return "all questions"
    if name.startswith("qa") and name[2:].isdigit():
        return f"task {name[2:]} ({name})"
    return name


def write_qa_model_card(
    path: str | os.PathLike,
    model,
    results: dict[str, dict[str, float]] | None,
    dataset: CardDataset | str,
    training: str,
    data: str,
    model_id: str | None = None,
    example: Mapping[str, Any] | None = None,
) -> ModelCard:
    """Write a card for a trained `RehearsalMemoryForQuestionAnswering` to `path` (the checkpoint's README.md).

    `results` maps a question type (and "all") to `{"accuracy": float, "count": int}`; each question type gets its
    own model-index entry (and "all" one more where there are several). None: no evaluation was run. `dataset` describes the evaluation data
    (`babi_dataset`, `local_dataset`; a plain string is generated data of that name). `training` and `data` are the
    card's Training and Data paragraphs. `model_id`: the Hub id the usage snippet loads (default: the name of the
    folder of `path`). `example`: a row with `story` (sentences), `question` and `answer` for the snippet.
    """
    path = Path(path)
    config = model.config
    dataset = _as_dataset(dataset)
    names = _model_names(model_id, path)
    example = example or {"story": ["Mary went to the kitchen."], "question": "Where is Mary?", "answer": "kitchen"}
    results = results or {}
    types = [name for name in results if name != "all"]
    reported = types if len(types) == 1 or "all" not in results else ["all", *types]
    eval_results = [
        EvalResult(
            task_type="question-answering",
            task_name="Question answering",
            dataset_type=dataset.type,
            dataset_name=f"{dataset.name}: {question_type_label(name)}",
            # the config keeps the entries apart: the Hub groups results by task, dataset type, config and split
            dataset_config=dataset.configs.get(name, name) if name != "all" else None,
            dataset_split=dataset.split,
            metric_type="accuracy",
            metric_name="Accuracy",
            metric_value=round(results[name]["accuracy"], 4),
        )
        for name in reported
    ]
    card_data = ModelCardData(
        model_name=names["model_name"],
        library_name="transformers",
        license="apache-2.0",
        language="en",
        datasets=[dataset.hub_id] if dataset.hub_id else None,
        metrics=["accuracy"],
        tags=["rehearsal-memory", "memory", "question-answering", "custom_code"]
        + (["babi"] if dataset.hub_id == BABI_HUB_ID else []),
        eval_results=eval_results or None,
    )
    rows = [
        [question_type_label(name), str(row["count"]), f"{row['accuracy']:.4f}", f"{100 * (1 - row['accuracy']):.2f}%"]
        for name, row in results.items()
    ]
    babi = dataset.hub_id == BABI_HUB_ID
    return _save(
        path,
        card_data,
        QA_TEMPLATE,
        **names,
        summary=(
            f"A question-answering model with {MEMORY_DESCRIPTIONS[config.memory_type](config)['memory_name']}, "
            "trained with the `rm_hf` package (Rehearsal Memory, Zhang et al., ICML 2021). It reads a story once, "
            "segment by segment, into a fixed-size memory, forgets the story, and answers questions from the "
            f"memory alone. Trained and evaluated on {dataset.name}."
        ),
        **_memory_facts(config),
        items=config.story_items,
        sentence_items=config.story_items == "sentences",
        num_labels=config.num_labels,
        example=example,
        training=training,
        results_intro=f"Measured by the run that produced this checkpoint, on {dataset.name} ({dataset.split} split):"
        if rows
        else "",
        results_table=_table(["question type", "examples", "accuracy", "error"], rows) if rows else NO_EVALUATION,
        data=f"{data} {BABI_LICENCE}" if babi else data,
        extra_citations=[BABI_CITATION] if babi else [],
    )


# How click metrics are named, in the order a card reports them: (metric key without "eval_", Hub metric type, name)
CLICK_METRICS = (
    ("auc", "roc_auc", "AUC"),
    ("logloss", "log_loss", "log loss"),
    ("log_loss", "log_loss", "log loss"),
    ("accuracy", "accuracy", "accuracy"),
)


def click_results(metrics: Mapping[str, float]) -> dict[str, float]:
    """The click metrics a card reports, by display name, from `trainer.evaluate()`'s `eval_*` keys (those present
    and finite: AUC is NaN on an evaluation set of one class)."""
    found = {}
    for key, _, name in CLICK_METRICS:
        value = metrics.get(f"eval_{key}")
        if value is not None and value == value and name not in found:
            found[name] = float(value)
    return found


def write_click_model_card(
    path: str | os.PathLike,
    model,
    metrics: Mapping[str, float],
    dataset: CardDataset,
    training: str,
    data: str,
    model_id: str | None = None,
    example: Mapping[str, Any] | None = None,
    eval_samples: int | None = None,
) -> ModelCard:
    """Write a card for a trained click model (`RehearsalMemoryForClickPrediction` or a baseline of
    `rm_hf.ctr_baselines`) to `path`.

    `metrics`: the evaluation metrics (`eval_auc`, `eval_logloss`, `eval_accuracy`, whichever exist). `dataset`,
    `training`, `data`, `model_id`: as for `write_qa_model_card`. `example`: `history` (a list of raw
    `[item, category, behaviour]`) and `candidates` (raw item ids) for the usage snippet of a Rehearsal Memory model.
    """
    path = Path(path)
    config = model.config
    names = _model_names(model_id, path)
    model_class = type(model).__name__
    memory_model = model_class == "RehearsalMemoryForClickPrediction"
    types = {name: hub_type for _, hub_type, name in CLICK_METRICS}
    reported = click_results(metrics)
    eval_results = [
        EvalResult(
            task_type="tabular-classification",
            task_name="Click-through rate prediction",
            dataset_type=dataset.type,
            dataset_name=dataset.name,
            dataset_split=dataset.split,
            metric_type=types[name],
            metric_name=name,
            metric_value=round(value, 4),
        )
        for name, value in reported.items()
    ]
    card_data = ModelCardData(
        model_name=names["model_name"],
        library_name="transformers",
        license="apache-2.0",
        datasets=[dataset.hub_id] if dataset.hub_id else None,
        metrics=sorted({types[name] for name in reported}),
        tags=["rehearsal-memory", "memory", "click-through-rate", "recommendation", "custom_code"],
        eval_results=eval_results or None,
    )
    if memory_model:
        facts = _memory_facts(config)
        what_it_is = (
            f"- A user's behaviours (item, category and behaviour-type embeddings) are written into "
            f'{facts["memory_name"]} (`memory_type="{facts["memory_type"]}"`): {facts["memory_size"]} of width '
            f"{facts['memory_dim']}, written every {facts['segment_length']} behaviours by {facts['memory_write']}; "
            f"encoder: {facts['encoder']}.\n"
            "- A candidate item reads the memory by attention, and an MLP over [target, read, target * read] gives "
            "its click logit: a request costs O(memory), not O(history), and a user's memory can be kept and "
            "updated as behaviours arrive.\n"
            f"- Self-supervised rehearsal during training: {facts['rehearsal']}."
        )
        summary = (
            f"A click-through-rate model with {facts['memory_name']}, trained with the `rm_hf` package (Rehearsal "
            f"Memory, Zhang et al., ICML 2021): it predicts whether a user clicks an item from a memory of the user's "
            f"long behaviour history. Trained and evaluated on {dataset.name}."
        )
    else:
        what_it_is = (
            f"- `{model_class}`, a baseline that reads the raw history at request time (O(history) per request), "
            "with the behaviour featurisation and [target, read, target * read] scorer of the Rehearsal Memory "
            "click model, for comparison with it."
        )
        summary = (
            f"A click-through-rate baseline (`{model_class}`) trained on {dataset.name} with the `rm_hf` package."
        )
    rows = [[name, f"{value:.4f}"] for name, value in reported.items()]
    samples = f" ({eval_samples} examples)" if eval_samples is not None else ""
    return _save(
        path,
        card_data,
        CLICK_TEMPLATE,
        **names,
        summary=summary,
        what_it_is=what_it_is,
        snippet=memory_model and example is not None,
        model_class=model_class,
        example=example or {},
        training=training,
        results_intro=f"Measured by the run that produced this checkpoint, on {dataset.name}, "
        f"{dataset.split} split{samples}:"
        if rows
        else "",
        results_table=_table(["metric", "value"], rows) if rows else NO_EVALUATION,
        data=data,
        extra_citations=[],
    )
