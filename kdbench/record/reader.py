"""Reading the record back: cell runs as a frame, resume, stage reuse, one run's model.

Used by the leaderboards and reports (:func:`fetch_runs`, :func:`runs_frame`,
:func:`suite_frame`), by ``kdbench run`` to resume (:func:`finished_spec_hashes`),
by pipelines whose first stage a finished cell already trained
(:func:`finished_student`) and by ``kdbench bench runs:/ID`` (:func:`run_model`,
:func:`artifact_path`). Every name comes from :mod:`kdbench.record.schema`;
a name a run does not carry (older runs) reads as missing, never as an error.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from kdbench.core.errors import KdbenchError
from kdbench.record import schema
from kdbench.record.client import client
from kdbench.record.store import search_all

FINISHED_CELLS = f"tags.`{schema.ROLE}` = '{schema.CELL}' and attributes.status = 'FINISHED'"

# columns of runs_frame taken from tags, in order (then seed, epochs and every metric)
FRAME_TAGS = {
    "spec_hash": schema.SPEC_HASH, "suite": schema.SUITE, "dataset": schema.DATASET, "pair": schema.PAIR,
    "method": schema.METHOD, "teacher": schema.TEACHER_ARCH, "student": schema.STUDENT_ARCH,
}
FRAME_LATE_TAGS = {
    "kdbench_version": schema.VERSION, "recipe_hash": schema.RECIPE_HASH, "error": schema.ERROR,
    "speedup_note": schema.SPEEDUP_NOTE,  # set when a method gives no speed-up by nature
    "method_code": schema.METHOD_CODE,  # which code ran (plugin versions, source digests): mixed rows are flagged
    "teacher_from": schema.TEACHER_FROM, "deployed_model": schema.DEPLOYED_MODEL,
    "measure_session": schema.MEASURE_SESSION, "torch_version": schema.TORCH_VERSION,
    "cpu_model": schema.fill(schema.ENV, key="cpu_model"),
}


# --------------------------------------------------------------------------- cell runs of suites


def experiment_ids(c, suite: str | None) -> list[str]:
    """The experiment of ``suite``, or of every kdbench suite when None."""
    if suite:
        exp = c.get_experiment_by_name(schema.experiment_name(suite))
        return [exp.experiment_id] if exp else []
    return [e.experiment_id for e in c.search_experiments() if e.name.startswith(schema.EXPERIMENT_PREFIX)]


def cell_filter(method: str | None = None, dataset: str | None = None, pair: str | None = None,
                version: str | None = None, since: datetime | None = None, until: datetime | None = None) -> str:
    """An MLflow filter for cell runs with these labels, started in this window."""
    parts = [f"tags.`{schema.ROLE}` = '{schema.CELL}'"]
    for tag, value in ((schema.METHOD, method), (schema.DATASET, dataset), (schema.PAIR, pair),
                       (schema.VERSION, version)):
        if value:
            parts.append(f"tags.`{tag}` = '{value}'")
    if since:
        parts.append(f"attributes.start_time >= {int(since.timestamp() * 1000)}")
    if until:
        parts.append(f"attributes.start_time <= {int(until.timestamp() * 1000)}")
    return " and ".join(parts)


def fetch_runs(suite: str | None = None, tracking_uri: str | None = None, **filters: Any) -> list[Any]:
    """Cell runs of one suite (or every kdbench suite), filtered on the tracking server (see :func:`cell_filter`)."""
    c = client(tracking_uri)
    ids = experiment_ids(c, suite)
    return search_all(c, ids, cell_filter(**filters)) if ids else []


def runs_frame(runs: Iterable[Any]) -> Any:
    """One row per cell run (a pandas DataFrame): labels from tags, final metrics (columns named as the
    metrics are), status, start time."""
    import pandas as pd

    rows = []
    for run in runs:
        tags, params = run.data.tags, run.data.params
        row: dict[str, Any] = {"run_id": run.info.run_id, "status": run.info.status,
                               "start_time": run.info.start_time}
        row.update({col: tags.get(tag) for col, tag in FRAME_TAGS.items()})
        row["seed"] = int(tags.get(schema.SEED, -1))
        # runs older than teacher pairing trained every cell against the teacher of seed 0
        row["teacher_seed"] = int(tags.get(schema.TEACHER_SEED, params.get("teacher.seed", 0)))
        row.update({col: tags.get(tag) for col, tag in FRAME_LATE_TAGS.items()})
        row["epochs"] = int(params[schema.RECIPE_EPOCHS]) if schema.RECIPE_EPOCHS in params else None
        row.update(run.data.metrics)
        rows.append(row)
    return pd.DataFrame(rows)


def suite_frame(suite: str | None = None, tracking_uri: str | None = None, **filters: Any) -> Any:
    """The cell runs of a suite (every kdbench suite when None) as a frame."""
    return runs_frame(fetch_runs(suite, tracking_uri, **filters))


def invocation_runs(c, suite: str) -> list[Any]:
    """The ``kdbench run`` invocations of a suite."""
    ids = experiment_ids(c, suite)
    return search_all(c, ids, f"tags.`{schema.ROLE}` = '{schema.INVOCATION}'") if ids else []


def metric_history(c, run_id: str, name: str) -> list[tuple[int, float]]:
    """(step, value) of every logged value of one metric of a run."""
    return [(m.step, m.value) for m in c.get_metric_history(run_id, name)]


# --------------------------------------------------------------------------- resume and stage reuse


def finished_spec_hashes(c, experiment_id: str) -> dict[str, str]:
    """spec hash → run id (the latest) of every FINISHED cell run in the experiment: what resume skips."""
    return {h: run_id for h, (run_id, _) in finished_cells(c, experiment_id).items()}


def finished_cells(c, experiment_id: str) -> dict[str, tuple[str, dict[str, str]]]:
    """spec hash → (run id, tags) of the latest FINISHED cell run of each spec hash in the experiment."""
    found: dict[str, tuple[str, dict[str, str]]] = {}
    for run in sorted(search_all(c, experiment_id, FINISHED_CELLS), key=lambda r: -(r.info.start_time or 0)):
        h = run.data.tags.get(schema.SPEC_HASH)
        if h:
            found.setdefault(h, (run.info.run_id, dict(run.data.tags)))
    return found


@contextlib.contextmanager
def artifact_path(c, run_id: str, name: str, *, quiet: bool = False) -> Iterator[str]:
    """A local copy of a run's artifact, for the time of the ``with`` block; KdbenchError when it has none."""
    with tempfile.TemporaryDirectory() as tmp:
        saved = os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
        if quiet:
            os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
        try:
            local = c.download_artifacts(run_id, name, tmp)
        except Exception as exc:
            raise KdbenchError(f"run {run_id} has no artifact {name!r}: {str(exc).splitlines()[0][:200]}") from None
        finally:
            if quiet and saved is None:
                os.environ.pop("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", None)
            elif quiet:
                os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = saved
        yield local


def finished_student(c, experiment_id: str, spec_hash: str) -> tuple[dict[str, Any], dict[str, float], str] | None:
    """(student state_dict, final metrics, run id) of the latest FINISHED cell run of ``spec_hash`` that has a
    ``student.pt`` (loaded with ``weights_only=True``); None when there is none or the store cannot say."""
    import torch

    flt = f"tags.`{schema.SPEC_HASH}` = '{spec_hash}' and {FINISHED_CELLS}"
    try:
        for run in search_all(c, experiment_id, flt, order_by=["attributes.start_time DESC"], limit=5):
            try:
                with artifact_path(c, run.info.run_id, schema.STUDENT, quiet=True) as path:
                    state = torch.load(path, map_location="cpu", weights_only=True)
            except KdbenchError:
                continue
            return state, dict(run.data.metrics), run.info.run_id
    except Exception:  # the store cannot say: the caller trains it
        return None
    return None


# --------------------------------------------------------------------------- one run's model (bench runs:/ID)


@dataclass
class RunModel:
    """How to rebuild the student of a cell run; ``input_size`` and ``num_classes`` are None for runs
    recorded before cells carried them."""

    run_id: str
    arch: str
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    input_size: tuple[int, int, int] | None = None
    num_classes: int | None = None


def parse_input_size_tag(text: str | None) -> tuple[int, int, int] | None:
    try:
        parts = tuple(int(p) for p in (text or "").split(","))
    except ValueError:
        return None
    return parts if len(parts) == 3 and min(parts) > 0 else None  # type: ignore[return-value]


def run_model(c, run_id: str, artifact: str = schema.STUDENT) -> RunModel:
    """The architecture, kwargs, input size and classes of a run's student (from its tags and params)."""
    import yaml

    try:
        run = c.get_run(run_id)
    except Exception:
        raise KdbenchError(f"no MLflow run {run_id!r} in {c.tracking_uri}") from None
    tags, params = run.data.tags, run.data.params
    arch = tags.get(schema.STUDENT_ARCH)
    if not arch:
        raise KdbenchError(f"run {run_id} has no {schema.STUDENT_ARCH} tag; use ARCH=PATH with its {artifact} instead")
    kwargs: dict[str, Any] = {}
    if params.get(schema.STUDENT_KWARGS, "{}") not in ("{}", ""):
        import json

        kwargs.update(json.loads(params[schema.STUDENT_KWARGS]))
    for key, value in params.items():
        if key.startswith(schema.STUDENT_KWARGS + "."):
            kwargs[key.removeprefix(schema.STUDENT_KWARGS + ".")] = yaml.safe_load(value)
    classes = tags.get(schema.NUM_CLASSES, "")
    return RunModel(run_id, arch, kwargs, parse_input_size_tag(tags.get(schema.INPUT_SIZE)),
                    int(classes) if classes.isdigit() else None)
