"""Executor figures of issue 7: overhead per cell, and Ray's speed-up on CPU-light cells.

    python benchmarks/bench_executors.py                 # starts its own `mlflow server`
    python benchmarks/bench_executors.py --tracking-uri http://127.0.0.1:5000 --cells 8

1. Overhead per cell (dispatch + MLflow logging) on a no-op method: cells of one
   training step on 16 glyphs, no hardware measurement, teacher already cached.
   ``local`` and ``ray`` (``cpus_per_cell: 2`` on a 2-CPU cluster, so one cell at a
   time and the figure is per cell, not divided by parallelism). Reported: wall
   time per cell, and the same minus the cell's own training time. Bound: ≤ 2 s.
2. Speed-up: 8 CPU-light cells (baseline and kd × 4 seeds, tiny pair, 512
   glyphs, 2 epochs) with ``local`` against ``ray`` on a local cluster of 2
   workers (``ray.init(num_cpus=2)``, ``cpus_per_cell: 1``). Bound: ray ≤ 0.65× local.

Both executors log to the same MLflow tracking server (what the ray executor
needs for more than one worker). Ray's workers are started by a warm-up run
first (a running cluster); the cold figure (worker start-up included) is
printed too. CPU load from other processes spoils the figures: the load
average is printed with each. Exit status 1 when a figure misses its bound.
Not part of the pytest run.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

OVERHEAD_S = 2.0
SPEEDUP = 0.65

NOOP_PLUGIN = '''
import torch.nn.functional as F
import kdbench

class Noop(kdbench.Distiller):
    """Plain cross-entropy, no teacher: the cheapest thing a cell can train."""
    needs_teacher = False
    def loss_terms(self, batch):
        return {"ce": F.cross_entropy(batch.student.logits, batch.targets)}

@kdbench.hookimpl
def register_methods(register):
    register(kdbench.Method("noop", Noop, summary="benchmark: no-op method"))
'''

SUITE = """
name: {name}
version: 1
methods: {methods}
pairs: [tiny]
datasets: ["{dataset}"]
seeds: {seeds}
hardware: []
recipe: {{epochs: {epochs}, batch_size: {batch}, eval_batch_size: 128}}
resources: {{cpus_per_cell: {cpus}}}
"""


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load {one:.2f}/{five:.2f}/{fifteen:.2f} on {os.cpu_count()} CPUs"


def start_server(root: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    cmd = [str(mlflow_bin) if mlflow_bin.exists() else "mlflow", "server",
           "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--artifacts-destination", str(root / "mlartifacts"),
           "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "/health", timeout=2):
                return proc, url
        except OSError:
            if proc.poll() is not None:
                break
            time.sleep(0.5)
    raise SystemExit("mlflow server did not start")


def write_suite(root: Path, name: str, *, methods, dataset, seeds, epochs, batch, cpus) -> str:
    path = root / f"{name}.yaml"
    path.write_text(SUITE.format(name=name, methods=json.dumps(methods), dataset=dataset, seeds=json.dumps(seeds),
                                 epochs=epochs, batch=batch, cpus=cpus))
    return str(path)


def timed(host, suite_path: str, executor: str, plugins_dir: str) -> tuple[float, list]:
    from kdbench.running.runner import Overrides, prepare, run_suite

    suite, cells = prepare(host, suite_path, Overrides(executor=executor))
    start = time.perf_counter()
    result = run_suite(host, suite, cells, force=True, command=["bench_executors"])
    wall = time.perf_counter() - start
    bad = [r for r in result.results if r.status != "FINISHED"]
    if bad:
        raise SystemExit(f"{executor}: {len(bad)} cell(s) did not finish: {bad[0].error}")
    return wall, result.results


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tracking-uri", help="an MLflow tracking server (default: start one here)")
    ap.add_argument("--cells", type=int, default=8, help="cells per figure (even; default 8)")
    args = ap.parse_args()
    seeds = list(range(max(1, args.cells // 2)))

    root = Path(tempfile.mkdtemp(prefix="kdbench-bench-executors-"))
    plugins = root / "plugins"
    plugins.mkdir()
    (plugins / "noop.py").write_text(NOOP_PLUGIN)
    os.environ["KDBENCH_CACHE_DIR"] = str(root / "cache")
    server = None
    if args.tracking_uri:
        uri = args.tracking_uri
    else:
        server, uri = start_server(root)
    os.environ["MLFLOW_TRACKING_URI"] = uri
    print(f"tracking {uri}; {load()}", flush=True)

    import ray

    from kdbench.core.host import get_host

    host = get_host(str(plugins))
    report: dict = {"tracking_uri": uri, "cpus": os.cpu_count()}
    ok = True
    try:
        noop = dict(methods=["noop"], dataset="glyphs(num_train=16,num_test=16)", seeds=seeds, epochs=1, batch=16)
        local_noop = write_suite(root, "bench-overhead-local", **noop, cpus=1)
        ray_noop = write_suite(root, "bench-overhead-ray", **noop, cpus=2)  # one cell at a time on 2 CPUs
        light = dict(methods=["baseline", "kd"], dataset="glyphs(num_train=512,num_test=128)", seeds=seeds, epochs=2,
                     batch=64, cpus=1)
        light_path = write_suite(root, "bench-light", **light)

        # ---------------------------------------------------------------- 1. overhead per cell
        timed(host, local_noop, "local", str(plugins))  # warm-up: teacher cached, imports done
        wall, results = timed(host, local_noop, "local", str(plugins))
        n = len(results)
        train = statistics.mean(r.metrics["train_seconds"] for r in results)
        report["overhead_local"] = {"cells": n, "per_cell_s": wall / n, "minus_training_s": wall / n - train,
                                    "load": load()}
        print(f"overhead local: {n} no-op cells in {wall:.1f}s: {wall / n:.2f} s/cell "
              f"({wall / n - train:.2f} s without the cell's training); {load()}", flush=True)

        t0 = time.perf_counter()
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        init_s = time.perf_counter() - t0
        cold, _ = timed(host, ray_noop, "ray", str(plugins))  # starts the workers
        wall, results = timed(host, ray_noop, "ray", str(plugins))
        train = statistics.mean(r.metrics["train_seconds"] for r in results)
        report["overhead_ray"] = {"cells": n, "per_cell_s": wall / n, "minus_training_s": wall / n - train,
                                  "cold_per_cell_s": cold / n, "ray_init_s": init_s, "load": load()}
        print(f"overhead ray:   {n} no-op cells in {wall:.1f}s: {wall / n:.2f} s/cell "
              f"({wall / n - train:.2f} s without the cell's training); cold (worker start-up) {cold / n:.2f} s/cell, "
              f"ray.init {init_s:.1f}s; {load()}", flush=True)
        for name in ("overhead_local", "overhead_ray"):
            if report[name]["per_cell_s"] > OVERHEAD_S:
                ok = False
                print(f"  MISSED: {name} {report[name]['per_cell_s']:.2f} s/cell > {OVERHEAD_S} s", flush=True)

        # ---------------------------------------------------------------- 2. speed-up on 8 CPU-light cells
        timed(host, light_path, "local", str(plugins))  # warm-up: the kd teacher is trained and cached
        local_wall, results = timed(host, light_path, "local", str(plugins))
        load_local = load()
        ray_wall, _ = timed(host, light_path, "ray", str(plugins))
        load_ray = load()
        ratio = ray_wall / local_wall
        report["speedup"] = {"cells": len(results), "local_s": local_wall, "ray_s": ray_wall, "ratio": ratio,
                             "load_local": load_local, "load_ray": load_ray, "torch_threads_local": _threads()}
        print(f"speed-up: {len(results)} CPU-light cells: local {local_wall:.1f}s ({load_local}), "
              f"ray with 2 workers {ray_wall:.1f}s ({load_ray}): ratio {ratio:.2f} (bound ≤ {SPEEDUP})", flush=True)
        if ratio > SPEEDUP:
            ok = False
            print(f"  MISSED: ratio {ratio:.2f} > {SPEEDUP}", flush=True)
    finally:
        if ray.is_initialized():
            ray.shutdown()
        if server is not None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
    print(json.dumps(report, indent=2))
    return 0 if ok else 1


def _threads() -> int:
    import torch

    return torch.get_num_threads()


if __name__ == "__main__":
    sys.exit(main())
