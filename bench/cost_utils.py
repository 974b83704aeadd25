"""Helpers shared by the benchmarks: the benchmark model, streaming writes, the full-access baseline, peak-RSS
measurement in a fresh process, and a Trainer callback that counts training CPU seconds against a budget.

Peak memory is the peak resident set size (RSS) of a new process per measurement, which builds the model,
warms it up on a short input, then does one measured job (stream L tokens into memory, or answer one
question by reading the raw input). Reported is the peak during the job minus the RSS just before it: on
Linux the kernel's high-water mark is reset by writing 5 to /proc/self/clear_refs, then read back as VmHWM
from /proc/self/status. Where that reset is unavailable the fallback is `getrusage(RUSAGE_SELF).ru_maxrss`,
the peak since the process started, which can only overstate the job's peak (the JSON names the method
used). One process per measurement keeps peaks independent: allocator caches left by one length never hide
growth at the next. This needs no tracemalloc, which would not see PyTorch's allocations anyway.
"""

import argparse
import gc
import multiprocessing
import os
import platform
import resource
import shlex
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import TrainerCallback

from rm_hf import RehearsalMemoryConfig, RehearsalMemoryForQuestionAnswering

RESULTS = Path(__file__).resolve().parent / "results"
SMOKE_MODEL = {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64, "max_positions": 64,
               "num_slots": 4, "segment_length": 16, "chunk_tokens": 128}  # fmt: skip


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The benchmark model (a realistic small size by default) and how the input is streamed."""
    group = parser.add_argument_group("model")
    group.add_argument("--hidden_size", type=int, default=128, help="Encoder width; also the memory width.")
    group.add_argument("--num_layers", type=int, default=2)
    group.add_argument("--num_heads", type=int, default=4)
    group.add_argument("--intermediate_size", type=int, default=512)
    group.add_argument("--max_positions", type=int, default=512,
                       help="Encoder max length: the full-access baseline's window.")  # fmt: skip
    group.add_argument("--num_slots", type=int, default=16)
    group.add_argument("--memory_type", default="slots", help="slots (RM), expire_span, lamemo or key_value")
    group.add_argument("--memory_capacity", type=int, default=16, help="Entries of expire_span, lamemo and key_value.")
    group.add_argument("--segment_length", type=int, default=64)
    group.add_argument("--vocab_size", type=int, default=1000)
    group.add_argument("--num_labels", type=int, default=10, help="Answer vocabulary of the QA head.")
    group.add_argument("--question_length", type=int, default=12)
    group.add_argument("--chunk_tokens", type=int, default=1024, help="Tokens handed to each `write` call.")
    group.add_argument("--threads", type=int, default=1,
                       help="torch intra-op threads. 1 by default: on a shared 2-core machine two OpenMP threads "
                            "competing with other jobs ran 50x slower than one.")  # fmt: skip
    group.add_argument("--seed", type=int, default=0)


def model_spec(args) -> dict:
    names = ("hidden_size", "num_layers", "num_heads", "intermediate_size", "max_positions", "num_slots",
             "memory_type", "memory_capacity", "segment_length", "vocab_size", "num_labels", "question_length",
             "chunk_tokens", "threads", "seed")  # fmt: skip
    return {name: getattr(args, name) for name in names}


def build_model(spec: dict, use_rehearsal: bool = False) -> RehearsalMemoryForQuestionAnswering:
    """An untrained QA model with random weights: cost does not depend on what the weights are."""
    torch.set_num_threads(spec["threads"])
    torch.manual_seed(spec["seed"])
    encoder = {"model_type": "bert", "vocab_size": spec["vocab_size"], "hidden_size": spec["hidden_size"],
               "num_hidden_layers": spec["num_layers"], "num_attention_heads": spec["num_heads"],
               "intermediate_size": spec["intermediate_size"], "max_position_embeddings": spec["max_positions"]}  # fmt: skip
    config = RehearsalMemoryConfig(
        encoder_config=encoder, num_memory_slots=spec["num_slots"], num_memory_heads=spec["num_heads"],
        memory_type=spec.get("memory_type", "slots"), memory_capacity=spec.get("memory_capacity", 16),
        segment_length=spec["segment_length"], rehearsal_num_heads=spec["num_heads"], use_rehearsal=use_rehearsal,
        id2label={i: f"answer{i}" for i in range(spec["num_labels"])},
    )  # fmt: skip
    return RehearsalMemoryForQuestionAnswering(config).eval()


def random_ids(spec: dict, shape, generator: torch.Generator) -> torch.Tensor:
    return torch.randint(5, spec["vocab_size"], shape, generator=generator)


def stream_write(model, spec: dict, length: int, progress: bool = False, autograd: bool = False):
    """Write `length` random tokens into a fresh memory, `chunk_tokens` at a time; return (memory, seconds).

    The tokens are drawn chunk by chunk and dropped after their `write`: the input is never held whole, as
    when reading a stream, so peak memory measures the model and not the input. Inference runs under
    `torch.inference_mode()`; `autograd=True` records the graph instead (what training keeps alive).
    """
    generator = torch.Generator().manual_seed(spec["seed"] + length)
    rm = model.rehearsal_memory
    chunk = spec["chunk_tokens"]
    bar = tqdm(total=length, unit="tok", unit_scale=True, desc=f"write {length:,} tokens", disable=not progress)
    with torch.inference_mode(not autograd), bar:
        start = time.perf_counter()
        memory = rm.init_memory(1)
        for first in range(0, length, chunk):
            size = min(chunk, length - first)
            memory = rm.write(memory, random_ids(spec, (1, size), generator))
            bar.update(size)
        seconds = time.perf_counter() - start
    return memory, seconds


def encode_raw_input(model, input_ids: torch.Tensor, window: int, windows_per_batch: int = 8) -> torch.Tensor:
    """The full-access baseline's reading: (1, L) ids -> (1, L, E) token features from the same backbone.

    The encoder attends over all tokens at once when they fit in its max length; longer inputs are cut
    into windows of that length, encoded a few windows per batch (bounded activations), and concatenated.
    """
    length = input_ids.shape[1]
    padded = -length % window
    ids = torch.nn.functional.pad(input_ids, (0, padded)).view(-1, window)  # (W, window)
    mask = torch.ones(1, length + padded, dtype=torch.long)
    mask[:, length:] = 0  # the last window's padding
    mask = mask.view(-1, window)
    encoder = model.rehearsal_memory.encoder
    features = [
        encoder(
            input_ids=ids[i : i + windows_per_batch], attention_mask=mask[i : i + windows_per_batch]
        ).last_hidden_state
        for i in range(0, ids.shape[0], windows_per_batch)
    ]
    return torch.cat(features).view(1, -1, features[0].shape[-1])[:, :length]


def full_access_answer(model, question_ids: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """The question attends over every token feature instead of K slots: the RM head's own reader and
    classifier (same width, same hops), with the raw input's features standing in for the memory."""
    return model.classifier(model.reader(model.encode_question(question_ids), features))


def seconds(fn) -> float:
    """Wall-clock seconds of one call."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# --- peak RSS -------------------------------------------------------------------------------------------


def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def current_rss_mib() -> float:
    kib = _status_kib("VmRSS")
    if kib is None:  # no /proc: the peak so far is the best available upper bound
        return _maxrss_mib()
    return kib / 1024


def _maxrss_mib() -> float:
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss / 2**20 if sys.platform == "darwin" else maxrss / 1024  # bytes on macOS, KiB on Linux


def reset_peak_rss() -> str:
    """Reset the kernel's RSS high-water mark; return the method `peak_rss_mib` will use."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return "VmHWM after clear_refs reset"
    except OSError:
        return "ru_maxrss since process start (upper bound)"


def peak_rss_mib(method: str) -> float:
    kib = _status_kib("VmHWM") if method.startswith("VmHWM") else None
    return kib / 1024 if kib is not None else _maxrss_mib()


# --- the child process ------------------------------------------------------------------------------------


def measure(job: dict) -> dict:
    """One measured job in this (fresh) process.

    modes: "write" streams `length` tokens under inference_mode; "write_with_grad" streams them with
    autograd on, which keeps every segment's activations alive (the contrast: what the property rules
    out, and proof that the measurement would see it); "full_access" answers one question by encoding
    the raw input and attending over all its token features.
    """
    spec, mode, length = job["spec"], job["mode"], job["length"]
    model = build_model(spec)
    generator = torch.Generator().manual_seed(spec["seed"])
    question = random_ids(spec, (1, spec["question_length"]), generator)
    window = spec["max_positions"]
    # warm-up on a short input: one-off allocations (kernels, thread pools) are not the job's cost
    warm = {**spec, "chunk_tokens": spec["segment_length"]}
    stream_write(model, warm, 2 * spec["segment_length"])
    with torch.inference_mode():
        full_access_answer(model, question, encode_raw_input(model, random_ids(spec, (1, window), generator), window))

    gc.collect()
    rss_before = current_rss_mib()
    method = reset_peak_rss()
    result = {"mode": mode, "length": length, "rss_before_mib": rss_before, "peak_method": method}
    if mode in ("write", "write_with_grad"):
        memory, elapsed = stream_write(
            model, spec, length, progress=job.get("progress", False), autograd=mode == "write_with_grad"
        )
        result["memory_has_grad_fn"] = memory.grad_fn is not None
    elif mode == "full_access":
        input_ids = random_ids(spec, (1, length), generator)  # the baseline must keep the raw input
        with torch.inference_mode():
            elapsed = seconds(lambda: full_access_answer(model, question, encode_raw_input(model, input_ids, window)))
    else:
        raise ValueError(f"unknown mode {mode!r}")
    peak = peak_rss_mib(method)
    result.update(seconds=elapsed, peak_rss_mib=peak, peak_rss_delta_mib=peak - rss_before)
    return result


def _send_result(function, argument, connection) -> None:
    connection.send(function(argument))
    connection.close()


def run_in_fresh_process(function, argument, preload: str = "rm_hf") -> tuple[object | None, int]:
    """`function(argument)` in a new process, one per call: its result (None when it sent none) and exit code.

    New processes are forked from a fork server that has already imported `preload` (rm_hf brings torch and
    transformers: 8 s or more per process here otherwise); each one starts with no tensors, no allocator cache
    and its own RSS high-water mark. `function` must be importable from `preload` or this module.
    """
    context = multiprocessing.get_context("forkserver" if "forkserver" in multiprocessing.get_all_start_methods()
                                          else "spawn")  # fmt: skip
    if context.get_start_method() == "forkserver":
        context.set_forkserver_preload([preload])
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=_send_result, args=(function, argument, sender))
    process.start()
    sender.close()
    try:
        result = receiver.recv()
    except EOFError:
        result = None
    process.join()
    return result, process.exitcode


def measure_in_fresh_process(spec: dict, mode: str, length: int, progress: bool = False) -> dict:
    """Run `measure` in a new process (`run_in_fresh_process`) and return its result."""
    job = {"spec": spec, "mode": mode, "length": length, "progress": progress}
    result, exit_code = run_in_fresh_process(measure, job)
    if result is None or exit_code != 0:
        raise RuntimeError(f"measuring {mode} at length {length} failed (exit code {exit_code})")
    return result


def machine() -> dict:
    """CPU model (lscpu's "Model name"), cores, torch version and date: every result records them."""
    model_name = platform.processor() or platform.machine()
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        model_name = next(
            line.split(":", 1)[1].strip() for line in lscpu.splitlines() if line.startswith("Model name")
        )
    except (OSError, subprocess.CalledProcessError, StopIteration):
        pass
    return {"cpu": model_name, "cores": os.cpu_count(), "torch": torch.__version__, "date": date.today().isoformat()}


def provenance() -> dict:
    """The machine and the exact command line that produced a result, for the top of every results JSON."""
    # quoted as a shell reads it, so a flag with spaces (--extra "name=--flags ...") or an empty one runs again as given
    return {"machine": machine(), "command": shlex.join(["python", f"bench/{Path(sys.argv[0]).name}", *sys.argv[1:]])}


class TrainingCpuClock(TrainerCallback):
    """Training CPU seconds of this process (`time.process_time()`: every thread's user and system time), from the
    Trainer's `on_train_begin` to the end of each optimizer step, less every evaluation (the stretch from the end of
    the step before it to its end). Training stops at the end of the step that spends `cpu_budget`. `step_seconds`
    holds each step's CPU; `fraction()`, the share of the budget spent so far (a learning-rate schedule's clock)."""

    def __init__(self, cpu_budget: float):
        self.cpu_budget = cpu_budget
        self.train_cpu, self.mark, self.step_seconds = 0.0, None, []

    def fraction(self) -> float:
        running = 0.0 if self.mark is None else time.process_time() - self.mark
        return min(1.0, (self.train_cpu + running) / self.cpu_budget)

    def on_train_begin(self, args, state, control, **kwargs):
        self.mark = time.process_time()  # start of the training stretch not yet counted

    def on_step_end(self, args, state, control, **kwargs):
        now = time.process_time()
        self.step_seconds.append(now - self.mark)
        self.train_cpu += now - self.mark
        self.mark = now
        if self.train_cpu >= self.cpu_budget:
            control.should_training_stop = True

    def on_evaluate(self, args, state, control, **kwargs):
        self.mark = time.process_time()  # the evaluation's CPU is not training's
