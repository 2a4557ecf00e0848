"""A lock per local tracking store, across the processes of one machine.

Two ``kdbench run`` started together against one SQLite file would both
create MLflow's tables (one dies on ``duplicate column name``) and could both
claim the same cell. A local store (``sqlite:///PATH``, a ``file:`` folder)
gets a ``filelock`` next to it, held while the store is created and while a
cell is claimed; a tracking server needs none (see :mod:`kdbench.record.claims`).
"""
from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse


def local_store_path(uri: str) -> Path | None:
    """The file (SQLite) or folder (file store) behind a local tracking URI; None for a server."""
    if uri.startswith("sqlite:///"):
        raw = uri.removeprefix("sqlite:///").split("?", 1)[0]
        return None if raw in ("", ":memory:") else Path(unquote(raw) if raw.startswith("/") else raw)
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if parsed.scheme == "" and uri:
        return Path(uri)
    return None


def lock_path(uri: str) -> Path | None:
    store = local_store_path(uri)
    if store is None:
        return None
    return store.parent / f".{store.name}.kdbench.lock"


_LOCKS: dict[str, Any] = {}  # absolute lock path → its FileLock: re-entrant in a thread, exclusive across threads


@contextlib.contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """Hold the store's lock for the block (nothing for a tracking server).

    Every call of :class:`kdbench.record.client.RetryingClient` to a local store holds it too, so the
    processes of one machine (the local executor's workers, their driver, a second invocation) write a
    SQLite file one at a time. Re-entrant: a claim holds it around the calls that create its run.
    """
    from filelock import FileLock

    path = lock_path(uri)
    if path is None:
        yield
        return
    key = str(path.resolve())
    try:
        if key not in _LOCKS:
            path.parent.mkdir(parents=True, exist_ok=True)
            _LOCKS[key] = FileLock(key)  # thread-local by default: the heartbeat thread waits its turn
        lock = _LOCKS[key]
        lock.acquire()
    except OSError as exc:  # a read-only folder: MLflow will say what is wrong with the store itself
        print(f"kdbench: cannot lock {path} ({exc}); going on without a lock", file=sys.stderr, flush=True)
        yield
        return
    try:
        yield
    finally:
        lock.release()
