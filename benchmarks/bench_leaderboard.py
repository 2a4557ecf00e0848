"""Benchmark: a leaderboard over many MLflow runs (synthetic, in a SQLite tracking store).

    python benchmarks/bench_leaderboard.py --runs 10000

Targets (issue 6): fetching the runs from MLflow ≤ 30 s; building the
leaderboard from the fetched runs ≤ 5 s.

The store is made by MLflow itself (one real cell run logged through the
client), then that run's rows are cloned with SQL into N runs with varied
tags and metrics: 10 suites' worth of datasets × pairs × methods × seeds,
about 5% of them FAILED. Cloning keeps MLflow's own schema and takes seconds,
where logging 10,000 runs one by one would take most of an hour.
"""
from __future__ import annotations

import argparse
import random
import sqlite3
import tempfile
import time
import uuid
from pathlib import Path


def make_store(path: Path, runs: int, seed: int = 0) -> str:
    from kdbench.record import schema, store
    from kdbench.record.client import client
    from kdbench.record.writer import Writer

    uri = f"sqlite:///{path}"
    c = client(uri)
    exp = store.ensure_experiment(c, schema.experiment_name("bench"))
    metrics = {"top1": 50.0, "top5": 80.0, "best_top1": 51.0, "teacher_top1": 70.0, "params": 1e6, "macs": 1e8,
               "size_bytes": 4e6, "extra_params": 0.0, "train_seconds": 10.0,
               "latency_p50_ms.cpu.fp32": 2.0, "throughput_ips.cpu.fp32": 500.0,
               "latency_p50_ms.cpu-1t.fp32": 4.0, "throughput_ips.cpu-1t.fp32": 250.0}
    tags = {f"{schema.PREFIX}{k}": "x" for k in ("role", "spec_hash", "suite", "dataset", "pair", "method", "teacher",
                                          "student", "seed", "version", "recipe_hash")}
    template = Writer(c).start_run(exp, "template", tags)
    store.log_metrics(c, template, metrics)
    store.log_params(c, template, {"recipe.epochs": 10, "recipe.lr": 0.05, "recipe.batch_size": 64})
    c.set_terminated(template, "FINISHED")

    rng = random.Random(seed)
    db = sqlite3.connect(path)
    cols = {t: [r[1] for r in db.execute(f"PRAGMA table_info({t})")] for t in ("runs", "tags", "latest_metrics", "metrics", "params")}
    run_row = dict(zip(cols["runs"], db.execute("SELECT * FROM runs WHERE run_uuid=?", (template,)).fetchone()))
    methods = ["baseline", "kd", "fitnet", "crd", "at", "dkd", "pkt", "sp", "rkd", "nst"]
    datasets, pairs = [f"data{i}" for i in range(5)], [f"pair{i}" for i in range(10)]
    rows = {t: [] for t in cols}
    for i in range(runs):
        run_id = uuid.uuid4().hex
        m, d, p, s = methods[i % 10], datasets[(i // 10) % 5], pairs[(i // 50) % 10], i // 500
        status = "FAILED" if rng.random() < 0.05 else "FINISHED"
        rows["runs"].append({**run_row, "run_uuid": run_id, "name": f"{m}/{p}/{d}/seed{s}", "status": status,
                             "start_time": 1_700_000_000_000 + i})
        values = {
            "role": "cell", "spec_hash": f"{m}-{p}-{d}-{s}", "suite": "bench", "dataset": d, "pair": p, "method": m,
            "teacher": "t", "student": "st", "seed": str(s), "version": "0.1.0", "recipe_hash": "r",
        }
        rows["tags"] += [{"key": schema.PREFIX + k, "value": v, "run_uuid": run_id} for k, v in values.items()]
        if status == "FINISHED":
            for k, v in metrics.items():
                v = v * (1 + rng.uniform(-0.1, 0.1))
                rows["latest_metrics"].append({"key": k, "value": v, "timestamp": 0, "step": 0, "is_nan": 0, "run_uuid": run_id})
                rows["metrics"].append({"key": k, "value": v, "timestamp": 0, "step": 0, "is_nan": 0, "run_uuid": run_id})
        rows["params"] += [{"key": "recipe.epochs", "value": "10", "run_uuid": run_id}]
    for table, items in rows.items():
        if not items:
            continue
        names = [n for n in cols[table] if n in items[0]]
        db.executemany(f"INSERT INTO {table} ({','.join(names)}) VALUES ({','.join('?' * len(names))})",
                       [tuple(r[n] for n in names) for r in items])
    db.execute("DELETE FROM runs WHERE run_uuid=?", (template,))
    for t in ("tags", "latest_metrics", "metrics", "params"):
        db.execute(f"DELETE FROM {t} WHERE run_uuid=?", (template,))
    db.commit()
    db.close()
    return uri


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10_000)
    args = parser.parse_args()
    from kdbench.results.leaderboards import aggregate, fetch_runs, runs_frame

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        uri = make_store(Path(tmp) / "mlflow.db", args.runs)
        made = time.perf_counter() - t0
        t0 = time.perf_counter()
        runs = fetch_runs("bench", uri)
        fetched = time.perf_counter() - t0
        t0 = time.perf_counter()
        frame = runs_frame(runs)
        board = aggregate(frame)
        built = time.perf_counter() - t0
    print(f"store with {args.runs} runs made in {made:.1f}s")
    print(f"fetch from MLflow: {len(runs)} runs in {fetched:.1f}s (target ≤ 30 s) {'OK' if fetched <= 30 else 'MISSED'}")
    print(f"build leaderboard: {len(board)} rows in {built:.2f}s (target ≤ 5 s) {'OK' if built <= 5 else 'MISSED'}")
    print(f"failed cells counted: {int(board['failed'].sum())}; seeds per row: {int(board['seeds'].min())}–{int(board['seeds'].max())}")


if __name__ == "__main__":
    main()
