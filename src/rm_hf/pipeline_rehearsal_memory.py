"""Pipelines for the Rehearsal Memory heads: answer questions about a story, score candidate items for a user.

    from transformers import pipeline

    qa = pipeline("rehearsal-memory-qa", model="path/to/checkpoint", trust_remote_code=True)
    qa("Alice went to the kitchen. Bob went to the garden.", ["Where is Alice?", "Where is Bob?"])
    # [{'answer': 'kitchen', 'score': ...}, {'answer': 'garden', 'score': ...}]: one per question

A pipeline writes the story (or behaviour history) into memory once and answers every question (or scores every
candidate) from that memory alone. `return_memory=True` hands the memory back and `memory=` takes it again, so
later questions need no story, and a story can be streamed in pieces.

`import rm_hf` registers both tasks with transformers' pipeline registry. Every question-answering or click
checkpoint that `save_pretrained` writes holds a copy of this file and names its pipeline in config.json
(`custom_pipelines`), so the same call works without rm_hf through `trust_remote_code=True`. This file therefore
imports only torch, transformers and the standard library; it also holds the story encoding that training uses
(`rm_hf.qa_data`), so inference encodes exactly as training did.
"""

import re
import sys
from collections.abc import Sequence
from typing import Any

import torch
from transformers import Pipeline

# A sentence ends at ".", "!" or "?" followed by whitespace, or at a line break.
SENTENCE_BREAK = re.compile(r"(?<=[.!?])\s+|\s*\n\s*")


# ---------------------------------------------------------------------------------------------------------
# Encoding (shared with training: rm_hf.qa_data)


def split_sentences(story: str | Sequence[str]) -> list[str]:
    """A story as a list of sentences. A string is split after each ".", "!" or "?" that is followed by whitespace,
    and at line breaks ("Mary went home. Where is Mary?" -> ["Mary went home.", "Where is Mary?"]); empty pieces
    are dropped. Abbreviations such as "Dr. Smith" are split too: pass a list to control the sentences. A list is
    returned as it is (its positions are what supporting-fact indices refer to)."""
    if isinstance(story, str):
        return [piece for piece in (part.strip() for part in SENTENCE_BREAK.split(story)) if piece]
    return list(story)


def keep_recent_sentences(sentences: Sequence[Sequence[int]], max_tokens: int) -> int:
    """Index of the first of the most recent whole sentences that fit in `max_tokens` (len(sentences) if none)."""
    first, room = len(sentences), max_tokens
    while first > 0 and len(sentences[first - 1]) <= room:
        first -= 1
        room -= len(sentences[first])
    return first


def encode_story(
    tokenizer, story: str | Sequence[str], questions: Sequence[str] = (), max_story_tokens: int | None = None
) -> dict[str, Any]:
    """Token ids of a story and of questions about it, laid out as the models are trained.

    Returns `input_ids` (each sentence's tokens followed by [SEP]), per story token `sentence_index` (its sentence
    among the kept ones), `first_sentence` (the index in `split_sentences(story)` of the first kept sentence) and
    `question_input_ids` (`[CLS] question [SEP]` for each question).

    With `max_story_tokens`, a longer story keeps only its most recent whole sentences that fit; if even the last
    sentence is too long, its last `max_story_tokens` tokens are kept.
    """
    if max_story_tokens is not None and max_story_tokens < 1:
        raise ValueError(f"max_story_tokens must be at least 1, got {max_story_tokens}")
    sentences = split_sentences(story)
    texts = [*sentences, *questions]
    # One tokenizer call for the sentences and the questions together: the call overhead dominates short texts.
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
    story_ids = [sentence + [tokenizer.sep_token_id] for sentence in ids[: len(sentences)]]

    first = 0
    if max_story_tokens is not None:
        first = keep_recent_sentences(story_ids, max_story_tokens)
        if first == len(story_ids) and story_ids:
            first -= 1
            story_ids[first] = story_ids[first][-max_story_tokens:]

    input_ids: list[int] = []
    sentence_index: list[int] = []
    for index, sentence in enumerate(story_ids[first:]):
        input_ids += sentence
        sentence_index += [index] * len(sentence)
    return {
        "input_ids": input_ids,
        "sentence_index": sentence_index,
        "first_sentence": first,
        "question_input_ids": [
            [tokenizer.cls_token_id, *question, tokenizer.sep_token_id] for question in ids[len(sentences) :]
        ],
    }


def group_sentences(values: Sequence[Any], sentence_index: Sequence[int]) -> list[list[Any]]:
    """Per-token `values` of an encoded story regrouped by sentence, in sentence order."""
    groups: dict[int, list[Any]] = {}
    for value, index in zip(values, sentence_index, strict=True):
        groups.setdefault(index, []).append(value)
    return [groups[index] for index in sorted(groups)]


def pad_sequences(
    sequences: Sequence[Sequence[int]], value: int, multiple_of: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad to the longest sequence (rounded up to `multiple_of`); returns (padded, mask of real items)."""
    length = max((len(sequence) for sequence in sequences), default=0)
    if multiple_of:
        length = -(-length // multiple_of) * multiple_of
    padded = torch.full((len(sequences), length), value, dtype=torch.long)
    mask = torch.zeros((len(sequences), length), dtype=torch.long)
    for row, sequence in enumerate(sequences):
        padded[row, : len(sequence)] = torch.as_tensor(sequence, dtype=torch.long)
        mask[row, : len(sequence)] = 1
    return padded, mask


def pad_sentences(
    stories: Sequence[Sequence[Sequence[int]]], value: int, multiple_of: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stories as one sentence per row (`story_items="sentences"`): (batch, sentences, longest sentence) ids padded
    with `value` (the sentence count rounded up to `multiple_of`), and the (batch, sentences) mask of real ones."""
    _, mask = pad_sequences([[0] * len(story) for story in stories], 0, multiple_of)
    width = max((len(sentence) for story in stories for sentence in story), default=1)
    input_ids = torch.full((*mask.shape, width), value, dtype=torch.long)
    for row, story in enumerate(stories):
        for index, sentence in enumerate(story):
            input_ids[row, index, : len(sentence)] = torch.as_tensor(sentence, dtype=torch.long)
    return input_ids, mask


# ---------------------------------------------------------------------------------------------------------
# Pipelines


def _model_with_head(model, head_name: str, task: str):
    """`model` if it is the head `head_name`; a base `RehearsalMemoryModel` loaded from a checkpoint of that head (as
    `pipeline()` loads it through `AutoModel`, the one Auto class such a head has) is replaced by the head, built from
    the same checkpoint by the class its config names in `architectures`, found in the module that defined the base
    model: the installed rm_hf, or the checkpoint's own copy of the code."""
    name = type(model).__name__
    if name == head_name:
        return model
    if name == "RehearsalMemoryModel" and head_name in (getattr(model.config, "architectures", None) or []):
        head = getattr(sys.modules[type(model).__module__], head_name)
        return head.from_pretrained(model.name_or_path, config=model.config, dtype=model.dtype)
    raise TypeError(f"The {task!r} pipeline needs a {head_name}, got a {name}.")


def _is_one_id(value) -> bool:
    if isinstance(value, torch.Tensor):
        return value.dim() == 0
    return hasattr(value, "__index__")  # int, numpy integers


def _ids(values, name: str) -> list[int]:
    """A list of integer ids (ints, numpy integers or a 1-D tensor), or a ValueError naming the argument."""
    ids = []
    for value in values.tolist() if isinstance(values, torch.Tensor) else values:
        value = value.item() if isinstance(value, torch.Tensor) else value
        if isinstance(value, bool) or not hasattr(value, "__index__"):
            raise ValueError(f"`{name}` must be integer ids, got {values!r}.")
        ids.append(value.__index__())
    return ids


class RehearsalMemoryPipelineMixin:
    """What both pipelines share: one input per call, the memory kept on request, evaluation mode."""

    # transformers loads only what a pipeline names; the heads take no image, audio or video processor
    _load_processor = False
    _load_image_processor = False
    _load_video_processor = False
    _load_feature_extractor = False

    def _sanitize_parameters(self, top_k: int | None = None, return_memory: bool | None = None, **unexpected):
        if unexpected:
            raise TypeError(f"{type(self).__name__} got unexpected arguments: {sorted(unexpected)}.")
        preprocess, postprocess = {}, {}
        if top_k is not None:
            if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1:
                raise ValueError(f"`top_k` must be a positive integer, got {top_k!r}.")
            postprocess["top_k"] = top_k
        if return_memory is not None:
            preprocess["return_memory"] = postprocess["return_memory"] = bool(return_memory)
        return preprocess, {}, postprocess

    def _check_memory(self, memory) -> None:
        if memory is not None:
            self.model.rehearsal_memory.check_memory(memory, 1)  # the memory of one story or user


class RehearsalMemoryQuestionAnsweringPipeline(RehearsalMemoryPipelineMixin, Pipeline):
    """Answers questions about a story from its memory (task "rehearsal-memory-qa").

    `qa(story, question)`: `story` is a string (split into sentences by `split_sentences`: after ".", "!" or "?"
    followed by whitespace, and at line breaks) or a list of sentences; `question` a string or a list of strings.
    The story is encoded as in training (`encode_story`; tokens or one item per sentence, as the model's
    `config.story_items` says), written into memory once with `model.write`, and every question is answered by
    `model.answer` from a copy of that memory. Returns `{"answer": str, "score": float}` per question (the softmax
    probability over `config.id2label`), a list for a list of questions; with `top_k=k`, the k best answers per
    question. Questions are padded together, as a batch would be in training.

    - `return_memory=True` returns `{"answers": ..., "memory": memory}` (the memory on the CPU);
      `qa(question=..., memory=memory)` answers later questions without the story, and `qa(more_story, ...,
      memory=memory)` writes more story into it first, as `model.write` streams (pieces that fill whole segments
      of `config.segment_length` items give the memory of writing the story at once).
      `qa.write(story, memory=None)` returns the memory alone.
    - `qa([{"story": ..., "question": ...}, ...])` answers several stories, one after the other.
    """

    task_name = "rehearsal-memory-qa"
    head_class_name = "RehearsalMemoryForQuestionAnswering"
    auto_class = "AutoModelForQuestionAnswering"
    task_type = "text"
    _load_tokenizer = True

    def __init__(self, model, tokenizer=None, **kwargs):
        super().__init__(model=_model_with_head(model, self.head_class_name, self.task_name), tokenizer=tokenizer,
                         **kwargs)  # fmt: skip
        if self.tokenizer is None:
            raise ValueError(f"The {self.task_name!r} pipeline needs the tokenizer the model was trained with.")
        self.model.eval()

    def __call__(self, story=None, question=None, memory=None, **kwargs):
        if isinstance(story, dict):
            return self(**story, **kwargs)
        if isinstance(story, (list, tuple)) and story and all(isinstance(item, dict) for item in story):
            return [self(**item, **kwargs) for item in story]
        return super().__call__({"story": story, "question": question, "memory": memory}, **kwargs)

    def write(self, story, memory=None):
        """The memory of `story` (written on top of `memory`, if given), to answer questions later with `memory=`."""
        return self(story, memory=memory, return_memory=True)["memory"]

    def preprocess(self, inputs: dict, return_memory: bool = False) -> dict:
        story, question, memory = inputs["story"], inputs["question"], inputs["memory"]
        sentences = split_sentences(story) if story is not None else []
        if not isinstance(sentences, list) or not all(isinstance(s, str) for s in sentences):
            raise ValueError(f"`story` must be a string or a list of sentences (strings), got {story!r}.")
        questions = [question] if isinstance(question, str) else list(question or [])
        if not all(isinstance(q, str) and q.strip() for q in questions):
            raise ValueError(f"`question` must be a non-empty string or a list of them, got {question!r}.")
        if not sentences and memory is None:
            raise ValueError("Give a story, or the `memory` of one from an earlier call (`return_memory=True`).")
        if not questions and not return_memory:
            raise ValueError("Give a question, or `return_memory=True` to keep the story's memory.")
        self._check_memory(memory)
        encoded = encode_story(self.tokenizer, sentences, questions)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        model_inputs = {"memory": memory, "single": isinstance(question, str)}
        if sentences:
            if self.model.config.story_items == "sentences":
                by_sentence = group_sentences(encoded["input_ids"], encoded["sentence_index"])
                model_inputs["input_ids"], model_inputs["attention_mask"] = pad_sentences([by_sentence], pad)
            else:
                model_inputs["input_ids"], model_inputs["attention_mask"] = pad_sequences([encoded["input_ids"]], pad)
        if questions:
            model_inputs["question_input_ids"], model_inputs["question_attention_mask"] = pad_sequences(
                encoded["question_input_ids"], pad
            )
        return model_inputs

    def _forward(self, inputs: dict) -> dict:
        memory = inputs["memory"]
        if "input_ids" in inputs:
            memory = self.model.write(memory, inputs["input_ids"], inputs["attention_mask"])
        logits = None
        if "question_input_ids" in inputs:
            questions = inputs["question_input_ids"]
            copies = self.model.rehearsal_memory.reorder_memory(
                memory, torch.zeros(questions.shape[0], dtype=torch.long, device=questions.device)
            )
            logits = self.model.answer(copies, questions, inputs["question_attention_mask"])
        return {"logits": logits, "memory": memory, "single": inputs["single"]}

    def postprocess(self, outputs: dict, top_k: int = 1, return_memory: bool = False):
        answers = None
        if outputs["logits"] is not None:
            answers = self._answers(outputs["logits"], top_k)
            answers = answers[0] if outputs["single"] else answers
        return {"answers": answers, "memory": outputs["memory"]} if return_memory else answers

    def _answers(self, logits: torch.Tensor, top_k: int) -> list:
        probabilities = logits.float().softmax(-1)
        scores, ids = probabilities.topk(min(top_k, probabilities.shape[-1]), dim=-1)
        id2label = self.model.config.id2label
        results = [
            [{"answer": id2label[int(i)], "score": float(s)} for s, i in zip(row_scores, row_ids)]
            for row_scores, row_ids in zip(scores.tolist(), ids.tolist())
        ]
        return [answers[0] for answers in results] if top_k == 1 else results


class RehearsalMemoryClickPipeline(RehearsalMemoryPipelineMixin, Pipeline):
    """Scores candidate items for a behaviour history from the user's memory (task "rehearsal-memory-click").

    `clicks(history, candidates)`: `history` is the user's item ids, oldest first (optionally with
    `history_categories` and `history_behaviors`, one id per item), `candidates` an item id or a list of them
    (optionally with `candidate_categories`; categories default to 0). Ids are the model's (`behavior_vocab.json` of
    `run_ctr.py` maps raw ids to them). The history is written into memory once with `model.write`, and
    `model.score` reads it for all candidates together. Returns `{"item": id, "score": float}` per candidate, the
    click probability (sigmoid of the logit), in the order given; `top_k=k` returns the k best, best first. An empty
    history scores against the initial memory.

    `return_memory=True` returns `{"scores": ..., "memory": memory}`; `memory=` continues from it: new behaviours
    are written on top (as `rm_hf.UserMemoryStore` does), and candidates can be scored without any history.
    `clicks([{"history": ..., "candidates": ...}, ...])` scores several users, one after the other.

    Given a checkpoint path, `pipeline()` loads the base model through `AutoModel` and the head is then loaded
    from `model.name_or_path` (`_model_with_head`): for a Hub repo that is its default revision, so to pin one,
    download it (`huggingface_hub.snapshot_download(repo, revision=...)`) and pass the folder.
    """

    task_name = "rehearsal-memory-click"
    head_class_name = "RehearsalMemoryForClickPrediction"
    # The click head has no Auto class: pipeline() loads the base through AutoModel and `__init__` loads the head
    # named in the checkpoint's config (see `_model_with_head`).
    auto_class = "AutoModel"
    task_type = "multimodal"
    _load_tokenizer = False

    def __init__(self, model, **kwargs):
        super().__init__(model=_model_with_head(model, self.head_class_name, self.task_name), **kwargs)
        self.model.eval()

    def __call__(self, history=None, candidates=None, memory=None, history_categories=None, history_behaviors=None,
                 candidate_categories=None, **kwargs):  # fmt: skip
        if isinstance(history, (list, tuple)) and history and all(isinstance(item, dict) for item in history):
            return [self(**item, **kwargs) for item in history]
        inputs = {
            "history": history,
            "candidates": candidates,
            "memory": memory,
            "history_categories": history_categories,
            "history_behaviors": history_behaviors,
            "candidate_categories": candidate_categories,
        }
        return super().__call__(inputs, **kwargs)

    def write(self, history, memory=None, history_categories=None, history_behaviors=None):
        """The user's memory after `history` (written on top of `memory`, if given)."""
        return self(history, memory=memory, history_categories=history_categories,
                    history_behaviors=history_behaviors, return_memory=True)["memory"]  # fmt: skip

    def preprocess(self, inputs: dict, return_memory: bool = False) -> dict:
        memory = inputs["memory"]
        self._check_memory(memory)
        items = _ids(inputs["history"] if inputs["history"] is not None else [], "history")
        model_inputs: dict[str, Any] = {"memory": memory}
        if items:
            model_inputs["history_items"] = torch.tensor([items])
            model_inputs["attention_mask"] = torch.ones(1, len(items), dtype=torch.long)
            for name in ("history_categories", "history_behaviors"):
                if inputs[name] is not None:
                    values = _ids(inputs[name], name)
                    if len(values) != len(items):
                        raise ValueError(f"`{name}` has {len(values)} ids for {len(items)} history items.")
                    model_inputs[name] = torch.tensor([values])
        candidates = inputs["candidates"]
        single = _is_one_id(candidates)
        targets = _ids([candidates] if single else (candidates if candidates is not None else []), "candidates")
        if not targets and not return_memory:
            raise ValueError("Give `candidates` to score, or `return_memory=True` to keep the user's memory.")
        model_inputs |= {"single": single, "targets": targets}
        if targets:
            model_inputs["target_item"] = torch.tensor([targets])
            if inputs["candidate_categories"] is not None:
                categories = inputs["candidate_categories"]
                categories = _ids([categories] if _is_one_id(categories) else categories, "candidate_categories")
                if len(categories) != len(targets):
                    raise ValueError(
                        f"`candidate_categories` has {len(categories)} ids for {len(targets)} candidates."
                    )
                model_inputs["target_category"] = torch.tensor([categories])
        return model_inputs

    def _forward(self, inputs: dict) -> dict:
        memory = inputs["memory"]
        if "history_items" in inputs:
            memory = self.model.write(
                memory,
                history_items=inputs["history_items"],
                history_categories=inputs.get("history_categories"),
                history_behaviors=inputs.get("history_behaviors"),
                attention_mask=inputs["attention_mask"],
            )
        elif memory is None:
            memory = self.model.rehearsal_memory.init_memory(1)  # no behaviour yet
        logits = None
        if "target_item" in inputs:
            logits = self.model.score(memory, inputs["target_item"], inputs.get("target_category"))
        return {"logits": logits, "memory": memory, "single": inputs["single"], "targets": inputs["targets"]}

    def postprocess(self, outputs: dict, top_k: int | None = None, return_memory: bool = False):
        results = None
        if outputs["logits"] is not None:
            scores = outputs["logits"][0].float().sigmoid().tolist()
            results = [{"item": item, "score": score} for item, score in zip(outputs["targets"], scores)]
            if top_k is not None:
                results = sorted(results, key=lambda result: -result["score"])[:top_k]
            results = results[0] if outputs["single"] else results
        return {"scores": results, "memory": outputs["memory"]} if return_memory else results


PIPELINES = (RehearsalMemoryQuestionAnsweringPipeline, RehearsalMemoryClickPipeline)


def custom_pipeline_for(head_class_name: str) -> tuple[type, dict] | None:
    """The pipeline a head ships with, and its config.json `custom_pipelines` entry (the entry
    `Pipeline.save_pretrained` writes for a registered pipeline); None for a model without one."""
    for pipeline_class in PIPELINES:
        if pipeline_class.head_class_name == head_class_name:
            impl = f"{pipeline_class.__module__.rsplit('.', 1)[-1]}.{pipeline_class.__name__}"
            entry = {"impl": impl, "pt": [pipeline_class.auto_class], "type": pipeline_class.task_type}
            return pipeline_class, {pipeline_class.task_name: entry}
    return None


def register_pipelines() -> None:
    """Register both tasks with transformers' pipeline registry (`import rm_hf` does this once)."""
    import transformers
    from transformers.pipelines import PIPELINE_REGISTRY

    for pipeline_class in PIPELINES:
        PIPELINE_REGISTRY.register_pipeline(
            pipeline_class.task_name,
            pipeline_class=pipeline_class,
            pt_model=getattr(transformers, pipeline_class.auto_class),
            type=pipeline_class.task_type,
        )
