"""The MLflow client kdbench uses: every call retried on transient failures.

``MlflowClient`` (no global active run), so that cells can log from any
process given the run ids. ``MLFLOW_TRACKING_URI`` is respected; otherwise
MLflow's own default applies (a SQLite file ``mlflow.db`` in the working
directory), so ``mlflow ui`` in the same folder shows the runs.

A transient failure (server unreachable, 5xx, SQLite "database is locked") is
retried with backoff for at most ``KDBENCH_TRACKING_TIMEOUT_S`` (60) seconds,
saying so on stderr, then raised as :class:`TrackingError` naming the store
and the call. From then on the store is known to be down in this process
(whatever client object asks): a call fails at once, except one real attempt
every ``KDBENCH_TRACKING_PROBE_S`` (10) seconds, which ends the outage when it
succeeds. So a dead server costs one wait, not one per call.
"""
from __future__ import annotations

import functools
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

from kdbench.core.errors import KdbenchError
from kdbench.record import heartbeat, settings
from kdbench.record.locks import local_store_path, store_lock


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


@dataclass
class Outage:
    """A tracking store this process found down: since when, why, when it was last tried."""

    since: float
    cause: str
    last_try: float


_OUTAGES: dict[str, Outage] = {}  # tracking URI → its outage, shared by every client of this process
_OUTAGES_LOCK = threading.Lock()


def outage(uri: str) -> Outage | None:
    """The outage of the store at ``uri`` this process knows of, or None."""
    return _OUTAGES.get(uri)


# what a transient error says, in a few words, found in MLflow's and urllib3's long messages
CAUSES = (("Connection refused", "connection refused"), ("Connection reset", "connection reset"),
          ("timed out", "timed out"), ("Name or service not known", "unknown host"),
          ("Temporary failure in name resolution", "name resolution failed"),
          ("database is locked", "database is locked"), ("RemoteDisconnected", "the server closed the connection"))


def forget_outages() -> None:
    """Forget every store this process found down (the next call to each tries it in full again)."""
    with _OUTAGES_LOCK:
        _OUTAGES.clear()


def _first_line(exc: BaseException) -> str:
    """The cause of a transient error in a few words (``connection refused``), else its first line, cut."""
    text = str(exc).strip()
    for marker, short in CAUSES:
        if marker in text:
            return short
    return (text.splitlines()[0] if text else type(exc).__name__)[:200]


def _say(text: str) -> None:
    print(f"kdbench: {text}", file=sys.stderr, flush=True)


class RetryingClient:
    """``MlflowClient`` with every call retried on transient failures.

    A call that meets a transient error is retried, sleeping
    ``KDBENCH_TRACKING_BACKOFF_S`` (2) seconds, doubling up to 15 s, until
    ``KDBENCH_TRACKING_TIMEOUT_S`` (60) seconds have passed since its first
    failure (or ``KDBENCH_TRACKING_RETRIES`` retries, default 10); each retry
    is announced on stderr. Then it raises :class:`TrackingError` and the
    store counts as down for this whole process (:data:`_OUTAGES`): later
    calls raise at once, but for one attempt every ``KDBENCH_TRACKING_PROBE_S``
    seconds that ends the outage when it succeeds. Non-transient errors (a bad
    request, a missing run) are raised at once. Terminating a run also stops
    its heartbeat.
    """

    def __init__(self, inner: Any):
        self._inner = inner

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
        uri = self.tracking_uri
        known = _OUTAGES.get(uri)
        if known is not None:
            return self._probe(name, fn, args, kwargs, known)
        budget, retries, delay = settings.timeout_s(), settings.retries(), settings.backoff_s()
        start = time.monotonic()
        for attempt in range(retries + 1):
            try:
                with store_lock(uri):  # a local store: written by one process at a time
                    return fn(*args, **kwargs)
            except Exception as exc:
                if not is_transient(exc):
                    raise
                waited = time.monotonic() - start
                if attempt == 0 and retries and budget > 0:
                    _say(f"tracking store {uri} is not answering ({_first_line(exc)}); "
                         f"retrying for up to {budget:.0f}s ({settings.TIMEOUT_S})")
                if attempt == retries or waited + delay > budget:
                    self._mark_down(uri, exc)
                    raise TrackingError(f"tracking store {uri} unreachable: {name} failed {attempt + 1} time(s) "
                                        f"over {waited:.0f}s ({_first_line(exc)})") from exc
                _say(f"tracking call {name} failed; retry {attempt + 1} in {delay:.0f}s "
                     f"({waited:.0f}s of {budget:.0f}s spent)")
                time.sleep(delay)
                delay = min(delay * 2, 15.0)
                if _OUTAGES.get(uri) is not None:  # another thread of this process gave up meanwhile
                    return self._probe(name, fn, args, kwargs, _OUTAGES[uri])
        raise AssertionError("unreachable")  # pragma: no cover

    def _probe(self, name: str, fn: Any, args: tuple, kwargs: dict, known: Outage) -> Any:
        """The store is known to be down: one attempt per probe interval, else fail at once."""
        uri = self.tracking_uri
        now = time.monotonic()
        with _OUTAGES_LOCK:
            attempt = now - known.last_try >= settings.probe_s()
            if attempt:
                known.last_try = now
        if attempt:
            try:
                result = fn(*args, **kwargs)
            except Exception as exc:
                if not is_transient(exc):
                    raise
                known.cause = _first_line(exc)
            else:
                with _OUTAGES_LOCK:
                    _OUTAGES.pop(uri, None)
                _say(f"tracking store {uri} answers again (it was down for {now - known.since:.0f}s)")
                return result
        raise TrackingError(f"tracking store {uri} unreachable: {name} not tried, the store has been down for "
                            f"{now - known.since:.0f}s ({known.cause})")

    def _mark_down(self, uri: str, exc: BaseException) -> None:
        now = time.monotonic()
        with _OUTAGES_LOCK:
            if uri not in _OUTAGES:
                _OUTAGES[uri] = Outage(now, _first_line(exc), now)
                _say(f"tracking store {uri} is down; until it answers, tracking calls fail at once "
                     f"(one try every {settings.probe_s():.0f}s, {settings.PROBE_S})")


def tracking_uri() -> str:
    """The tracking URI in effect (``--tracking-uri``, ``MLFLOW_TRACKING_URI``, or MLflow's default)."""
    import mlflow

    return mlflow.get_tracking_uri()


_uri_in_effect = tracking_uri  # client()'s argument of the same name hides it there
_READY: set[str] = set()  # local stores this process has created or opened (under their lock)


def client(tracking_uri: str | None = None) -> RetryingClient:
    """An ``MlflowClient`` whose calls retry transient failures (see :class:`RetryingClient`)."""
    from mlflow.tracking import MlflowClient

    settings.apply_mlflow_http_defaults()
    uri = tracking_uri or _uri_in_effect()
    if uri in _READY or local_store_path(uri) is None:
        return RetryingClient(MlflowClient(tracking_uri=uri))
    # MLflow creates a new SQLite store's tables when the first client opens it: two processes doing that
    # at once collide (``duplicate column name: step``), so the first opening in a process holds the lock
    with store_lock(uri):
        inner = MlflowClient(tracking_uri=uri)
        inner._tracking_client.store  # noqa: B018  (opened, its tables created when needed)
    _READY.add(uri)
    return RetryingClient(inner)

