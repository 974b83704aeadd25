"""What the CPU machines of CI cannot check: Rehearsal Memory on a CUDA GPU, in one short run.

On `--device` (default cuda), with the benchmarks' bAbI qa1 model of sentence items (`qa_utils.make_model`):
1. Correctness. Stories streamed into memory in whole segments give the answers of one pass; a saved model
   loads back (`AutoModelForQuestionAnswering`) with the same logits; under bf16 autocast the loss and the answers
   stay close to fp32's; a training step with rehearsal gives every parameter a finite gradient.
2. Speed. Examples per second of a whole training step (forward, backward, AdamW) with and without rehearsal, in
   fp32 and under bf16 autocast, at several batch sizes (medians of synchronised steps); the CPU with one thread
   beside it for scale. And the write of long stories (thousands of sentences, many stories at once) into memory
   under `torch.inference_mode()`: sentences written per second.
3. `examples/run_qa.py` end to end under torchrun, one process on the device (NCCL on a GPU), with --bf16: its exit
   status, test accuracy and training samples per second; its folder then answers through the QA pipeline
   (remote code) on the device.

    python bench/bench_gpu.py --babi_dir ../shared/data/babi                 # about 3.5 minutes on one H200
    python bench/bench_gpu.py --babi_dir ../shared/data/babi --device cpu --smoke   # CI: that it runs

Writes gpu.json to --output_dir (default bench/results/gpu); each part records its error instead of stopping the
others.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch
from cost_utils import provenance
from qa_utils import build_task, collator, make_model
from transformers import AutoModelForQuestionAnswering, pipeline

from rm_hf.babi import load_babi
from rm_hf.rehearsal import combine_losses

ROOT = Path(__file__).resolve().parents[1]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def to_device(batch: dict, device: torch.device) -> dict:
    return {name: value.to(device) if torch.is_tensor(value) else value for name, value in batch.items()}


def story_batch(rows: list[dict], model, device: torch.device) -> dict:
    """The collated stories and questions of `rows`, without labels and sampler weights (for answering)."""
    batch = collator(model)(rows)
    batch.pop("fragment_weights")
    batch.pop("labels")
    return to_device(batch, device)


def check_correctness(task, device: torch.device, output_dir: Path, train_steps_before_bf16: int) -> dict:
    tokenizer, answers, train, test = task
    torch.manual_seed(0)
    model = make_model(tokenizer, answers, "sentences").to(device).eval()
    batch = story_batch(test[:64], model, device)
    with torch.inference_mode():
        one_pass = model(**batch).logits
        memory = None
        chunk = 2 * model.config.segment_length  # whole segments per write, as streaming requires
        for start in range(0, batch["input_ids"].shape[1], chunk):
            memory = model.write(memory, batch["input_ids"][:, start : start + chunk],
                                 attention_mask=batch["attention_mask"][:, start : start + chunk])  # fmt: skip
        streamed = model.answer(memory, batch["question_input_ids"], batch["question_attention_mask"])
        model.save_pretrained(output_dir / "saved")
        reloaded = AutoModelForQuestionAnswering.from_pretrained(output_dir / "saved").to(device).eval()
        reloaded_logits = reloaded(**batch).logits
        with torch.autocast(device.type, dtype=torch.bfloat16):
            bf16_logits = model(**batch).logits.float()
    # bf16 on a trained model: a few hundred steps of qa1 in fp32, then the test loss both ways
    trained = make_model(tokenizer, answers, "sentences").to(device)
    train_steps(trained, train, device, steps=train_steps_before_bf16, batch_size=32, bf16=False)
    labelled = to_device(collator(trained)(test[:256]), device)
    labelled.pop("fragment_weights")
    trained.eval()
    with torch.inference_mode():
        fp32 = trained(**labelled)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            bf16 = trained(**labelled)
    # every parameter's gradient finite after one step with rehearsal
    trained.train()
    trained.zero_grad(set_to_none=True)
    combine_losses(trained(**to_device(collator(trained)(train[:32]), device))).backward()
    bad = [name for name, p in trained.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    record = {
        "streamed_vs_one_pass_max_abs_diff": (streamed - one_pass).abs().max().item(),
        "reloaded_vs_saved_max_abs_diff": (reloaded_logits - one_pass).abs().max().item(),
        "bf16_vs_fp32_untrained_max_abs_logit_diff": (bf16_logits - one_pass).abs().max().item(),
        "trained": {
            "steps": train_steps_before_bf16,
            "fp32_test_loss": fp32.loss.item(),
            "bf16_test_loss": bf16.loss.item(),
            "answers_agreeing": (fp32.logits.argmax(-1) == bf16.logits.argmax(-1)).float().mean().item(),
            "fp32_accuracy": (fp32.logits.argmax(-1) == labelled["labels"]).float().mean().item(),
        },
        "parameters_with_non_finite_gradient": bad,
    }
    checks = {
        "streaming_equals_one_pass": record["streamed_vs_one_pass_max_abs_diff"] <= 1e-4,
        "reload_gives_the_same_logits": record["reloaded_vs_saved_max_abs_diff"] <= 1e-5,
        "bf16_gives_the_same_answers": record["trained"]["answers_agreeing"] >= 0.95,
        "finite_gradients": not bad,
    }
    if failed := [name for name, ok in checks.items() if not ok]:
        raise AssertionError(f"failed: {', '.join(failed)}; measured: {record}")
    return record


def train_steps(model, rows, device, steps, batch_size, bf16) -> list[float]:
    """AdamW steps on consecutive batches of `rows` (the Trainer's loss weights); the synchronised seconds of each."""
    collate = collator(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    times = []
    for step in range(steps):
        first = (step * batch_size) % max(1, len(rows) - batch_size)
        batch = to_device(collate(rows[first : first + batch_size]), device)
        synchronize(device)
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = combine_losses(model(**batch))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times


def training_speed(task, device: torch.device, batch_sizes: list[int], steps: int) -> list[dict]:
    tokenizer, answers, train, _ = task
    rows = []
    for batch_size in batch_sizes:
        for bf16 in (False, True):
            for use_rehearsal in (True, False):
                torch.manual_seed(0)
                model = make_model(tokenizer, answers, "sentences", use_rehearsal=use_rehearsal).to(device)
                times = train_steps(model, train, device, steps + 3, batch_size, bf16)[3:]  # 3 warm-up steps
                seconds = statistics.median(times)
                rows.append({"device": device.type, "batch_size": batch_size, "bf16": bf16,
                             "use_rehearsal": use_rehearsal, "median_step_seconds": seconds,
                             "examples_per_second": batch_size / seconds})  # fmt: skip
    return rows


def long_write_speed(task, device: torch.device, num_stories: int, num_sentences: int) -> dict:
    """Sentences per second written into memory: `num_stories` stories of `num_sentences` sentences at once, made
    of training sentences repeated (the cost does not depend on what they say)."""
    tokenizer, answers, train, _ = task
    model = make_model(tokenizer, answers, "sentences").to(device).eval()
    sentences = collator(model)(train[:num_stories])["input_ids"]  # (S, N, W)
    repeats = -(-num_sentences // sentences.shape[1])
    story = sentences.repeat(1, repeats, 1)[:, :num_sentences].to(device)  # (S, num_sentences, W)
    with torch.inference_mode():
        model.write(None, story[:, :64])  # warm-up
        synchronize(device)
        start = time.perf_counter()
        memory = None
        for first in range(0, num_sentences, 1024):
            memory = model.write(memory, story[:, first : first + 1024])
        synchronize(device)
    seconds = time.perf_counter() - start
    return {"device": device.type, "stories": num_stories, "sentences_per_story": num_sentences,
            "seconds": seconds, "sentences_per_second": num_stories * num_sentences / seconds}  # fmt: skip


def run_qa_end_to_end(args, device: torch.device, output_dir: Path) -> dict:
    """run_qa.py under torchrun (one process; NCCL on a GPU), then its folder through the QA pipeline."""
    folder = output_dir / "run_qa"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "1",
               str(ROOT / "examples" / "run_qa.py"), "--babi_dir", args.babi_dir, "--tasks", "1",
               "--babi_subset", args.babi_subset, "--story_items", "sentences", "--segment_length", "4",
               "--max_steps", str(args.run_qa_steps),
               "--learning_rate", "1e-3", "--warmup_steps", str(min(150, args.run_qa_steps // 10)),
               "--output_dir", str(folder), "--report_to", "none", "--save_strategy", "no"]  # fmt: skip
    command += ["--bf16", "true", "--ddp_backend", "nccl"] if device.type == "cuda" else ["--use_cpu"]
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    record = {"command": " ".join(command[2:]), "returncode": result.returncode,
              "wall_seconds": time.perf_counter() - start}  # fmt: skip
    if result.returncode != 0:
        raise RuntimeError(f"{record}\n{(result.stdout + result.stderr)[-4000:]}")
    metrics = json.loads((folder / "all_results.json").read_text())
    record |= {name: metrics.get(name) for name in ("eval_accuracy", "train_samples_per_second", "train_runtime")}
    qa = pipeline("rehearsal-memory-qa", model=str(folder), trust_remote_code=True, device=device)
    record["pipeline_answers"] = qa(
        "Mary moved to the bathroom. John went to the hallway. Mary travelled to the office.",
        ["Where is Mary?", "Where is John?"],
    )
    return record


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--babi_dir", required=True, help="bAbI v1.2 folder (its qa1 is read).")
    parser.add_argument("--babi_subset", default="en-10k", help="en (1k) or en-10k.")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[32, 256])
    parser.add_argument("--steps", type=int, default=30, help="Timed training steps per setting (median).")
    parser.add_argument("--long_stories", type=int, default=64, help="Stories written at once for the write speed.")
    parser.add_argument("--long_sentences", type=int, default=8192, help="Sentences per story for the write speed.")
    parser.add_argument("--correctness_train_steps", type=int, default=300, help="fp32 steps before the bf16 check.")
    parser.add_argument("--run_qa_steps", type=int, default=1500)
    parser.add_argument("--output_dir", default=str(ROOT / "bench" / "results" / "gpu"))
    parser.add_argument("--smoke", action="store_true", help="Tiny sizes: a CI check that every part runs.")
    args = parser.parse_args()
    if args.smoke:
        args.batch_sizes, args.steps, args.long_stories, args.long_sentences = [4], 2, 2, 64
        args.correctness_train_steps, args.run_qa_steps = 4, 4
    device = torch.device(args.device)
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    results = {**provenance(), "torch": torch.__version__,
               "cuda_device": torch.cuda.get_device_name(device) if device.type == "cuda" else None}  # fmt: skip
    task = build_task(*(load_babi(args.babi_dir, [1], split, args.babi_subset) for split in ("train", "test")))
    if args.smoke:
        task = (*task[:2], task[2][:64], task[3][:64])
    work = Path(tempfile.mkdtemp(prefix="bench_gpu_"))
    parts = {
        "correctness": lambda: check_correctness(task, device, work, args.correctness_train_steps),
        "training_speed": lambda: training_speed(task, device, args.batch_sizes, args.steps),
        "training_speed_cpu_one_thread": lambda: training_speed(task, torch.device("cpu"), [32], args.steps),
        "long_write_speed": lambda: long_write_speed(task, device, args.long_stories, args.long_sentences),
        "run_qa_end_to_end": lambda: run_qa_end_to_end(args, device, work),
    }
    torch.set_num_threads(1)  # the CPU row's setting; the GPU parts do not depend on it
    for name, part in parts.items():
        start = time.perf_counter()
        try:
            results[name] = part()
        except Exception:  # a broken part is recorded and the others still run
            results[name] = {"error": traceback.format_exc()[-4000:]}
        print(f"{name} ({time.perf_counter() - start:.0f} s): {json.dumps(results[name])[:2000]}", flush=True)
        (output_dir / "gpu.json").write_text(json.dumps(results, indent=2) + "\n")
    failed = [name for name in parts if "error" in results[name]]
    sys.exit(f"parts that failed: {', '.join(failed)}" if failed else 0)


if __name__ == "__main__":
    main()
