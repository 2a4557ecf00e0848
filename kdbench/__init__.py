"""kdbench: a benchmarking harness for model compression.

Plugin authors use :data:`hookimpl` and the classes re-exported here.
"""
from __future__ import annotations

from typing import Any

from kdbench.core.api import (
    Batch, Compressor, DataBundle, Dataset, Deployment, Distiller, Executor, Hardware, Method, ModelPair, Outputs,
    PairInfo, StageContext,
)
from kdbench.core.errors import ConfigError, DataError, KdbenchError, NotApplicableError, UnknownNameError
from kdbench.core.hookspecs import hookimpl

__version__ = "0.1.0"


def leaderboard(*args: Any, **kwargs: Any):
    """Build the leaderboard DataFrame from MLflow; see :func:`kdbench.results.leaderboards.build`."""
    from kdbench.results.leaderboards import build

    return build(*args, **kwargs)


__all__ = [
    "Batch", "Compressor", "ConfigError", "DataBundle", "DataError", "Dataset", "Deployment", "Distiller",
    "Executor", "Hardware", "KdbenchError", "Method", "ModelPair", "NotApplicableError", "Outputs", "PairInfo",
    "StageContext", "UnknownNameError",
    "__version__", "hookimpl", "leaderboard",
]
