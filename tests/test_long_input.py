"""Streaming a long input through `write` at inference keeps nothing across segments (issue 6, item 6; the
10k / 100k / 1M-token RSS measurement is `bench/bench_long_input.py`).

The peak of live tensor bytes is read from the PyTorch profiler's allocation records (every CPU allocation
and free, in order) rather than from RSS or timing: exact, and blind to other jobs on a shared machine.
"""

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from rm_hf import RehearsalMemoryModel

from .conftest import tiny_config

SEGMENT = 16
CHUNK = 2 * SEGMENT  # tokens per `write` call


@pytest.fixture(autouse=True)
def _one_thread():
    # Tiny tensors gain nothing from a second thread, and on a busy 2-core machine OpenMP threads that wait
    # for each other make the profiled loop many times slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def peak_tensor_bytes_while_writing(model, num_chunks: int, autograd: bool = False) -> tuple[int, torch.Tensor]:
    """Stream `num_chunks` chunks into a memory; return (peak live bytes allocated during the stream, memory)."""
    generator = torch.Generator().manual_seed(0)
    vocab = model.config.encoder_config.vocab_size
    with torch.inference_mode(not autograd):
        memory = model.write(model.init_memory(1), torch.randint(0, vocab, (1, CHUNK), generator=generator))
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            for _ in range(num_chunks):
                memory = model.write(memory, torch.randint(0, vocab, (1, CHUNK), generator=generator))
    # An op's allocations are its self memory usage; frees between ops are "[memory]" events (negative).
    events = sorted((e for e in prof.events() if e.self_cpu_memory_usage), key=lambda e: e.time_range.start)
    live = peak = 0
    for event in events:
        live += event.self_cpu_memory_usage
        peak = max(peak, live)
    return peak, memory


def test_inference_write_returns_memory_without_graph():
    model = RehearsalMemoryModel(tiny_config(segment_length=SEGMENT)).eval()
    assert all(p.requires_grad for p in model.parameters())
    _, memory = peak_tensor_bytes_while_writing(model, num_chunks=3)
    assert memory.grad_fn is None and not memory.requires_grad


def test_peak_tensor_memory_does_not_grow_with_input_length():
    model = RehearsalMemoryModel(tiny_config(segment_length=SEGMENT)).eval()
    short, memory = peak_tensor_bytes_while_writing(model, num_chunks=1)
    long, _ = peak_tensor_bytes_while_writing(model, num_chunks=25)  # 25x as many segments
    assert short > 0
    # Slack of one memory tensor: the memory written before profiling is freed during the first chunk,
    # a free without its allocation, which lowers the short run's count by exactly that much.
    assert long <= short + memory.numel() * memory.element_size(), (short, long)


def test_the_probe_sees_activations_kept_for_backward():
    # The same stream with autograd on keeps every segment's activations: the probe must see them grow,
    # or a flat result above would mean nothing.
    model = RehearsalMemoryModel(tiny_config(segment_length=SEGMENT)).eval()
    short, _ = peak_tensor_bytes_while_writing(model, num_chunks=1, autograd=True)
    long, memory = peak_tensor_bytes_while_writing(model, num_chunks=8, autograd=True)
    assert memory.grad_fn is not None
    assert long > 4 * short, (short, long)
