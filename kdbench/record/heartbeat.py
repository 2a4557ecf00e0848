"""Heartbeats: while a run is open, a background thread refreshes its ``kdbench.heartbeat`` tag.

Every ``KDBENCH_HEARTBEAT_S`` (default 60) seconds; a run whose heartbeat is
old is abandoned (see :mod:`kdbench.record.liveness`). One daemon thread per
process beats for all of its open runs.
"""
from __future__ import annotations

import threading
import time
from typing import Any

from kdbench.record import schema, settings

_BEATS: dict[str, str | None] = {}  # open runs of this process → tracking URI
_LOCK = threading.Lock()
_THREAD: threading.Thread | None = None


def start(run_id: str, uri: str | None) -> None:
    """Beat for ``run_id`` (in the store at ``uri``) until :func:`stop`."""
    global _THREAD
    with _LOCK:
        _BEATS[run_id] = uri
        if _THREAD is None or not _THREAD.is_alive():
            _THREAD = threading.Thread(target=_beat_forever, name="kdbench-heartbeat", daemon=True)
            _THREAD.start()


def stop(run_id: str) -> None:
    with _LOCK:
        _BEATS.pop(run_id, None)


def is_open(run_id: str) -> bool:
    """Whether this process still beats for ``run_id`` (it created the run and has not ended it)."""
    with _LOCK:
        return run_id in _BEATS


def _beat_forever() -> None:
    from mlflow.tracking import MlflowClient

    from kdbench.record.locks import store_lock

    clients: dict[str | None, Any] = {}
    while True:
        time.sleep(settings.heartbeat_s())
        with _LOCK:
            beats = dict(_BEATS)
        for run_id, uri in beats.items():
            try:
                c = clients.setdefault(uri, MlflowClient(tracking_uri=uri))
                with store_lock(c.tracking_uri):
                    c.set_tag(run_id, schema.HEARTBEAT, str(int(time.time())))
            except Exception:  # a missed beat is harmless; the run's own calls report a dead store
                pass
