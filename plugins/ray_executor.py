"""The ``ray`` executor: every cell a Ray task, on this machine or a Ray cluster.

- Connects with ``ray.init()``: to ``--ray-address``/``RAY_ADDRESS`` when given
  (``auto`` joins the cluster this machine belongs to), else to a cluster
  started here with ``ray start``, else it starts a local one. A session the
  caller already opened (``ray.init(num_cpus=2)``) is used as it is.
- Each task asks for the suite's ``resources`` (``cpus_per_cell``,
  ``gpus_per_cell``; fractions allowed).
- Teachers first: one task per distinct teacher cache key trains the teacher
  into the cache (``kdbench.running.cell.prepare_teacher``), and the cells that need it
  depend on that task, so a teacher is trained once, not once per cell. The
  cache (``KDBENCH_CACHE_DIR``) must be on a filesystem every worker mounts.
- The driver has already created the MLflow experiment and the invocation run;
  workers log their child runs to the same tracking URI, which must therefore
  be a tracking server when more than one worker runs (a SQLite file is refused).
- Workers get the driver's ``KDBENCH_*`` and ``MLFLOW_*`` environment and its
  working directory (when it exists there), so relative paths mean the same.
- A task is not retried by Ray (a retried cell could be recorded twice); a
  worker that dies is reported as a failed cell and its run is closed by the
  driver. Rerunning the command resumes.
"""
from __future__ import annotations

import math
import os
import sys
from typing import Any

import kdbench
from kdbench.core.errors import ConfigError
from kdbench.running.workers import apply_env

SERVER_HINT = (
    "start a tracking server (mlflow server --backend-store-uri sqlite:///mlflow.db "
    "--artifacts-destination ./mlartifacts --host 127.0.0.1 --port 5000) and set "
    "MLFLOW_TRACKING_URI=http://127.0.0.1:5000 for kdbench, or use --executor local"
)


def _ray():
    try:
        import ray
    except ImportError:
        raise ConfigError("the ray executor needs Ray: pip install 'kdbench[ray]'") from None
    return ray


def connect():
    """The Ray module, connected (an open session is reused)."""
    ray = _ray()
    if not ray.is_initialized():
        address = os.environ.get("RAY_ADDRESS") or None
        try:
            ray.init(address=address, log_to_driver=True)
        except ConnectionError as exc:
            raise ConfigError(f"cannot connect to the Ray cluster at {address!r}: {exc}") from None
    return ray


def _options(resources: Any) -> dict[str, Any]:
    cpus = getattr(resources, "cpus_per_cell", 1.0)
    gpus = getattr(resources, "gpus_per_cell", 0.0)
    return {"num_cpus": cpus, "num_gpus": gpus}


def concurrency(ray, resources: Any, n_cells: int) -> int:
    """How many cells the cluster can run at once with these per-cell resources."""
    total = ray.cluster_resources()
    slots = [n_cells]
    for key, need in (("CPU", getattr(resources, "cpus_per_cell", 1.0)), ("GPU", getattr(resources, "gpus_per_cell", 0.0))):
        if need > 0:
            slots.append(math.floor(total.get(key, 0.0) / need + 1e-9))
    return max(0, min(slots))


def _store_kind(uri: str) -> str:
    scheme = uri.split("://", 1)[0] if "://" in uri else ""
    if uri.startswith("sqlite:"):
        return "sqlite"
    if scheme in ("", "file"):
        return "file"
    return "server"


def preflight(suite, tracking_uri: str, n_cells: int) -> None:
    """Refuse set-ups that would lose or corrupt results, before anything is recorded."""
    ray = connect()
    resources = suite.resources
    workers = concurrency(ray, resources, n_cells)
    nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
    if workers == 0:
        have = ray.cluster_resources()
        print(f"kdbench: warning: no Ray node has {resources.cpus_per_cell:g} CPU and {resources.gpus_per_cell:g} GPU "
              f"for a cell (cluster: {have.get('CPU', 0):g} CPU, {have.get('GPU', 0):g} GPU); cells wait until one joins",
              file=sys.stderr, flush=True)
    kind = _store_kind(tracking_uri)
    if kind == "sqlite" and (workers > 1 or nodes > 1):
        who = f"{workers} workers" if workers > 1 else f"workers on {nodes} nodes"
        raise ConfigError(f"the ray executor would run {who}, but MLflow tracking URI {tracking_uri} is a SQLite file "
                          f"they cannot share: {SERVER_HINT}")
    if kind == "file" and nodes > 1:
        raise ConfigError(f"MLflow tracking URI {tracking_uri} is a local directory that workers on {nodes} nodes "
                          f"cannot share: {SERVER_HINT}")
    if nodes > 1 and not os.environ.get("KDBENCH_CACHE_DIR"):
        print("kdbench: warning: KDBENCH_CACHE_DIR is not set; on a multi-node cluster set it to a directory every "
              "node mounts, or each node trains its own teachers", file=sys.stderr, flush=True)


def _task(fn, job, cwd: str, *after: Any):
    """A Ray task: run ``fn(job)`` (``run_job`` or ``prepare_teacher``) once ``after`` (teacher tasks) are done."""
    apply_env(getattr(job, "env", {}), cwd)
    return fn(job)


def run_ray(jobs, run_one):
    if not jobs:
        return []
    ray = connect()
    remote = ray.remote(max_retries=0)(_task)
    cwd = os.getcwd()

    def key_of(job) -> str | None:  # a contract check's stand-in jobs have no teacher
        return getattr(job, "teacher_key", None)

    teachers: dict[str, Any] = {}  # teacher key → the task that trains it
    for job in jobs:
        key = key_of(job)
        if key is not None and key not in teachers:
            teachers[key] = remote.options(**_options(job.resources), name=f"kdbench teacher {key[:12]}").remote(
                kdbench.prepare_teacher, job, cwd)
    refs = []
    for job in jobs:
        key = key_of(job)
        after = [teachers[key]] if key is not None else []
        label = job.cell.label if hasattr(job, "cell") else str(job)[:60]
        refs.append(remote.options(**_options(getattr(job, "resources", None)), name=f"kdbench {label}").remote(
            run_one, job, cwd, *after))

    results = []
    try:
        for job, ref in zip(jobs, refs):
            try:
                results.append(ray.get(ref))
            except ray.exceptions.TaskCancelledError:
                raise KeyboardInterrupt from None
            except ray.exceptions.RayError as exc:  # the worker died (OOM kill, lost node) or the task never ran
                if not isinstance(job, kdbench.Job):
                    raise
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                results.append(job.failed(f"Ray task failed: {type(exc).__name__}: {first}"))
    except KeyboardInterrupt:
        pending = refs + list(teachers.values())
        for ref in pending:  # a running task gets KeyboardInterrupt: its run is marked KILLED
            try:
                ray.cancel(ref)
            except Exception:
                pass
        ray.wait(pending, num_returns=len(pending), timeout=10)
        raise
    return results


def _set_address(ctx, param, value) -> None:
    if value:
        os.environ["RAY_ADDRESS"] = value


def _cli_options() -> tuple:
    import click

    return (click.Option(["--ray-address"], expose_value=False, callback=_set_address,
                         help="Ray cluster for --executor ray: an address or `auto` (sets RAY_ADDRESS)."),)


@kdbench.hookimpl
def register_executors(register):
    register(kdbench.Executor(
        "ray", run_ray, summary="each cell a Ray task with the suite's resources (needs the ray extra)",
        preflight=preflight, cli_options=_cli_options(),
    ))
