"""BABILong-style benchmark: bAbI questions whose facts hide in 0 to 1M tokens of book text (`rm_hf.babilong`).

Per task, each model is trained with a length curriculum (--train_lengths, at most 16k tokens: the train split at
each length in turn, shortest first, --steps batches at each; one AdamW throughout, --lr_schedule constant or linear
decay), then tested at every --test_lengths length on the test split, whose background text comes from other
books. Every model reads one item per story sentence:

- rm: `RehearsalMemoryForQuestionAnswering` as bench/qa_utils.py `make_model` builds it (items written 4 per
  segment into 16 gated slots, trained with rehearsal of run_qa.py's default size), answering from its memory
  alone. It reads a test story in one streaming pass, --chunk_sentences items per `write` call, so its memory use
  does not grow with the story.
- rm_no_rehearsal: the same model trained without rehearsal (the ablation).
- rm_teacher: rm with `sampler_mode="teacher"`: fragments to rehearse drawn from the attention of a full-access
  teacher that sees the question (training only; the test is the same memory-alone pass).
- rm_supporting: rm with `sampler_mode="external"` and the question's supporting facts as the weights: an oracle
  sampler (it is told where the facts are), the upper bound of what a fact-seeking sampler can give; not a method.
- rm_memn2n_teacher: rm with `sampler_mode="external"` and, as the weights, the attention (summed over hops) of the
  memn2n model of the same task, seed and curriculum, trained first: the paper's two-stage teacher. Needs
  --models_dir, where that memn2n model is kept (run memn2n first, in this invocation or an earlier one).
- memn2n: `MemN2NForQuestionAnswering`, the full-access baseline: the question attends over every sentence of the
  story, so its cost grows with the story. It is run wherever the story fits: lengths whose stories have more than
  --full_access_max_sentences sentences are "not run", and running out of memory is recorded, so the crossover
  with RM is measured, not assumed.

Items. The default books' sentences run to 400 tokens; one longer than --max_item_tokens (with its [SEP]) is read
as several items of at most that many tokens, so every token is still read (bAbI's facts are always one item). The
word tokenizer is built from the task's training stories only (words seen fewer than --min_word_frequency times, and
test words never seen, are [UNK]).

Measured per run (model, seed, task, curriculum) and test length: accuracy, number of test questions, seconds and
peak memory per sample. Both cover one sample from its token ids to its answer (items built, the story written into
memory or embedded whole, the question answered), at batch size 1 with --threads torch threads; tokenization is
left out. Each (run, length) is tested in a fresh process, so no earlier length's allocator cache hides growth; per
sample, the peak RSS minus the RSS just before it (the kernel's high-water mark, reset per sample as
bench/cost_utils.py does), and the largest over the samples is reported. Per run with rehearsal, after training:
the share of fragments its sampler draws that hold a supporting fact (`supporting_fact_coverage`, on the first 64
training stories of each curriculum length).

--config KEY=VALUE sets `RehearsalMemoryConfig` fields for every model (e.g. rehearsal_fragment_length=2: fragments
of two items; with one, familiarity has no item left to replace, so no negatives); it is a setting of the whole
results file, so each set of values needs its own --output_dir. --test_config KEY=VALUE sets fields only when each
model is loaded for testing (settings of reading, e.g. slot_write_threshold=0.2, see
bench/calibrate_write_threshold.py): a model kept in --models_dir is tested under them without training it again.

Every run is stored in OUTPUT_DIR/babilong.json as soon as it ends. A rerun with the same settings skips the runs
there (other seeds, tasks, models or curricula add runs); one with other settings stops unless --overwrite. With
--models_dir the trained models are kept, and a run whose model is kept there is tested without training it again,
so testing at new lengths (into another --output_dir) or after an interruption costs no retraining. The JSON
and the printed table also hold the BABILong numbers quoted from the paper and leaderboard (not re-run; their
lengths count GPT-2 tokens, ours words and punctuation marks); babilong.png plots accuracy against length.

    make babilong-data                        # outputs/babilong: qa1 at 0 to 128k tokens, 100 questions each
    python bench/bench_babilong.py            # trains on 0, 1k, 4k; tests at every length of outputs/babilong
    python bench/bench_babilong.py --tasks 1-5 --train_lengths 0,1k,4k,16k --steps 1000 --seeds 0,1,2
"""

import argparse
import contextlib
import functools
import gc
import itertools
import json
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pyarrow.compute as pc
import torch
from cost_utils import RESULTS, current_rss_mib, peak_rss_mib, provenance, reset_peak_rss, run_in_fresh_process
from qa_utils import (
    KEPT_RECORD,
    check_overrides,
    differing,
    fragment_coverage,
    keep_model,
    kept_run,
    load_kept_model,
    make_model,
    parse_override,
    train_stages,
)
from transformers import PreTrainedTokenizerFast

from rm_hf import MemN2NForQuestionAnswering
from rm_hf.babi import answer_vocabulary
from rm_hf.babilong import babilong_folder, length_name, load_babilong, parse_length
from rm_hf.pipeline_rehearsal_memory import group_sentences, pad_sentences
from rm_hf.qa_data import BABI_NAME_GROUPS, NamePermutation, check_renamable_tasks, encode_qa_example
from rm_hf.tokenization import build_word_tokenizer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from prepare_babilong import parse_tasks  # noqa: E402
from run_qa import MODEL_CLASSES, ModelArguments  # noqa: E402

# the RM models this benchmark trains, by their rehearsal settings: run_qa.py's, without rehearsal (the ablation),
# and with other samplers
RM_REHEARSAL = {
    "rm": {"use_rehearsal": True},
    "rm_no_rehearsal": {"use_rehearsal": False},
    "rm_teacher": {"use_rehearsal": True, "sampler_mode": "teacher"},
    "rm_supporting": {"use_rehearsal": True, "sampler_mode": "external"},  # the collator's supporting facts
    "rm_memn2n_teacher": {"use_rehearsal": True, "sampler_mode": "external"},  # a trained memn2n's attention
}
MODELS = {**dict.fromkeys(RM_REHEARSAL, "rm"), "memn2n": "memn2n"}  # name -> its MODEL_CLASSES key

MAX_TRAIN_LENGTH = 16_000
# training stories per curriculum stage on which the trained sampler's supporting-fact coverage is measured
COVERAGE_ROWS = 64
# What the numbers measure, stored with them.
MEASURED = {
    "accuracy": "share of the test questions answered right (mean over seeds in `results`)",
    "seconds_per_sample": "mean wall-clock seconds from a sample's token ids to its answer: items built, the story "
    "written into memory (rm, streamed in chunks) or embedded whole (memn2n), the question answered; batch size 1, "
    "tokenization left out",
    "peak_memory_mib": "largest over the samples of the peak RSS during that span minus the RSS just before it, in a "
    "fresh process per run and length (bench/cost_utils.py; `peak_memory_method` says how the peak was read)",
}
AVERAGE_TASKS = (1, 2, 3, 4, 5)
AVERAGE = "qa1-qa5 average"
QUOTED_LABEL = "quoted from the BABILong paper / leaderboard, not re-run"
# Accuracy (%) by BABILong length; their lengths count GPT-2 tokens. GPT-4 has no 1M entry.
QUOTED = {
    "label": QUOTED_LABEL,
    "note": "accuracy in %; BABILong counts GPT-2 tokens, this benchmark words and punctuation marks",
    "qa1": {
        "RMT (GPT-2 137M, 16 memory tokens, segments of 512)": {
            "0k": 100, "4k": 100, "16k": 100, "64k": 99.6, "128k": 99.1, "1M": 94.2, "10M": 76.4,
        },
        "GPT-4": {"0k": 100, "4k": 97, "16k": 66, "64k": 30, "128k": 24},
    },
    AVERAGE: {
        "ARMT": {"64k": 97.9, "10M": 76.6},
        "GPT-4": {"0k": 87, "4k": 74, "64k": 43, "128k": 36},
    },
}  # fmt: skip


# ---------------------------------------------------------------------------------------------------------
# Arguments and data


def parse_lengths(text: str) -> list[int]:
    return sorted({parse_length(piece) for piece in text.split(",")})


def parse_steps(text: str, num_lengths: int) -> list[int]:
    """Steps per curriculum length: one number for all, or one per length."""
    try:
        steps = [int(piece) for piece in text.split(",")]
    except ValueError:
        raise ValueError(f"--steps takes whole numbers separated by commas, got {text!r}") from None
    if len(steps) not in (1, num_lengths):
        raise ValueError(f"--steps takes one number or one per --train_lengths length ({num_lengths}), got {text}")
    return steps * num_lengths if len(steps) == 1 else steps


def saved_lengths(data_dir: Path, task: int) -> set[int]:
    folder = data_dir / f"qa{task}"
    return {parse_length(path.name) for path in folder.iterdir() if path.is_dir()} if folder.is_dir() else set()


def lengths_in(data_dir: Path, tasks: list[int]) -> list[int]:
    """The lengths saved for every one of `tasks` under `data_dir`."""
    for task in tasks:
        if not (data_dir / f"qa{task}").is_dir():
            raise ValueError(f"{data_dir / f'qa{task}'} is missing: {prepare_command(data_dir, tasks)}")
    return sorted(set.intersection(*(saved_lengths(data_dir, task) for task in tasks)))


def prepare_command(data_dir: Path, tasks: list[int], lengths: list[int] | None = None) -> str:
    """How to write the benchmark data. The generator is deterministic: with the flags of the first writing, the
    lengths already saved come out the same."""
    command = f"python examples/prepare_babilong.py --tasks {','.join(map(str, tasks))}"
    if lengths:
        command += f" --lengths {','.join(length_name(length) for length in lengths)}"
    command += f" --output_dir {data_dir}"
    again = (data_dir / "manifest.json").exists()
    command = f"`{command} --overwrite` and the other flags its manifest.json records" if again else f"`{command}`"
    return f"write it with {command} (lengths over 512k need more books than the default ones: --books_dir)"


def check_data(args) -> None:
    """Every task's train split at each training length and test split at each test length is saved."""
    needed = {*args.train_lengths, *args.test_lengths}
    for task, length in itertools.product(args.tasks, sorted(needed)):
        folder = babilong_folder(args.data_dir, task, length)
        if not folder.is_dir():
            every = sorted(needed.union(*(saved_lengths(args.data_dir, task) for task in args.tasks)))
            raise ValueError(f"{folder} (task {task}, length {length_name(length)}) is missing: "
                             f"{prepare_command(args.data_dir, args.tasks, every)}")  # fmt: skip


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    parser.add_argument("--data_dir", type=Path, default=Path("outputs/babilong"),
                        help="written by examples/prepare_babilong.py (default: outputs/babilong)")  # fmt: skip
    parser.add_argument("--tasks", default="1", help="bAbI task ids, e.g. 1-5 or 1,2,3 (default: 1)")
    parser.add_argument("--train_lengths", default="0,1k,4k",
                        help="training curriculum, shortest first, each at most 16k (default: 0,1k,4k)")  # fmt: skip
    parser.add_argument("--test_lengths", default="all", help="e.g. 0,16k,128k (default: every length saved)")
    parser.add_argument("--num_test", type=int, default=100, help="test questions per length, at most")
    parser.add_argument(
        "--steps",
        default="300",
        help="training steps per curriculum length: one number for every length, or one per length "
        "(e.g. 2000,1500,800)",
    )
    parser.add_argument(
        "--lr_schedule",
        choices=["constant", "linear"],
        default="constant",
        help="one AdamW through the curriculum at a constant learning rate, or with 5%% warm-up and "
        "linear decay to 0 at the last step",
    )
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--learning_rate", type=float, default=2e-3)
    parser.add_argument("--seeds", default="0", help="comma-separated model and batch-order seeds")
    parser.add_argument("--models", default="rm,memn2n", help=f"comma-separated, of {', '.join(MODELS)}")
    parser.add_argument("--min_word_frequency", type=int, default=1, help="rarer training words become [UNK]")
    parser.add_argument("--max_item_tokens", type=int, default=32, help="longer sentences are read as several items")
    parser.add_argument("--chunk_sentences", type=int, default=1024,
                        help="items per `write` as rm streams a story (rounded up to whole segments)")  # fmt: skip
    parser.add_argument("--full_access_max_sentences", type=int, default=100_000,
                        help="memn2n is not run on lengths whose stories have more sentences")  # fmt: skip
    parser.add_argument("--config", type=parse_override, nargs="+", default=[], metavar="KEY=VALUE",
                        help="RehearsalMemoryConfig fields set for every model, e.g. rehearsal_fragment_length=2 "
                        "(a setting of the whole file: runs with other values go to another --output_dir)")  # fmt: skip
    parser.add_argument("--test_config", type=parse_override, nargs="+", default=[], metavar="KEY=VALUE",
                        help="RehearsalMemoryConfig fields set when loading each model for testing, e.g. "
                        "slot_write_threshold=0.2 (a setting of the whole file, like --config)")  # fmt: skip
    parser.add_argument("--output_dir", type=Path, default=RESULTS / "babilong")
    parser.add_argument("--models_dir", type=Path, default=None,
                        help="keep each trained model in MODELS_DIR/<model>_qa<task>_seed<seed> with its training "
                        "record; a later invocation with the same training settings tests the kept model instead of "
                        "training it again (e.g. at other --test_lengths, or after testing was cut short)")  # fmt: skip
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: on a shared 2-core machine more threads ran slower)")  # fmt: skip
    parser.add_argument("--permute_names", action="store_true",
                        help="rename bAbI's names (places, people, objects) at random in each training example, "
                        "consistently in story, question and answer (rm_hf.qa_data.NamePermutation; qa1-qa5 only)")  # fmt: skip
    parser.add_argument("--overwrite", action="store_true", help="replace runs stored with other settings")
    args = parser.parse_args(argv)
    try:
        args.config = check_overrides(dict(args.config))
        args.test_config = check_overrides(dict(args.test_config))
        args.tasks = parse_tasks(args.tasks)
        args.train_lengths = parse_lengths(args.train_lengths)
        args.seeds = [int(seed) for seed in args.seeds.split(",")]
        args.steps = parse_steps(args.steps, len(args.train_lengths))
        args.models = args.models.split(",")
        args.test_lengths = (
            lengths_in(args.data_dir, args.tasks) if args.test_lengths == "all" else parse_lengths(args.test_lengths)
        )
        if unknown := set(args.models) - set(MODELS):
            raise ValueError(f"--models takes {', '.join(MODELS)}, got {sorted(unknown)}")
        if "rm_memn2n_teacher" in args.models:
            if args.models_dir is None:
                raise ValueError("rm_memn2n_teacher draws from a memn2n model kept in --models_dir: give one")
            # its teacher is trained first
            args.models.sort(key=lambda name: name != "memn2n")
        if args.train_lengths[-1] > MAX_TRAIN_LENGTH:
            raise ValueError(f"--train_lengths go up to 16k tokens, got {length_name(args.train_lengths[-1])}")
        if min(args.steps) < 1:
            raise ValueError(f"--steps must be at least 1, got {min(args.steps)}")
        for name in ("num_test", "batch_size", "min_word_frequency", "max_item_tokens", "chunk_sentences",
                     "full_access_max_sentences", "threads"):  # fmt: skip
            if getattr(args, name) < 1:
                raise ValueError(f"--{name} must be at least 1, got {getattr(args, name)}")
        if args.permute_names:
            check_renamable_tasks(args.tasks)
        if not args.test_lengths:
            raise ValueError(f"No length is saved for every task of {args.tasks} in {args.data_dir}")
        check_data(args)
    except ValueError as error:
        parser.error(str(error))
    return args


def item_index(sentence_index: list[int], max_tokens: int) -> np.ndarray:
    """Per story token, the item it goes into: its sentence, cut into pieces of at most `max_tokens` tokens."""
    index = np.asarray(sentence_index)
    starts = np.flatnonzero(np.r_[True, index[1:] != index[:-1]])  # each sentence's first token
    offset = np.arange(len(index)) - np.repeat(starts, np.diff(np.r_[starts, len(index)]))  # within its sentence
    piece = offset // max_tokens
    new_item = np.r_[True, (index[1:] != index[:-1]) | (piece[1:] != piece[:-1])]
    return np.cumsum(new_item) - 1


def encode(row: dict, tokenizer, label2id: dict, max_item_tokens: int) -> dict:
    """A row's model inputs (`rm_hf.qa_data.encode_qa_example`), `sentence_index` numbering items instead; the
    per-token columns as int32 arrays (`QACollator` takes them): 12 bytes a token where Python lists take ~80."""
    features = encode_qa_example(row, tokenizer, label2id)
    features["sentence_index"] = item_index(features["sentence_index"], max_item_tokens)
    for name in ("input_ids", "supporting_mask", "sentence_index"):
        features[name] = np.asarray(features[name], dtype=np.int32)
    return features


def prepare_task(args, task: int) -> dict:
    """The tokenizer (from the training stories read), the answers (of every split and length) and the encoded rows
    of each curriculum length: the first steps x batch size of them where a stage reads fewer than its split holds
    (a 16k-token row takes ~200 KB encoded); with --permute_names, the `NamePermutation` training renames with."""
    train_sets = []
    for length, steps in zip(args.train_lengths, args.steps):
        data = load_babilong(args.data_dir, [task], length, "train")
        train_sets.append(data.select(range(min(len(data), steps * args.batch_size))))
    test_sets = [load_babilong(args.data_dir, [task], length, "test") for length in args.test_lengths]
    texts = (text for data in train_sets for row in data for text in (*row["story"], row["question"]))
    tokenizer = build_word_tokenizer(texts, args.min_word_frequency)
    answers = answer_vocabulary([*train_sets, *test_sets])
    label2id = {answer: i for i, answer in enumerate(answers)}
    stages = [[encode(row, tokenizer, label2id, args.max_item_tokens) for row in data] for data in train_sets]
    rename = NamePermutation.from_words(tokenizer, label2id, BABI_NAME_GROUPS) if args.permute_names else None
    return {"tokenizer": tokenizer, "answers": answers, "stages": stages, "rename": rename}


# run_qa.py's rehearsal size (2 fragments for a quarter of the stories, a 1-layer rehearsal model): at equal CPU it
# learnt bAbI qa1 far faster than the config's (README, "Training question answering")
REHEARSAL_SIZE = {
    name: ModelArguments.__dataclass_fields__[name].default
    for name in ("num_rehearsal_fragments", "rehearsal_batch_fraction", "rehearsal_num_layers")
}


def build_model(name: str, tokenizer, answers: list[str], max_item_tokens: int, config: dict):
    rehearsal = {**RM_REHEARSAL.get(name, {"use_rehearsal": False}), **REHEARSAL_SIZE}
    rm = make_model(tokenizer, answers, "sentences", max_sentence_tokens=max_item_tokens, **(rehearsal | config))
    return MemN2NForQuestionAnswering(rm.config) if name == "memn2n" else rm


# ---------------------------------------------------------------------------------------------------------
# Answering one sample (in the test process)


def item_batch(features: dict, start: int, stop: int, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Story tokens start:stop as a batch of one story of items: ids (1, items, longest item), mask (1, items)."""
    items = group_sentences(features["input_ids"][start:stop], features["sentence_index"][start:stop])
    return pad_sentences([items], pad_id)


def question_of(features: dict) -> torch.Tensor:
    return torch.tensor([features["question_input_ids"]])  # (1, L)


@torch.inference_mode()
def logits_from_memory(model, features: dict, pad_id: int, chunk_items: int) -> torch.Tensor:
    """RM: stream the story into memory chunk by chunk (one pass), then score the answers (1, A) from the memory
    alone."""
    segment = model.config.segment_length
    chunk_items = -(-chunk_items // segment) * segment  # whole segments: the memory of writing the story at once
    index = features["sentence_index"]
    starts = np.searchsorted(index, np.arange(0, index[-1] + 1, chunk_items)).tolist()  # each chunk's first token
    memory = None
    for start, stop in itertools.pairwise([*starts, len(index)]):
        input_ids, attention_mask = item_batch(features, start, stop, pad_id)
        memory = model.write(memory, input_ids=input_ids, attention_mask=attention_mask)
    return model.answer(memory, question_of(features))


def answer_from_memory(model, features: dict, pad_id: int, chunk_items: int) -> int:
    return logits_from_memory(model, features, pad_id, chunk_items).argmax(-1).item()


@torch.inference_mode()
def answer_full_access(model, features: dict, pad_id: int, chunk_items: int) -> int:
    """MemN2N: the question attends over every item of the story at once (`chunk_items` does not apply)."""
    input_ids, attention_mask = item_batch(features, 0, len(features["input_ids"]), pad_id)
    logits = model(input_ids=input_ids, attention_mask=attention_mask, question_input_ids=question_of(features)).logits
    return logits.argmax(-1).item()


ANSWER = {"rm": answer_from_memory, "memn2n": answer_full_access}


def first_items(features: dict, count: int) -> dict:
    """The sample cut to its first `count` items (a warm-up input)."""
    stop = int(np.searchsorted(features["sentence_index"], count))
    return {**features, "input_ids": features["input_ids"][:stop], "sentence_index": features["sentence_index"][:stop]}


def out_of_memory(error: Exception) -> bool:
    return isinstance(error, MemoryError) or "can't allocate memory" in str(error) or "out of memory" in str(error)


def untested(num_test: int, status: str) -> dict:
    return {"status": status, "accuracy": None, "num_test": num_test, "seconds_per_sample": None,
            "peak_memory_mib": None}  # fmt: skip


def evaluate(job: dict) -> dict:
    """Test a saved model at one length, one sample at a time; runs in a fresh process (`in_fresh_process`)."""
    torch.set_num_threads(job["threads"])
    model = load_kept_model(MODEL_CLASSES[MODELS[job["model"]]], job["folder"], job["test_config"])
    tokenizer = PreTrainedTokenizerFast.from_pretrained(job["folder"])
    rows = load_babilong(job["data_dir"], [job["task"]], job["length"], "test").select(range(job["num_test"]))
    answer = ANSWER[MODELS[job["model"]]]
    pad_id = tokenizer.pad_token_id
    label2id = {label: int(i) for i, label in model.config.id2label.items()}

    def encoded(row):
        return encode(row, tokenizer, label2id, job["max_item_tokens"])

    # warm-up: one-off allocations (kernels, thread pools) are no sample's cost
    answer(model, first_items(encoded(rows[0]), 16), pad_id, job["chunk_sentences"])
    hits, seconds, peaks, items = [], [], [], []
    for number, row in enumerate(rows):
        features = encoded(row)
        gc.collect()
        rss_before = current_rss_mib()
        method = reset_peak_rss()
        start = time.perf_counter()
        try:
            prediction = answer(model, features, pad_id, job["chunk_sentences"])
        except (MemoryError, RuntimeError) as error:
            if not out_of_memory(error):
                raise
            return untested(job["num_test"], f"out of memory at test sample {number}")
        seconds.append(time.perf_counter() - start)
        peaks.append(peak_rss_mib(method) - rss_before)
        hits.append(prediction == features["labels"])
        items.append(int(features["sentence_index"][-1]) + 1)
    return {
        "status": "ok",
        "accuracy": statistics.fmean(hits),
        "num_test": len(hits),
        "seconds_per_sample": statistics.fmean(seconds),
        "peak_memory_mib": max(peaks),
        "peak_memory_method": method,
        "mean_items": statistics.fmean(items),
        "mean_length_tokens": statistics.fmean(rows["length_tokens"]),
    }


def in_fresh_process(job: dict) -> dict:
    """`evaluate(job)` in a new process, forked from a server that has imported this script (torch, rm_hf)
    once; a process killed by the kernel (out of memory) is recorded, any other failure raises."""
    result, exit_code = run_in_fresh_process(evaluate, job, preload="__main__")
    if exit_code == -signal.SIGKILL:
        return untested(job["num_test"], "killed by the kernel (SIGKILL), most likely out of memory")
    if result is None or exit_code != 0:
        raise RuntimeError(f"testing {job['model']} on qa{job['task']} at {length_name(job['length'])} failed "
                           f"(exit code {exit_code})")  # fmt: skip
    return result


# ---------------------------------------------------------------------------------------------------------
# Runs


def curriculum_name(args) -> str:
    """E.g. "train 0k,1k,4k x300" (the same steps at every length), "train 0k x2000, 1k x800, linear lr"."""
    lengths = [length_name(length) for length in args.train_lengths]
    if len(set(args.steps)) == 1:
        name = f"train {','.join(lengths)} x{args.steps[0]}"
    else:
        name = "train " + ", ".join(f"{length} x{steps}" for length, steps in zip(lengths, args.steps))
    return name if args.lr_schedule == "constant" else f"{name}, {args.lr_schedule} lr"


def test_at(args, name: str, folder: str, task: int, length: int) -> dict:
    test = load_babilong(args.data_dir, [task], length, "test")
    num_test = min(args.num_test, len(test))
    if name == "memn2n":
        stories = test.select(range(num_test)).with_format("arrow")["story"]
        longest = pc.max(pc.list_value_length(stories)).as_py()
        if longest > args.full_access_max_sentences:
            return untested(num_test, f"not run: stories of up to {longest} sentences, over "
                                      f"--full_access_max_sentences {args.full_access_max_sentences}")  # fmt: skip
    job = {"model": name, "folder": folder, "data_dir": str(args.data_dir), "task": task, "length": length,
           "num_test": num_test, "max_item_tokens": args.max_item_tokens, "chunk_sentences": args.chunk_sentences,
           "threads": args.threads, "test_config": args.test_config}  # fmt: skip
    return in_fresh_process(job)


def fragment_teacher(args, task: int, seed: int, training: dict) -> MemN2NForQuestionAnswering:
    """rm_memn2n_teacher's teacher: the memn2n model kept in --models_dir for this task, seed and training settings."""
    folder = args.models_dir / f"memn2n_qa{task}_seed{seed}"
    record = folder / KEPT_RECORD
    if not record.exists():
        sys.exit(f"rm_memn2n_teacher needs the memn2n model of qa{task}, seed {seed} in {folder}: run memn2n first "
                 f"(--models memn2n,rm_memn2n_teacher)")  # fmt: skip
    if (kept := json.loads(record.read_text())["settings"]) != {**training, "model": "memn2n"}:
        sys.exit(f"{folder} keeps a memn2n model trained with other settings "
                 f"({', '.join(differing({**training, 'model': 'memn2n'}, kept))}): it cannot be this run's teacher")  # fmt: skip
    return MemN2NForQuestionAnswering.from_pretrained(folder).eval()


def train_one(args, name: str, task: int, seed: int, data: dict, folder: Path, training: dict) -> dict:
    """Train one model through the curriculum and keep it (`keep_model`) in `folder`; the run's record."""
    torch.manual_seed(seed)
    model = build_model(name, data["tokenizer"], data["answers"], args.max_item_tokens, args.config)
    teacher = fragment_teacher(args, task, seed, training) if name == "rm_memn2n_teacher" else None
    record = train_stages(model, list(zip(data["stages"], args.steps)), seed, args.batch_size, args.learning_rate,
                          schedule=args.lr_schedule, rename=data["rename"], fragment_teacher=teacher)  # fmt: skip
    stages = [{"length": length_name(length), "steps": steps, "train_samples": len(rows), **stage}
              for length, steps, rows, stage in zip(args.train_lengths, args.steps, data["stages"], record["stages"])]  # fmt: skip
    run = {
        "model": name,
        "task": task,
        "seed": seed,
        "curriculum": curriculum_name(args),
        "vocabulary_size": len(data["tokenizer"]),
        "parameters": sum(p.numel() for p in model.parameters()),
        "rehearsal_sampler": model.config.sampler_mode if model.config.use_rehearsal else None,
        "train_cpu_seconds": sum(stage["train_cpu_seconds"] for stage in stages),
        "training": stages,
        # the file's own "command" is the latest invocation's; a resumed file keeps runs of several
        "trained_by": {**provenance(), "date": time.strftime("%Y-%m-%d")},
    }
    if model.config.use_rehearsal:  # does the sampler find the facts among the book sentences?
        run["supporting_fact_coverage"] = {
            length_name(length): fragment_coverage(model, rows[:COVERAGE_ROWS], fragment_teacher=teacher)
            for length, rows in zip(args.train_lengths, data["stages"])
        }
    keep_model(folder, model, data["tokenizer"], training, run)
    return run


# what a run's test does not depend on: a kept model is reused whatever they are
TEST_SETTINGS = ("test_lengths", "num_test", "chunk_sentences", "full_access_max_sentences", "test_config")


def run_one(args, name: str, task: int, seed: int, prepared, settings: dict) -> dict:
    """Train one model (or take the one kept in --models_dir), then test it at every test length; the run's record.
    `prepared()` gives the task's data, read only when a model is trained."""
    training = {key: value for key, value in settings.items() if key not in TEST_SETTINGS}
    training |= {"model": name, "task": task, "seed": seed, "curriculum": curriculum_name(args)}
    kept = None if args.models_dir is None else args.models_dir / f"{name}_qa{task}_seed{seed}"
    with tempfile.TemporaryDirectory() if kept is None else contextlib.nullcontext(kept) as folder:
        folder = Path(folder)
        run = kept_run(folder, training)
        if run is None:
            run = train_one(args, name, task, seed, prepared(), folder, training)
        run["test"] = {}
        for length in args.test_lengths:
            run["test"][length_name(length)] = cell = test_at(args, name, str(folder), task, length)
            shown = "" if cell["status"] != "ok" else (
                f"accuracy {cell['accuracy']:.3f} (n={cell['num_test']}), {cell['seconds_per_sample']:.3f} s and "
                f"{cell['peak_memory_mib']:.1f} MiB per sample"
            )  # fmt: skip
            print(f"{name} qa{task} seed {seed} at {length_name(length)}: {shown or cell['status']}", flush=True)
    return run


def stored_runs(path: Path, settings: dict, overwrite: bool) -> dict:
    """The runs of an earlier invocation with the same settings (resume); with other settings, none if
    `overwrite`, else stop rather than drop them."""
    if not path.exists() or overwrite:
        return {}
    earlier = json.loads(path.read_text())
    if earlier.get("settings") != settings:
        differ = differing(settings, earlier.get("settings") or {})
        sys.exit(f"{path} holds runs made with other settings ({', '.join(differ)}): pass --overwrite to replace "
                 f"them, or choose another --output_dir")  # fmt: skip
    return earlier["runs"]


# ---------------------------------------------------------------------------------------------------------
# Results


def summarise_cells(cells: list[dict]) -> dict:
    """One test length over seeds: mean accuracy and seconds, largest peak; not "ok" unless every seed ran."""
    done = [cell for cell in cells if cell["status"] == "ok"]
    problems = sorted({cell["status"] for cell in cells} - {"ok"})
    return {
        "status": "; ".join(problems) or "ok",
        "accuracy": statistics.fmean(c["accuracy"] for c in done) if done else None,
        "accuracy_per_seed": [cell["accuracy"] for cell in cells],
        "num_test": cells[0]["num_test"],
        "seconds_per_sample": statistics.fmean(c["seconds_per_sample"] for c in done) if done else None,
        "peak_memory_mib": max(c["peak_memory_mib"] for c in done) if done else None,
    }


def summarise(runs: dict) -> dict:
    """system ("model, curriculum") -> task ("qa1", ..., and the qa1-qa5 average when all five ran) -> per test
    length the mean over seeds."""
    groups = {}
    for run in runs.values():
        groups.setdefault(f"{run['model']}, {run['curriculum']}", {}).setdefault(run["task"], []).append(run)
    summary = {}
    for system, tasks in groups.items():
        summary[system] = {}
        for task, task_runs in sorted(tasks.items()):
            lengths = sorted({name for run in task_runs for name in run["test"]}, key=parse_length)
            summary[system][f"qa{task}"] = {
                "seeds": [run["seed"] for run in task_runs],
                "train_cpu_seconds": [run["train_cpu_seconds"] for run in task_runs],
                "lengths": {name: summarise_cells([run["test"][name] for run in task_runs]) for name in lengths},
            }
        if set(AVERAGE_TASKS) <= set(tasks):
            summary[system][AVERAGE] = {"lengths": task_average(summary[system])}
    return summary


def task_average(per_task: dict) -> dict:
    """Mean accuracy over qa1-qa5 at the lengths where all five have one."""
    cells = [per_task[f"qa{task}"]["lengths"] for task in AVERAGE_TASKS]
    common = [name for name in cells[0] if all(name in c and c[name]["accuracy"] is not None for c in cells)]
    return {name: {"accuracy": statistics.fmean(c[name]["accuracy"] for c in cells)} for name in common}


def panels_of(summary: dict) -> list[str]:
    """The tasks of `summary` in order (qa1, qa2, ..., qa10, ...), the qa1-qa5 average last."""
    tasks = {task for per_task in summary.values() for task in per_task}
    return sorted(tasks, key=lambda task: (task == AVERAGE, 0 if task == AVERAGE else int(task.removeprefix("qa"))))


def plot(summary: dict, path: Path) -> None:
    panels = panels_of(summary)
    fig, axes = plt.subplots(1, len(panels), figsize=(max(7, 6 * len(panels)), 5.2), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        for system, per_task in summary.items():
            cells = per_task.get(panel, {}).get("lengths", {})
            points = [
                (parse_length(name), 100 * c["accuracy"]) for name, c in cells.items() if c["accuracy"] is not None
            ]
            if points:
                ax.plot(*zip(*points), "o-", label=system)
        for system, values in QUOTED.get(panel, {}).items():
            ax.plot([parse_length(name) for name in values], list(values.values()), "x--", alpha=0.7,
                    label=f"{system} (quoted, not re-run)")  # fmt: skip
        ticks = sorted({x for line in ax.get_lines() for x in line.get_xdata()})
        # symlog: linear below 1k, so a 0-token story still has a place; logarithmic above
        ax.set_xscale("symlog", linthresh=1_000)
        ax.set_xticks(ticks, [length_name(int(x)) for x in ticks], fontsize=8)
        ax.set(title=panel, xlabel="story length (tokens)", ylabel="accuracy (%)", ylim=(0, 102))
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=2)  # below: lines stay visible
    fig.suptitle("RM (memory only) vs MemN2N (full access); dashed: quoted, not re-run (lengths in GPT-2 tokens)",
                 fontsize=9)  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")  # the legend below the axes stays whole
    plt.close(fig)


def cell_text(cell: dict | None) -> str:
    if cell is None:
        return "-"
    if cell["accuracy"] is None:
        return cell["status"].split(":")[0]  # "not run", "out of memory at test sample 3", ...
    text = f"{100 * cell['accuracy']:5.1f}"
    if "seconds_per_sample" in cell:  # not in the average over tasks
        text += f" n={cell['num_test']} {cell['seconds_per_sample']:.3f}s {cell['peak_memory_mib']:.0f}MiB"
    return text


def print_table(summary: dict) -> None:
    for panel in panels_of(summary):
        systems = [system for system in summary if panel in summary[system]]
        quoted = QUOTED.get(panel, {})
        lengths = {name for system in systems for name in summary[system][panel]["lengths"]}
        lengths = sorted(lengths | {name for values in quoted.values() for name in values}, key=parse_length)
        ours = {
            name: [cell_text(summary[system][panel]["lengths"].get(name)) for system in systems] for name in lengths
        }
        width = max(len(text) for text in [*systems, *itertools.chain(*ours.values())])
        print(f"\n{panel}: accuracy % (n test, seconds and peak MiB per sample)")
        print("  ".join([f"{'length':>6}", *(f"{system:<{width}}" for system in systems),
                         *(f"{name.split()[0] + '*':>6}" for name in quoted)]))  # fmt: skip
        for name in lengths:
            theirs = [f"{values[name]:6.1f}" if name in values else f"{'-':>6}" for values in quoted.values()]
            print("  ".join([f"{name:>6}", *(f"{text:<{width}}" for text in ours[name]), *theirs]))
        for system in quoted:
            print(f"  * {system}: {QUOTED_LABEL}")


def results(args, settings: dict, manifest: dict, runs: dict) -> dict:
    return {
        **provenance(),
        "arguments": json.loads(json.dumps(vars(args), default=str)),
        "settings": settings,
        "data": {"data_dir": str(args.data_dir), "manifest": manifest},
        "measured": MEASURED,
        "results": summarise(runs),
        "quoted": QUOTED,
        "runs": runs,
    }


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    manifest_path = args.data_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    manifest = {key: manifest.get(key) for key in ("settings", "books", "book_tokens")}
    # what makes runs comparable: everything but which runs are made now (models, seeds, tasks, curriculum) and how
    comparable = ("test_lengths", "num_test", "batch_size", "learning_rate", "min_word_frequency", "max_item_tokens",
                  "chunk_sentences", "full_access_max_sentences")  # fmt: skip
    # (--config, --test_config and --permute_names only when given: the settings of runs stored before the flag
    # existed stay equal)
    comparable += ("config",) if args.config else ()
    comparable += ("test_config",) if args.test_config else ()
    comparable += ("permute_names",) if args.permute_names else ()
    settings = json.loads(json.dumps({name: getattr(args, name) for name in comparable} | {"data": manifest}))
    output = args.output_dir / "babilong.json"
    runs = stored_runs(output, settings, args.overwrite)
    args.output_dir.mkdir(parents=True, exist_ok=True)

    for task in args.tasks:
        keys = {(name, seed): f"{name}, {curriculum_name(args)}, qa{task}, seed {seed}"
                for name in args.models for seed in args.seeds}  # fmt: skip
        todo = [(name, seed) for (name, seed), key in keys.items() if key not in runs]
        prepared = functools.cache(functools.partial(prepare_task, args, task))
        for name, seed in todo:
            runs[keys[name, seed]] = run_one(args, name, task, seed, prepared, settings)
            output.write_text(json.dumps(results(args, settings, manifest, runs), indent=2) + "\n")
    final = results(args, settings, manifest, runs)
    output.write_text(json.dumps(final, indent=2) + "\n")
    plot(final["results"], args.output_dir / "babilong.png")
    print_table(final["results"])
    print(f"\nwrote {output} and {args.output_dir / 'babilong.png'}")
    return final


if __name__ == "__main__":
    main()
