"""The ``local`` executor: the cells on this machine, side by side in worker processes (``--jobs N``).

- ``--jobs N`` (or ``KDBENCH_JOBS``): at most N cells at once, each in a
  worker process (``kdbench.running.workers``); ``auto`` (the default) takes
  what fits: one worker per GPU when training on CUDA, else as many as the
  cores allow at the recipe's ``threads`` per cell (one when unset) and memory
  allows at about 2 GiB each. The CPU threads are split between the workers.
- ``--jobs 1``, or a single cell: one after another in this process.
- Teachers first, once each; a worker that dies fails its cell, the others go
  on. Timing happens afterwards, in the measurement phase, with no worker
  running (``kdbench.measurement.phase``).
- Workers write their runs to the same tracking store as the driver; a SQLite
  store is written by one process at a time (``kdbench.record.client``).
"""
from __future__ import annotations

import os

import kdbench
from kdbench.running import workers


def _plan(jobs) -> tuple[int, int, list[int | None]]:
    """(workers, CPU threads per worker, GPU per worker) for these jobs."""
    cells = [job.cell for job in jobs if isinstance(job, kdbench.Job)]
    device = cells[0].device if cells else "cpu"
    threads = cells[0].recipe.threads if cells else None
    n = workers.requested_workers() or workers.default_workers(device, threads, len(jobs))
    n = min(n, len(jobs))
    gpus: list[int | None] = []
    if device == "cuda":
        import torch

        gpus = list(range(torch.cuda.device_count())) or [None]
    return n, max(1, workers.usable_cores() // n), gpus


def run_local(jobs, run_one):
    if not jobs:
        return []
    n, threads, gpus = _plan(jobs)
    if n <= 1:
        return [run_one(job) for job in jobs]
    return workers.run_in_workers(jobs, run_one, n, threads=threads, gpus=gpus, teacher_fn=kdbench.prepare_teacher)


def preflight(suite, tracking_uri: str, n_cells: int) -> None:
    workers.requested_workers()  # an invalid --jobs is one line before anything is recorded


def _set_jobs(ctx, param, value) -> None:
    if value is not None:
        os.environ[workers.JOBS_ENV] = str(value)


def _cli_options() -> tuple:
    import click

    return (click.Option(["--jobs", "-j"], expose_value=False, callback=_set_jobs, metavar="N|auto",
                         help="Cells at once for --executor local, each in a worker process (default: auto, "
                              "what fits the cores, memory and GPUs; 1: one after another in this process)."),)


@kdbench.hookimpl
def register_executors(register):
    register(kdbench.Executor("local", run_local, summary="this machine, --jobs cells at once (default)",
                              preflight=preflight, cli_options=_cli_options()))
