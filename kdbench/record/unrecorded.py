"""Errors a process could not record because the tracking store was away, kept until it can.

A cell that fails because the store is down cannot tag its own run. The
error is kept here (in this process, and in a small JSON-lines file under
``KDBENCH_CACHE_DIR``, default ``~/.cache/kdbench``, for after the process
ends), so whoever closes the run later, its invocation or the next
``kdbench run`` reaping it, records what really happened instead of
"its worker ended" or "its process is gone".
"""
from __future__ import annotations

import contextlib
import json
import threading
from pathlib import Path

from kdbench.core.paths import cache_root

_KNOWN: dict[str, str] = {}  # run id → error, this process
_LOCK = threading.Lock()


def journal_path() -> Path:
    return cache_root() / "unrecorded-errors.jsonl"


def remember(run_id: str, message: str) -> None:
    """Keep ``message`` as the error of ``run_id`` until :func:`recall` finds it (never raises)."""
    with _LOCK:
        _KNOWN[run_id] = message
        with contextlib.suppress(OSError):
            path = journal_path()
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a") as fh:
                fh.write(json.dumps({"run_id": run_id, "error": message}) + "\n")


def recall(run_id: str) -> str | None:
    """The error kept for ``run_id`` by this or an earlier process, or None."""
    with _LOCK:
        if run_id in _KNOWN:
            return _KNOWN[run_id]
    with contextlib.suppress(OSError, ValueError):
        for line in journal_path().read_text().splitlines():
            entry = json.loads(line)
            if entry.get("run_id") == run_id:
                return str(entry.get("error", ""))
    return None


def known() -> dict[str, str]:
    """The errors this process could not record, by run id."""
    with _LOCK:
        return dict(_KNOWN)
