"""MLflow: the record of every invocation and cell.

Uses ``MlflowClient`` (no global active run) so that cells can log from any
process given the run ids. ``MLFLOW_TRACKING_URI`` is respected; otherwise
MLflow's own default applies (a SQLite file ``mlflow.db`` in the working
directory), so ``mlflow ui`` in the same folder shows the runs.

Faults. Every client call goes through :class:`RetryingClient`: a transient
failure (server unreachable, 5xx after MLflow's own retries, SQLite "database
is locked") is retried with exponential backoff, then raised as
:class:`TrackingError` naming the store and the call, so a cell whose metrics
cannot be recorded fails clearly instead of losing them silently.

Ownership. Every run kdbench creates is tagged with the process that owns it
(host, pid, process start time, boot id), and a background thread refreshes a
``kdbench.heartbeat`` tag while the run is open. :func:`reap_stale_runs` marks
RUNNING runs whose owner is gone as KILLED: on the same host by checking the
process itself, elsewhere when the heartbeat is older than ``KDBENCH_STALE_AFTER_S``.
"""
from __future__ import annotations

import functools
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from kdbench.core.errors import KdbenchError

TAG = "kdbench."  # prefix of every tag kdbench sets
ROLE_INVOCATION, ROLE_CELL, ROLE_TEACHER = "invocation", "cell", "teacher"
MAX_PARAM_LEN = 6000


def client(tracking_uri: str | None = None) -> RetryingClient:
    """An ``MlflowClient`` whose calls retry transient failures (see :class:`RetryingClient`)."""
    from mlflow.tracking import MlflowClient

    return RetryingClient(MlflowClient(tracking_uri=tracking_uri))


# --------------------------------------------------------------------------- retries


class TrackingError(KdbenchError):
    """The tracking store could not be reached, even after retries."""


def _env_float(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        return default


_TRANSIENT_MARKERS = (
    "API request to",  # MLflow's REST client: connection refused/reset, timeouts, repeated 5xx
    "database is locked",  # SQLite under concurrent writers
    "Connection refused",
    "Connection reset",
    "Max retries exceeded",
    "Read timed out",
    "temporarily unavailable",
)


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` looks like the store being away or busy (worth retrying), not a bad request."""
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    try:
        import requests

        if isinstance(exc, (requests.exceptions.ConnectionError, requests.exceptions.Timeout)):
            return True
    except ImportError:  # pragma: no cover
        pass
    if getattr(exc, "error_code", None) in ("TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED"):
        return True
    text = str(exc)
    return any(marker in text for marker in _TRANSIENT_MARKERS)


class RetryingClient:
    """``MlflowClient`` with every call retried on transient failures.

    ``KDBENCH_TRACKING_RETRIES`` (default 4) retries after the first attempt,
    sleeping ``KDBENCH_TRACKING_BACKOFF_S`` (default 2) seconds, doubling each
    time up to 60 s; MLflow's own HTTP retries (``MLFLOW_HTTP_REQUEST_MAX_RETRIES``)
    happen inside each attempt. When they are spent the call raises
    :class:`TrackingError`, and later calls on this client try only once until
    one succeeds, so a cell fails fast once the store is known to be down.
    Non-transient errors (a bad request, a missing run) are raised at once.
    """

    def __init__(self, inner: Any):
        self._inner = inner
        self._down = False

    @property
    def tracking_uri(self) -> str:
        return self._inner.tracking_uri

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if name.startswith("_") or not callable(attr):
            return attr

        @functools.wraps(attr)
        def call(*args: Any, **kwargs: Any) -> Any:
            return self._call(name, attr, args, kwargs)

        return call

    def set_terminated(self, run_id: str, status: str | None = None, end_time: int | None = None) -> None:
        stop_heartbeat(run_id)
        self._call("set_terminated", self._inner.set_terminated, (run_id, status, end_time), {})

    def _call(self, name: str, fn: Any, args: tuple, kwargs: dict) -> Any:
        retries = 0 if self._down else max(0, int(_env_float("KDBENCH_TRACKING_RETRIES", 4)))
        delay = _env_float("KDBENCH_TRACKING_BACKOFF_S", 2.0)
        start = time.monotonic()
        for attempt in range(retries + 1):
            try:
                result = fn(*args, **kwargs)
                self._down = False
                return result
            except Exception as exc:
                if not is_transient(exc):
                    raise
                if attempt == retries:
                    self._down = True
                    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                    raise TrackingError(
                        f"tracking store {self.tracking_uri} unreachable: {name} failed "
                        f"{attempt + 1} time(s) over {time.monotonic() - start:.0f}s ({first[:300]})"
                    ) from exc
                print(f"kdbench: tracking call {name} failed ({type(exc).__name__}); retry {attempt + 1}/{retries} "
                      f"in {delay:.1f}s", file=sys.stderr, flush=True)
                time.sleep(delay)
                delay = min(delay * 2, 60.0)
        raise AssertionError("unreachable")  # pragma: no cover


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
    """Create a run owned by this process (owner tags, heartbeat until ``set_terminated``)."""
    all_tags = {**owner_tags(), **{k: str(v) for k, v in tags.items()}}
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    run = c.create_run(experiment_id, tags=all_tags, run_name=name)
    start_heartbeat(run.info.run_id, getattr(c, "tracking_uri", None))
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


def _all_runs(c, experiment_id: str, filter_string: str) -> list:
    runs, token = [], None
    while True:
        page = c.search_runs([experiment_id], filter_string=filter_string, max_results=5000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


# --------------------------------------------------------------------------- ownership and stale runs

OWNER = TAG + "owner."
HEARTBEAT = TAG + "heartbeat"


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _proc_stat(pid: int) -> tuple[str, str] | None:
    """(state, start time in clock ticks) of a Linux process; None when it does not exist."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = text.rsplit(")", 1)[1].split()
    return fields[0], fields[19]


def owner_tags() -> dict[str, str]:
    """Who owns a run created now: this host and process (its pid and start time, the boot id)."""
    stat = _proc_stat(os.getpid()) if sys.platform.startswith("linux") else None
    return {
        OWNER + "host": socket.gethostname(),
        OWNER + "pid": str(os.getpid()),
        OWNER + "start": stat[1] if stat else "",
        OWNER + "boot_id": _boot_id(),
    }


def owner_alive(run_id: str, tags: Mapping[str, str]) -> bool | None:
    """Whether the process that owns a run is still alive; None when that cannot be told from here."""
    if tags.get(OWNER + "host") != socket.gethostname() or not tags.get(OWNER + "pid", "").isdigit():
        return None
    boot = tags.get(OWNER + "boot_id")
    if boot and _boot_id() and boot != _boot_id():
        return False  # the machine rebooted since
    pid = int(tags[OWNER + "pid"])
    if pid == os.getpid():
        return run_id in _BEATS  # this process: alive only if the run is still open here
    if sys.platform.startswith("linux") and Path("/proc/self/stat").exists():
        stat = _proc_stat(pid)
        if stat is None or stat[0] in ("Z", "X"):
            return False
        start = tags.get(OWNER + "start")
        return not start or start == stat[1]  # a different start time: the pid was reused
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_BEATS: dict[str, str | None] = {}  # open runs of this process → tracking URI
_BEAT_LOCK = threading.Lock()
_BEAT_THREAD: threading.Thread | None = None


def start_heartbeat(run_id: str, uri: str | None) -> None:
    """Refresh the run's ``kdbench.heartbeat`` tag every ``KDBENCH_HEARTBEAT_S`` (default 60) seconds."""
    global _BEAT_THREAD
    with _BEAT_LOCK:
        _BEATS[run_id] = uri
        if _BEAT_THREAD is None or not _BEAT_THREAD.is_alive():
            _BEAT_THREAD = threading.Thread(target=_beat_forever, name="kdbench-heartbeat", daemon=True)
            _BEAT_THREAD.start()


def stop_heartbeat(run_id: str) -> None:
    with _BEAT_LOCK:
        _BEATS.pop(run_id, None)


def _beat_forever() -> None:
    from mlflow.tracking import MlflowClient

    clients: dict[str | None, Any] = {}
    while True:
        time.sleep(max(1.0, _env_float("KDBENCH_HEARTBEAT_S", 60.0)))
        with _BEAT_LOCK:
            beats = dict(_BEATS)
        for run_id, uri in beats.items():
            try:
                c = clients.setdefault(uri, MlflowClient(tracking_uri=uri))
                c.set_tag(run_id, HEARTBEAT, str(int(time.time())))
            except Exception:  # a missed beat is harmless; the run's own calls report a dead store
                pass


def reap_stale_runs(c, experiment_id: str) -> list[tuple[str, str]]:
    """Mark RUNNING kdbench runs of the experiment whose owner is gone as KILLED.

    Same host: the run is stale when its owning process is gone (pid, start
    time, boot id). Any host: the run is stale when its last heartbeat (or its
    start) is older than ``KDBENCH_STALE_AFTER_S`` (default 600) seconds; that
    covers other hosts, runs without owner tags, and a process that lives on
    but no longer works on the run (an idle Ray worker).
    Returns (run id, reason) of every run marked.
    """
    # a live run beats every KDBENCH_HEARTBEAT_S: never call it stale before three beats were missed
    stale_after = max(_env_float("KDBENCH_STALE_AFTER_S", 600.0), 3 * _env_float("KDBENCH_HEARTBEAT_S", 60.0))
    now = time.time()
    reaped = []
    for run in _all_runs(c, experiment_id, "attributes.status = 'RUNNING'"):
        tags = run.data.tags
        if TAG + "role" not in tags:
            continue
        run_id = run.info.run_id
        alive = owner_alive(run_id, tags)
        where = f"pid {tags.get(OWNER + 'pid', '?')} on {tags.get(OWNER + 'host', '?')}"
        if alive is False:
            reason = f"its process ({where}) is gone"
        else:
            # another host (or a live process that stopped beating for this run, e.g. an idle Ray worker)
            try:
                beat = float(tags.get(HEARTBEAT) or 0)
            except ValueError:
                beat = 0.0
            beat = max(beat, (run.info.start_time or 0) / 1000)
            if now - beat <= stale_after:
                continue
            reason = f"no heartbeat from {where} for {now - beat:.0f}s (KDBENCH_STALE_AFTER_S={stale_after:.0f})"
        c.set_tag(run_id, TAG + "error", f"abandoned: {reason}; marked KILLED by a later kdbench run")
        c.set_terminated(run_id, "KILLED")
        reaped.append((run_id, reason))
    return reaped


def close_open_children(c, experiment_id: str, parent_run_id: str, status: str, reason: str) -> list[str]:
    """Mark child runs of ``parent_run_id`` still RUNNING (their worker ended without closing them)."""
    closed = []
    flt = f"tags.`mlflow.parentRunId` = '{parent_run_id}' and attributes.status = 'RUNNING'"
    for run in _all_runs(c, experiment_id, flt):
        c.set_tag(run.info.run_id, TAG + "error", reason[:MAX_PARAM_LEN])
        c.set_terminated(run.info.run_id, status)
        closed.append(run.info.run_id)
    return closed


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

    from kdbench import __version__

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
