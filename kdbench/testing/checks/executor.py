"""``check_executor``: an executor runs every job once and returns the results in job order."""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from kdbench.core.api import Executor
from kdbench.core.config import REFERENCE_METHOD
from kdbench.core.host import PluginHost
from kdbench.testing.contract import fail
from kdbench.testing.hosts import resolve
from kdbench.testing.tiny import SuiteResult, run_tiny_suite


def echo_job(job: Any) -> tuple[str, Any, int]:
    """A picklable stand-in for ``kdbench.run_job``: returns the job with the worker's pid."""
    return ("done", job, os.getpid())


@dataclass
class ExecutorReport:
    name: str
    worker_pids: list[int]
    suite_result: SuiteResult | None = None


def check_executor(
    executor: str | Executor,
    *,
    host: PluginHost | None = None,
    jobs: int = 4,
    end_to_end: bool = False,
    methods: Sequence[str] = (REFERENCE_METHOD,),
    tracking_uri: str | None = None,
) -> ExecutorReport:
    """Check an executor; raise :class:`ContractError` if not.

    ``run(jobs, run_one)`` must call ``run_one`` on every job and return the
    results in job order, with a picklable module-level ``run_one`` (so it may
    ship jobs to other processes), and return ``[]`` for no jobs.
    ``end_to_end``: also run a tiny suite of ``methods`` (one cell each) through it.
    Process-based executors rebuild the plugin host in each worker from the
    installed entry points, so the plugins those cells need must be installed.
    """
    executor, host = resolve(host, "executor", executor)
    name = executor.name
    given = [f"job-{i}" for i in range(jobs)]
    try:
        out = executor.run(list(given), echo_job)
    except Exception as exc:
        fail(f"executor {name!r}: run() raised {type(exc).__name__}: {exc}")
    if not isinstance(out, list) or len(out) != len(given):
        fail(f"executor {name!r}: run() must return a list with one result per job, got {out!r:.120}")
    for i, (job, result) in enumerate(zip(given, out)):
        if not (isinstance(result, tuple) and len(result) == 3 and result[1] == job):
            fail(f"executor {name!r}: result {i} is {result!r:.80}, the result of job {job!r} was expected there "
                  "(results must come back in job order)")
    if executor.run([], echo_job) != []:
        fail(f"executor {name!r}: run([]) must return []")
    report = ExecutorReport(name, sorted({r[2] for r in out}))
    if end_to_end:
        report.suite_result = run_tiny_suite(host, executor=name, methods=list(methods), tracking_uri=tracking_uri)
        statuses = [r.status for r in report.suite_result.results]
        if statuses != ["FINISHED"] * len(methods):
            fail(f"executor {name!r}: cells ended {statuses}")
    return report


__all__ = ["ExecutorReport", "check_executor", "echo_job"]
