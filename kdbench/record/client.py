"""The MLflow client kdbench uses: every call retried on transient failures.

``MlflowClient`` (no global active run), so that cells can log from any
process given the run ids. ``MLFLOW_TRACKING_URI`` is respected; otherwise
MLflow's own default applies (a SQLite file ``mlflow.db`` in the working
directory), so ``mlflow ui`` in the same folder shows the runs.

A transient failure (server unreachable, 5xx after MLflow's own retries,
SQLite "database is locked") is retried with exponential backoff, then raised
as :class:`TrackingError` naming the store and the call, so a cell whose
metrics cannot be recorded fails clearly instead of losing them silently.
"""
from __future__ import annotations

import contextlib
import functools
import sys
import time
from pathlib import Path
from typing import Any

from kdbench.core.errors import KdbenchError
from kdbench.record import heartbeat, settings


class TrackingError(KdbenchError):
    """The tracking store could not be reached, even after retries."""


TRANSIENT_MARKERS = (
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
    return any(marker in text for marker in TRANSIENT_MARKERS)


_STORE_LOCKS: dict[str, Any] = {}


def store_lock(uri: str | None) -> contextlib.AbstractContextManager:
    """Held around every call to a SQLite store, so that the processes of one machine (the local
    executor's workers and their driver) write it one at a time; other stores need none."""
    if not uri or not uri.startswith("sqlite:///"):
        return contextlib.nullcontext()
    path = str(Path(uri.removeprefix("sqlite:///")).expanduser().resolve())
    if path not in _STORE_LOCKS:
        from filelock import FileLock

        _STORE_LOCKS[path] = FileLock(path + ".lock")  # per thread: the heartbeat thread waits too
    return _STORE_LOCKS[path]


class RetryingClient:
    """``MlflowClient`` with every call retried on transient failures.

    ``KDBENCH_TRACKING_RETRIES`` (default 4) retries after the first attempt,
    sleeping ``KDBENCH_TRACKING_BACKOFF_S`` (default 2) seconds, doubling each
    time up to 60 s; MLflow's own HTTP retries (``MLFLOW_HTTP_REQUEST_MAX_RETRIES``)
    happen inside each attempt. When they are spent the call raises
    :class:`TrackingError`, and later calls on this client try only once until
    one succeeds, so a cell fails fast once the store is known to be down.
    Non-transient errors (a bad request, a missing run) are raised at once.
    Terminating a run also stops its heartbeat.
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
        heartbeat.stop(run_id)
        self._call("set_terminated", self._inner.set_terminated, (run_id, status, end_time), {})

    def _call(self, name: str, fn: Any, args: tuple, kwargs: dict) -> Any:
        retries = 0 if self._down else settings.retries()
        delay = settings.backoff_s()
        start = time.monotonic()
        for attempt in range(retries + 1):
            try:
                with store_lock(self.tracking_uri):
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


def client(tracking_uri: str | None = None) -> RetryingClient:
    """An ``MlflowClient`` whose calls retry transient failures (see :class:`RetryingClient`)."""
    from mlflow.tracking import MlflowClient

    return RetryingClient(MlflowClient(tracking_uri=tracking_uri))


def tracking_uri() -> str:
    """The tracking URI in effect (``--tracking-uri``, ``MLFLOW_TRACKING_URI``, or MLflow's default)."""
    import mlflow

    return mlflow.get_tracking_uri()
