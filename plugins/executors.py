"""The ``local`` executor: cells run one after another in this process."""
from __future__ import annotations

import kdbench


def run_local(jobs, run_one):
    return [run_one(job) for job in jobs]


@kdbench.hookimpl
def register_executors(register):
    register(kdbench.Executor("local", run_local, summary="serial, in process (default)"))
