"""Click prediction on long behaviour histories: accuracy of Rehearsal Memory against baselines, and request cost.

1. Trains Rehearsal Memory (with and without rehearsal), mean pooling and DIN-style target attention on the
   same synthetic long-history task (the answer lies in the first ~10% of each history), with the same
   budget, through `examples/run_ctr.py`'s config and metrics, and reports each model's test AUC.
2. Times one request (scoring `--num_candidates` candidates for one user) at several history lengths:
   Rehearsal Memory from a `UserMemoryStore` (K slots plus a partial segment, whatever the history length)
   against target attention over the raw history. Median over `--repeats` requests.

Writes `bench/results/ctr.json` and `bench/results/ctr_cost.png`. The default is a quick run (8 minutes on
one CPU core); raise `--num_users`, `--history_length`, `--max_steps` and `--cost_lengths` for a fuller one:

    python bench/bench_ctr.py
    python bench/bench_ctr.py --num_users 10000 --history_length 2000 --max_steps 3000 \
        --cost_lengths 100 1000 10000 100000
"""

import json
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from cost_utils import provenance
from tqdm.auto import tqdm
from transformers import HfArgumentParser, set_seed

from rm_hf.ctr_data import ClickCollator
from rm_hf.memory_store import UserMemoryStore
from rm_hf.trainer import RehearsalMemoryTrainer, RehearsalTrainingArguments

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))  # the benchmark trains exactly as the example script does
import run_ctr  # noqa: E402

# name -> (run_ctr --model, use_rehearsal, memory_type)
VARIANTS = {
    "rm_rehearsal": ("rm", True, "slots"),
    "rm_no_rehearsal": ("rm", False, "slots"),
    "mean_pool": ("mean_pool", False, "slots"),
    "target_attention": ("target_attention", False, "slots"),
}


def all_variants(args) -> dict[str, tuple[str, bool, str]]:
    """The fixed variants plus the other memory types of `--memory_types`, trained as published (no rehearsal)."""
    others = {f"{memory_type}_memory": ("rm", False, memory_type) for memory_type in args.memory_types}
    return {**VARIANTS, **others}


@dataclass
class BenchArguments:
    num_users: int = field(default=1000, metadata={"help": "Synthetic users (80%% train, 20%% test)."})
    history_length: int = field(default=1000, metadata={"help": "Events per history."})
    num_items: int = field(default=50, metadata={"help": "Synthetic items."})
    num_categories: int = field(default=5, metadata={"help": "Synthetic categories."})
    num_interests: int = field(default=2, metadata={"help": "Synthetic interest categories per user."})
    max_steps: int = field(default=800, metadata={"help": "Optimizer steps per model (the same budget for all)."})
    batch_size: int = field(default=16)
    learning_rate: float = field(default=3e-3)
    num_memory_slots: int = field(default=8)
    memory_types: list[str] = field(
        default_factory=list, metadata={"help": "Other memory types to train too: expire_span, lamemo, key_value."}
    )
    memory_capacity: int = field(default=8, metadata={"help": "Their entries (8 = the slots of RM)."})
    segment_length: int = field(default=100)
    item_embedding_dim: int = field(default=16)
    hidden_size: int = field(default=32)
    num_layers: int = field(default=1)
    num_attention_heads: int = field(default=2)
    cost_lengths: list[int] = field(default_factory=lambda: [100, 1000, 10000], metadata={"help": "Lengths timed."})
    num_candidates: int = field(default=64, metadata={"help": "Candidates scored per request."})
    repeats: int = field(default=30, metadata={"help": "Requests timed per history length (median reported)."})
    seed: int = field(default=0)
    output_dir: str = field(default=str(ROOT / "bench" / "results"))


def train_and_evaluate(args: BenchArguments, variant: str, datasets, vocab, work_dir: str):
    """Train one variant with the shared budget; return (model, test AUC, training seconds)."""
    model_name, use_rehearsal, memory_type = all_variants(args)[variant]
    model_args = run_ctr.ModelArguments(
        model=model_name,
        use_rehearsal=use_rehearsal,
        num_memory_slots=args.num_memory_slots,
        memory_type=memory_type,
        memory_capacity=args.memory_capacity,
        segment_length=args.segment_length,
        item_embedding_dim=args.item_embedding_dim,
        hidden_size=args.hidden_size,
        num_layers=args.num_layers,
        num_attention_heads=args.num_attention_heads,
        dropout=0.1,  # the encoder's dropout of the recorded runs (run_ctr.py's own default is 0 since 0.3)
    )
    set_seed(args.seed)
    model = run_ctr.MODEL_CLASSES[model_name](run_ctr.build_config(model_args, vocab))
    training_args = RehearsalTrainingArguments(
        output_dir=f"{work_dir}/{variant}",
        max_steps=args.max_steps,
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=64,
        learning_rate=args.learning_rate,
        warmup_steps=0.05,
        save_strategy="no",
        logging_steps=max(1, args.max_steps // 5),
        label_names=["labels"],
        use_cpu=True,
        seed=args.seed,
        disable_tqdm=True,
        report_to="none",
    )
    trainer = RehearsalMemoryTrainer(
        model=model,
        args=training_args,
        train_dataset=datasets["train"],
        eval_dataset=datasets["test"],
        data_collator=ClickCollator(),
        compute_metrics=run_ctr.compute_metrics,
    )
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    return model.eval(), trainer.evaluate()["eval_auc"], seconds


def median_ms(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


@torch.no_grad()
def request_costs(args: BenchArguments, rm_model, attention_model, vocab, length: int) -> dict[str, float]:
    """Median milliseconds of one request (num_candidates candidates, one user) at one history length.

    The store is timed twice: with `length` events (a pending buffer of length % segment_length) and with
    the buffer full (segment_length - 1 events more or less), the most a request ever writes. Target
    attention gets the raw history as ready tensors: fetching it from storage is not counted.
    """
    segment = rm_model.config.segment_length
    full_buffer_length = length + (segment - 1 - length % segment)
    generator = torch.Generator().manual_seed(length)
    items = torch.randint(1, vocab.item_vocab_size, (full_buffer_length,), generator=generator)
    categories = torch.tensor(vocab.item_categories)[items]
    candidates = torch.randint(1, vocab.item_vocab_size, (args.num_candidates,), generator=generator)
    candidate_categories = torch.tensor(vocab.item_categories)[candidates]

    store = UserMemoryStore(rm_model)
    start = time.perf_counter()
    store.update("user", items[:length], categories[:length])  # a stream consumer's work, off the request path
    write_seconds = time.perf_counter() - start
    store.update("full_buffer_user", items, categories)
    store_ms = median_ms(lambda: store.predict("user", candidates, candidate_categories), args.repeats)
    full_buffer_ms = median_ms(
        lambda: store.predict("full_buffer_user", candidates, candidate_categories), args.repeats
    )
    attention_ms = median_ms(
        lambda: torch.sigmoid(
            attention_model.score_candidates(
                items[None, :length],
                categories[None, :length],
                None,
                None,
                candidates[None],
                candidate_categories[None],
            )
        ),
        args.repeats,
    )
    return {
        "history_length": length,
        "candidates": args.num_candidates,
        "pending_behaviours": length % segment,
        "store_ms": store_ms,
        "store_full_buffer_ms": full_buffer_ms,
        "target_attention_ms": attention_ms,
        "target_attention_over_store": attention_ms / store_ms,
        "target_attention_over_store_full_buffer": attention_ms / full_buffer_ms,
        "store_write_us_per_event": 1e6 * write_seconds / length,
    }


def plot(costs: list[dict], path: Path) -> None:
    lengths = [c["history_length"] for c in costs]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(lengths, [c["store_ms"] for c in costs], "o-", label="Rehearsal Memory store")
    ax.plot(lengths, [c["store_full_buffer_ms"] for c in costs], "o--", label="store, full pending buffer")
    ax.plot(lengths, [c["target_attention_ms"] for c in costs], "s-", label="target attention (raw history)")
    ax.set(xscale="log", yscale="log", xlabel="history length (events)", ylabel="ms per request")
    ax.set_title(f"Scoring {costs[0]['candidates']} candidates for one user", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main():
    (args,) = HfArgumentParser(BenchArguments).parse_args_into_dataclasses()
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    datasets, vocab = run_ctr.load_data(
        run_ctr.DataArguments(
            data="synthetic",
            num_users=args.num_users,
            history_length=args.history_length,
            num_items=args.num_items,
            num_categories=args.num_categories,
            num_interests=args.num_interests,
            dataset_seed=args.seed,
        )
    )

    models, auc, train_seconds, costs = {}, {}, {}, []
    variants = all_variants(args)
    stages = list(variants) + [f"cost@{length}" for length in args.cost_lengths]
    with tempfile.TemporaryDirectory() as work_dir, tqdm(stages, desc="bench_ctr", unit="stage") as progress:
        for stage in progress:
            progress.set_postfix_str(stage)
            if stage in variants:
                models[stage], auc[stage], train_seconds[stage] = train_and_evaluate(
                    args, stage, datasets, vocab, work_dir
                )
            else:
                length = int(stage.split("@")[1])
                costs.append(request_costs(args, models["rm_rehearsal"], models["target_attention"], vocab, length))

    results = {
        **provenance(),
        "arguments": asdict(args),
        "torch_threads": torch.get_num_threads(),
        "test_auc": auc,
        "train_seconds": train_seconds,
        "request_cost": costs,
    }
    (output_dir / "ctr.json").write_text(json.dumps(results, indent=2))
    plot(costs, output_dir / "ctr_cost.png")

    print(f"\nTest AUC, {args.max_steps} steps of batch {args.batch_size}, histories of {args.history_length} events:")
    for name in auc:
        print(f"  {name:<18} AUC {auc[name]:.3f}   ({train_seconds[name]:.0f} s training)")
    print(f"\nPer request ({args.num_candidates} candidates, median of {args.repeats} requests, ms):")
    print("   history    store  store, full buffer  target attention   ratio  ratio, full buffer")
    for c in costs:
        print(
            f"  {c['history_length']:>8}  {c['store_ms']:>7.2f}  {c['store_full_buffer_ms']:>18.2f}"
            f"  {c['target_attention_ms']:>16.2f}  {c['target_attention_over_store']:>5.1f}x"
            f"  {c['target_attention_over_store_full_buffer']:>17.1f}x"
        )
    print(f"\nWrote {output_dir / 'ctr.json'} and {output_dir / 'ctr_cost.png'}")


if __name__ == "__main__":
    main()
