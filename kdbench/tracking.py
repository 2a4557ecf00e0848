"""MLflow: the record of every invocation and cell.

Uses ``MlflowClient`` (no global active run) so that cells can log from any
process given the run ids. ``MLFLOW_TRACKING_URI`` is respected; otherwise
MLflow's own default applies (a SQLite file ``mlflow.db`` in the working
directory), so ``mlflow ui`` in the same folder shows the runs.
"""
from __future__ import annotations

import functools
import json
import subprocess
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

TAG = "kdbench."  # prefix of every tag kdbench sets
ROLE_INVOCATION, ROLE_CELL, ROLE_TEACHER = "invocation", "cell", "teacher"
MAX_PARAM_LEN = 6000


def client(tracking_uri: str | None = None):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri)


def tracking_uri() -> str:
    import mlflow

    return mlflow.get_tracking_uri()


def experiment_name(suite: str) -> str:
    return f"kdbench/{suite}"


def ensure_experiment(c, name: str) -> str:
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            c.restore_experiment(exp.experiment_id)
        return exp.experiment_id
    try:
        return c.create_experiment(name, tags={TAG + "managed": "true"})
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


def _chunks(items: list, size: int) -> Iterable[list]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def log_params(c, run_id: str, params: Mapping[str, Any]) -> None:
    from mlflow.entities import Param

    items = [Param(k, str(v)[:MAX_PARAM_LEN]) for k, v in sorted(params.items())]
    for chunk in _chunks(items, 100):
        c.log_batch(run_id, params=chunk)


def log_metrics(c, run_id: str, metrics: Mapping[str, float], step: int = 0) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    items = [Metric(k, float(v), now, step) for k, v in sorted(metrics.items()) if v is not None]
    for chunk in _chunks(items, 1000):
        c.log_batch(run_id, metrics=chunk)


def set_tags(c, run_id: str, tags: Mapping[str, Any]) -> None:
    from mlflow.entities import RunTag

    items = [RunTag(k, str(v)[:MAX_PARAM_LEN]) for k, v in sorted(tags.items())]
    for chunk in _chunks(items, 100):
        c.log_batch(run_id, tags=chunk)


def start_run(c, experiment_id: str, name: str, tags: Mapping[str, Any], parent_run_id: str | None = None) -> str:
    all_tags = {k: str(v) for k, v in tags.items()}
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    run = c.create_run(experiment_id, tags=all_tags, run_name=name)
    return run.info.run_id


def finished_spec_hashes(c, experiment_id: str) -> dict[str, str]:
    """spec hash → run id of every FINISHED cell run in the experiment."""
    found: dict[str, str] = {}
    token = None
    while True:
        page = c.search_runs(
            [experiment_id],
            filter_string=f"tags.`{TAG}role` = '{ROLE_CELL}' and attributes.status = 'FINISHED'",
            max_results=5000,
            page_token=token,
        )
        for run in page:
            h = run.data.tags.get(TAG + "spec_hash")
            if h:
                found.setdefault(h, run.info.run_id)
        token = page.token
        if not token:
            return found


@functools.lru_cache(maxsize=1)
def git_sha() -> str | None:
    """Commit of the kdbench source tree, with ``-dirty`` if it has changes; None outside git."""
    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True, timeout=5
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return sha + ("-dirty" if dirty else "") if sha else None


def environment_tags(plugin_versions: Mapping[str, str]) -> dict[str, str]:
    import platform

    import timm
    import torch

    from . import __version__

    tags = {
        TAG + "version": __version__,
        TAG + "torch_version": torch.__version__,
        TAG + "timm_version": timm.__version__,
        TAG + "python_version": platform.python_version(),
        TAG + "platform": platform.platform(),
    }
    sha = git_sha()
    if sha:
        tags[TAG + "git_sha"] = sha
    for name, version in plugin_versions.items():
        tags[f"{TAG}plugin.{name}"] = version
    return tags
