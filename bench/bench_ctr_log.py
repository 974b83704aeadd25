"""How fast `rm_hf.ctr_data.load_taobao` reads a full-size behaviour log, and how much memory it needs.

1. Generates a log in the Taobao `UserBehavior.csv` format (no header; `user_id,item_id,category_id,behavior_type,
   timestamp`, as in `../shared/data/taobao-sample`), written in chunks of users with numpy and pyarrow, so the
   generator never holds the whole log. Its shape follows the public log, scaled to `--rows`:
   - users: one per `--events_per_user` rows (250 by default: 40,000 users for 10M rows), so histories hold a
     few hundred behaviours (the public log has ~100 per user over 9 days; a long-history model wants more);
     each user's share is log-normal (sigma 1), ids drawn without repeats from the public range 1..1,018,011,
     rows grouped by user in increasing id order, as the public file is;
   - items: `--num_items` (1M) ids from the public range 1..5,163,070, popularity skewed (rank = N * u^3, u
     uniform), one category each among `--num_categories` (9,439, as public) ids from 1..5,162,429;
   - behaviours pv 89.5%, cart 5.5%, fav 2.9%, buy 2.1% (roughly the public shares); timestamps uniform over
     2017-11-25 to 2017-12-03 (Unix seconds), in no particular order within a user (the reader sorts).
2. Times `load_taobao` on it (default arguments: max_history 200, one sample per user) in a fresh process
   with one thread (OMP_NUM_THREADS=1, which also sizes pyarrow's pool), so the generator's memory does not
   count: wall and CPU seconds of the call, the process's peak RSS (`ru_maxrss`, imports included) and its RSS
   before the call, and a digest of the samples and vocabulary, equal digests meaning identical outputs.

Results go to `bench/results/ctr_log_reading.json`, one entry per (`--label`, rows), replacing an earlier entry
of the same pair. `before` is the reader of commit dbd53cd (one line at a time), run from a copy of that commit's
`src` put first on PYTHONPATH (recorded with the entry); `after` the one of this file's commit.

    python bench/bench_ctr_log.py                    # 10M rows (350 MiB)
    python bench/bench_ctr_log.py --rows 1000000 --label after
"""

import argparse
import hashlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
from cost_utils import RESULTS, current_rss_mib, provenance

BEHAVIOR_SHARES = {"pv": 0.895, "cart": 0.055, "fav": 0.029, "buy": 0.021}
FIRST_SECOND, LAST_SECOND = 1_511_539_200, 1_512_316_800  # 2017-11-25 and 2017-12-04 00:00 UTC
MAX_USER_ID, MAX_ITEM_ID, MAX_CATEGORY_ID = 1_018_011, 5_163_070, 5_162_429  # the public log's largest ids
CHUNK_ROWS = 1_000_000


def generate_log(path: Path, rows: int, events_per_user: int, num_items: int, num_categories: int, seed: int):
    """Write a Taobao-format log of about `rows` rows to `path`, one chunk of users at a time."""
    rng = np.random.default_rng(seed)
    num_users = max(1, rows // events_per_user)
    share = rng.lognormal(0.0, 1.0, num_users)
    rows_per_user = rng.multinomial(rows, share / share.sum())  # exactly `rows` in all
    user_ids = np.sort(rng.choice(MAX_USER_ID, num_users, replace=False) + 1)
    item_ids = rng.choice(MAX_ITEM_ID, num_items, replace=False) + 1
    category_ids = rng.choice(MAX_CATEGORY_ID, num_categories, replace=False) + 1
    item_category = category_ids[rng.integers(num_categories, size=num_items)]
    behaviors = pa.array(list(BEHAVIOR_SHARES))
    behavior_p = np.array(list(BEHAVIOR_SHARES.values()))

    chunk_ends = np.searchsorted(np.cumsum(rows_per_user), np.arange(CHUNK_ROWS, rows, CHUNK_ROWS), side="right")
    options = pa_csv.WriteOptions(include_header=False, quoting_style="none")
    schema = pa.schema([(name, pa.int64()) for name in ("user", "item", "category")])
    schema = schema.append(pa.field("behavior", pa.string())).append(pa.field("timestamp", pa.int64()))
    with pa_csv.CSVWriter(path, schema, write_options=options) as writer:
        for users in np.split(np.arange(num_users), chunk_ends):
            user = np.repeat(user_ids[users], rows_per_user[users])  # (n,)
            n = len(user)
            rank = (num_items * rng.random(n) ** 3).astype(np.int64)  # skewed popularity: low ranks common
            columns = [
                user,
                item_ids[rank],
                item_category[rank],
                behaviors.take(rng.choice(len(behavior_p), size=n, p=behavior_p)),
                rng.integers(FIRST_SECOND, LAST_SECOND, size=n),
            ]
            writer.write_table(pa.Table.from_arrays([pa.array(c) for c in columns], schema=schema))
    return {"generated_users": num_users}


def digest(datasets, vocab) -> str:
    """SHA-256 of every column of both splits and of the vocabulary: equal digests, identical outputs."""
    h = hashlib.sha256()
    for split in ("train", "test"):
        table = datasets[split].data.table
        for name in table.column_names:
            column = table.column(name).combine_chunks()
            if pa.types.is_list(column.type):
                h.update(column.value_lengths().to_numpy(zero_copy_only=False).tobytes())
                column = column.flatten()
            if pa.types.is_string(column.type):
                h.update("\n".join(column.to_pylist()).encode())
            else:
                h.update(column.to_numpy(zero_copy_only=False).astype(np.int64).tobytes())
    h.update(json.dumps(vocab._state(), sort_keys=True).encode())
    return h.hexdigest()


def measure_load(path: str) -> dict:
    """In this (fresh) process: load the log once; timings, memory, and what was read."""
    from rm_hf.ctr_data import load_taobao

    rss_before = current_rss_mib()
    load_average = os.getloadavg()[0]  # other jobs on the machine stretch the wall time, not the CPU time
    usage = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    datasets, vocab = load_taobao(path)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF)
    peak_kib = after.ru_maxrss  # KiB on Linux
    return {
        "wall_seconds": round(wall, 2),
        "cpu_seconds": round(after.ru_utime + after.ru_stime - usage.ru_utime - usage.ru_stime, 2),
        "peak_rss_mib": round(peak_kib / 1024, 1),
        "rss_before_load_mib": round(rss_before, 1),
        "pyarrow_threads": pa.cpu_count(),
        "load_average_1min": round(load_average, 2),
        "train_samples": len(datasets["train"]),
        "test_samples": len(datasets["test"]),
        "vocab_items": len(vocab.items),
        "vocab_categories": len(vocab.categories),
        "history_events": sum(
            len(pc.list_flatten(datasets[split].data.table.column("history_items"))) for split in ("train", "test")
        ),
        "digest": digest(datasets, vocab),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=10_000_000, help="Rows of the generated log.")
    parser.add_argument("--events_per_user", type=int, default=250, help="Rows per user on average.")
    parser.add_argument("--num_items", type=int, default=1_000_000)
    parser.add_argument("--num_categories", type=int, default=9_439)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--label", default="after", help="Name of this reader in the results (before / after).")
    parser.add_argument("--log", help="Read this log (kept) instead of generating one into a temporary folder.")
    parser.add_argument("--output", default=str(RESULTS / "ctr_log_reading.json"))
    parser.add_argument("--measure", help=argparse.SUPPRESS)  # the fresh process: load this file, print JSON
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure_load(args.measure)))
        return

    with tempfile.TemporaryDirectory() as folder:
        path = Path(args.log or Path(folder) / "UserBehavior.csv")
        shape = None
        if not path.exists():
            start = time.perf_counter()
            shape = generate_log(path, args.rows, args.events_per_user, args.num_items, args.num_categories, args.seed)
            print(f"generated {path} ({path.stat().st_size / 2**20:.0f} MiB) in {time.perf_counter() - start:.0f} s")
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        child = subprocess.run([sys.executable, __file__, "--measure", str(path)], env=env, capture_output=True,
                               text=True)  # fmt: skip
        if child.returncode:
            sys.exit(f"loading {path} failed:\n{child.stderr[-3000:]}")
        result = json.loads(child.stdout.strip().splitlines()[-1])
        size_mib = round(path.stat().st_size / 2**20, 1)

    run = provenance()
    entry = {"label": args.label, "rows": args.rows, "file_mib": size_mib, **(shape or {}), **result}
    entry.update(command=run["command"], pythonpath=os.environ.get("PYTHONPATH"), date=run["machine"]["date"])
    print(json.dumps(entry, indent=2))
    output = Path(args.output)
    record = json.loads(output.read_text()) if output.exists() else {"runs": []}
    record["machine"] = run["machine"]
    record["generator"] = {"events_per_user": args.events_per_user, "num_items": args.num_items,
                           "num_categories": args.num_categories, "seed": args.seed}  # fmt: skip
    record["runs"] = [r for r in record["runs"] if (r["label"], r["rows"]) != (args.label, args.rows)] + [entry]
    output.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
