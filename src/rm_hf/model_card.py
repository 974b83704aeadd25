"""Model cards for trained checkpoints: our own template, filled with the results of the run that made them.

`push_to_hub` overwrites README.md with a generic card, so publish the folder with
`HfApi().upload_folder(...)` after `run_qa.py` has written this card into it.
"""

from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .file_utils import atomic_path

TEMPLATE = """---
{{ card_data }}
---

# {{ model_name }}

A question-answering model with {{ memory_name }} built with the `rm_hf` package (Rehearsal Memory, Zhang et
al., ICML 2021). It reads a story once, segment by segment, into {{ memory_size }} of width {{ memory_dim }},
forgets the story, and answers questions from the memory alone.

## What it is

- Encoder backbone: {{ encoder }}; memory (`memory_type="{{ memory_type }}"`): {{ memory_size }}, written every
  {{ segment_length }} {{ items }} by {{ memory_write }}; {{ hops }} reasoning hops read the memory for each question.
{% if sentence_items %}- Each story sentence is one memory item: the sum of its word embeddings weighted by a learned vector per
  position (`story_items="sentences"`); the question is encoded the same way.
{% endif %}- Answers are classified over {{ num_labels }} answer strings (`config.id2label`).
- Self-supervised rehearsal during training: {{ rehearsal }}.

## How to use

```python
import rm_hf  # registers the classes; or pass trust_remote_code=True and skip this import
from transformers import AutoModelForQuestionAnswering, AutoTokenizer

model = AutoModelForQuestionAnswering.from_pretrained("{{ model_id }}").eval()
tokenizer = AutoTokenizer.from_pretrained("{{ model_id }}")
```

Encode a story as its sentences' tokens, each followed by `[SEP]`, and a question as `[CLS] question [SEP]`
(`rm_hf.qa_data.encode_qa_example`, batched by `QACollator({% if sentence_items %}sentence_items=True{% endif %})`);
`memory = model.write(None, input_ids, attention_mask)` writes the story into memory (call it again with the memory to
stream a longer story in chunks) and `model.answer(memory, question_input_ids)` answers any number of questions about it.

## Training

{{ training }}

## Results

Measured by the run that produced this checkpoint, on the evaluation split named below:

| question type | examples | accuracy | error |
|---|---:|---:|---:|
{% for row in results %}| {{ row.name }} | {{ row.count }} | {{ "%.4f"|format(row.accuracy) }} | {{ "%.2f"|format(100 * (1 - row.accuracy)) }}% |
{% endfor %}

## Intended use and limits

A research model for memory over long inputs. It answers only questions of the kinds it was trained on,
in the vocabulary of its word-level tokenizer; unknown words become `[UNK]` and answers outside
`id2label` cannot be produced. bAbI and the generated stories are synthetic: accuracy on them says
nothing about natural text.

## Data and licences

{{ data }} bAbI (Weston et al., 2015, arXiv:1502.05698) is released by Facebook under CC BY 3.0.

## Citation

```bibtex
@inproceedings{zhang2021rehearsal,
  title = {Learning to Rehearse in Long Sequence Memorization},
  author = {Zhang, Zhu and Zhou, Chang and Ma, Jianxin and Lin, Zhijie and Zhou, Jingren and Yang, Hongxia and Zhao, Zhou},
  booktitle = {International Conference on Machine Learning (ICML)},
  year = {2021}
}
@article{weston2015babi,
  title = {Towards AI-Complete Question Answering: A Set of Prerequisite Toy Tasks},
  author = {Weston, Jason and Bordes, Antoine and Chopra, Sumit and Rush, Alexander M. and van Merri{\\"e}nboer, Bart and Joulin, Armand and Mikolov, Tomas},
  journal = {arXiv preprint arXiv:1502.05698},
  year = {2015}
}
```
"""


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


def write_qa_model_card(
    path: str | Path,
    model,
    results: dict[str, dict[str, float]],
    dataset_name: str,
    training: str,
    data: str,
    model_id: str = "org/rehearsal-memory-babi",
) -> ModelCard:
    """Write a card for a trained `RehearsalMemoryForQuestionAnswering`. `results` maps a question type
    (or "all") to `{"accuracy": float, "count": int}`."""
    config = model.config
    # with a single question type its row repeats "all"; the Hub metadata lists it once
    reported = results if len(results) > 2 else {"all": results["all"]}
    eval_results = [
        EvalResult(
            task_type="question-answering",
            dataset_type="facebook/babi_qa",
            dataset_name=f"{dataset_name} {name}",
            dataset_split="test",
            metric_type="accuracy",
            metric_value=round(row["accuracy"], 4),
        )
        for name, row in reported.items()
    ]
    card_data = ModelCardData(
        model_name=Path(model_id).name,
        library_name="transformers",
        pipeline_tag="question-answering",
        license="apache-2.0",
        language="en",
        datasets=["facebook/babi_qa"],
        metrics=["accuracy"],
        tags=["rehearsal-memory", "memory", "babi", "custom_code"],
        eval_results=eval_results,
    )
    card = ModelCard.from_template(
        card_data,
        template_str=TEMPLATE,
        model_id=model_id,
        model_name=Path(model_id).name,
        memory_type=config.memory_type,
        memory_dim=config.memory_dim,
        **MEMORY_DESCRIPTIONS[config.memory_type](config),
        segment_length=config.segment_length,
        items=config.story_items,
        sentence_items=config.story_items == "sentences",
        hops=config.num_reasoning_hops,
        num_labels=config.num_labels,
        encoder=f"{config.encoder_config.model_type} ({config.encoder_config.num_hidden_layers} layers, "
        f"hidden size {config.encoder_config.hidden_size})",
        rehearsal=f"on (sampler: {config.sampler_mode})" if config.use_rehearsal else "off",
        training=training,
        results=[{"name": name, **row} for name, row in results.items()],
        data=data,
    )
    with atomic_path(path) as tmp:  # a crash never leaves half a card
        card.save(str(tmp))
    return card
