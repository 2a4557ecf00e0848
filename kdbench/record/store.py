"""Plain operations on the tracking store: experiments, paged searches, batched logging.

Every function takes the client (:func:`kdbench.record.client.client`) as its
first argument and knows nothing of what the runs mean.
"""
from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from typing import Any

from kdbench.record import schema

MAX_PARAM_LEN = 6000  # longer param and tag values are cut (MLflow's own limit is larger)
PAGE = 5000  # runs per search page


def search_all(c, experiment_ids: str | list[str], filter_string: str = "", *,
               order_by: list[str] | None = None, limit: int | None = None) -> list:
    """Every run of the experiments matching ``filter_string`` (all pages), or the first ``limit``."""
    ids = [experiment_ids] if isinstance(experiment_ids, str) else list(experiment_ids)
    runs: list = []
    token = None
    while True:
        size = PAGE if limit is None else min(PAGE, limit - len(runs))
        page = c.search_runs(ids, filter_string=filter_string, max_results=size, order_by=order_by, page_token=token)
        runs.extend(page)
        token = page.token
        if not token or (limit is not None and len(runs) >= limit):
            return runs


def ensure_experiment(c, name: str) -> str:
    """The id of experiment ``name``, created (tagged ``kdbench.managed``) or restored when needed."""
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            c.restore_experiment(exp.experiment_id)
        return exp.experiment_id
    try:
        return c.create_experiment(name, tags={schema.MANAGED: "true"})
    except Exception:  # another process created it first
        exp = c.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"recipe": {"lr": 0.1}} → {"recipe.lr": 0.1}; lists are kept as JSON."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, name + "."))
        elif isinstance(value, (list, tuple, Mapping)):
            out[name] = json.dumps(value, sort_keys=True)
        else:
            out[name] = value
    return out


def chunks(items: list, size: int) -> Iterable[list]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def log_params(c, run_id: str, params: Mapping[str, Any]) -> None:
    from mlflow.entities import Param

    items = [Param(k, str(v)[:MAX_PARAM_LEN]) for k, v in sorted(params.items())]
    for chunk in chunks(items, 100):
        c.log_batch(run_id, params=chunk)


def log_metrics(c, run_id: str, metrics: Mapping[str, float], step: int = 0) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    items = [Metric(k, float(v), now, step) for k, v in sorted(metrics.items()) if v is not None]
    for chunk in chunks(items, 1000):
        c.log_batch(run_id, metrics=chunk)


def set_tags(c, run_id: str, tags: Mapping[str, Any]) -> None:
    from mlflow.entities import RunTag

    items = [RunTag(k, str(v)[:MAX_PARAM_LEN]) for k, v in sorted(tags.items())]
    for chunk in chunks(items, 100):
        c.log_batch(run_id, tags=chunk)
