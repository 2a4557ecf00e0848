"""kdbench: a benchmarking harness for model compression.

Plugin authors use :data:`hookimpl` and the classes re-exported here.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kdbench.core.errors import ConfigError, DataError, KdbenchError, NotApplicableError, UnknownNameError
from kdbench.core.hookspecs import hookimpl

if TYPE_CHECKING:
    from kdbench.core.api import (
        Batch, CellResult, Compressor, DataBundle, Dataset, Deployment, Distiller, Executor, Hardware, Job, Method,
        ModelPair, Outputs, PairInfo, StageContext,
    )

__version__ = "0.1.0"

# The plugin API's classes import torch: they load on first use, so that `kdbench --help` starts at once.
_API = ("Batch", "CellResult", "Compressor", "DataBundle", "Dataset", "Deployment", "Distiller", "Executor",
        "Hardware", "Job", "Method", "ModelPair", "Outputs", "PairInfo", "StageContext")


def __getattr__(name: str) -> Any:
    if name in _API:
        from kdbench.core import api

        return getattr(api, name)
    raise AttributeError(f"module 'kdbench' has no attribute {name!r}")


def leaderboard(*args: Any, **kwargs: Any):
    """Build the leaderboard DataFrame from MLflow; see :func:`kdbench.results.leaderboards.build`."""
    from kdbench.results.leaderboards import build

    return build(*args, **kwargs)


def run_job(job: Job) -> CellResult:
    """Run one job's cell here and record it (what an executor's ``run_one`` is); see ``kdbench.running.cell``."""
    from kdbench.running.cell import run_job as run

    return run(job)


def prepare_teacher(job: Job) -> str:
    """Train (or find in the cache) the teacher of ``job`` once, before the cells that share it run side by side."""
    from kdbench.running.cell import prepare_teacher as prepare

    return prepare(job)


__all__ = [
    "Batch", "CellResult", "Compressor", "ConfigError", "DataBundle", "DataError", "Dataset", "Deployment", "Distiller",
    "Executor", "Hardware", "Job", "KdbenchError", "Method", "ModelPair", "NotApplicableError", "Outputs", "PairInfo",
    "StageContext", "UnknownNameError",
    "__version__", "hookimpl", "leaderboard", "prepare_teacher", "run_job",
]
