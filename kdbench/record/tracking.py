"""Transitional: the names of the module the record was before it became a package.

Nothing in the kdbench package's own layers imports this; it is here only for
code still being moved (``kdbench.testing``, ``benchmarks/``) and goes once
that imports from :mod:`kdbench.record.schema` (names), :mod:`~kdbench.record.client`
(``client``, ``tracking_uri``), :mod:`~kdbench.record.store` (batched logging,
experiments) and :mod:`~kdbench.record.writer` (runs). It declares nothing.
"""
from __future__ import annotations

from typing import Any

from kdbench.record.client import TrackingError, client, tracking_uri
from kdbench.record.schema import CELL as ROLE_CELL
from kdbench.record.schema import HEARTBEAT, experiment_name
from kdbench.record.schema import INVOCATION as ROLE_INVOCATION
from kdbench.record.schema import PREFIX as TAG
from kdbench.record.schema import TEACHER as ROLE_TEACHER
from kdbench.record.store import MAX_PARAM_LEN, ensure_experiment, flatten, log_metrics, log_params, set_tags


def start_run(c, experiment_id: str, name: str, tags: dict[str, Any], parent_run_id: str | None = None) -> str:
    from kdbench.record.writer import Writer

    return Writer(c).start_run(experiment_id, name, tags, parent_run_id)


__all__ = [
    "HEARTBEAT", "MAX_PARAM_LEN", "ROLE_CELL", "ROLE_INVOCATION", "ROLE_TEACHER", "TAG", "TrackingError", "client",
    "ensure_experiment", "experiment_name", "flatten", "log_metrics", "log_params", "set_tags", "start_run",
    "tracking_uri",
]
