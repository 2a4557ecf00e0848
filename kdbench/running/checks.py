"""Checks of the machine before anything trains: what would otherwise fail every cell after it started.

An unwritable teacher cache (``KDBENCH_CACHE_DIR`` read-only, or a file where
the folder should be) made every cell train its teacher, then fail with
``PermissionError``: :func:`check_teacher_cache` says so in one line first.
A read-only cache that already holds every teacher the run needs is fine.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from kdbench.core.config import CellSpec
from kdbench.core.errors import ConfigError
from kdbench.running.teachers import cache_dir, teacher_key


def writable_problem(directory: Path) -> str | None:
    """Why files cannot be created in ``directory`` (made when missing), or None when they can."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=directory, prefix=".kdbench-write-check.")
    except OSError as exc:
        return f"{type(exc).__name__}: {exc.strerror or exc}"
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(probe)
    return None


def teachers_to_train(cells: Iterable[CellSpec], directory: Path) -> set[str]:
    """Cache keys of the teachers the harness would train for ``cells`` that ``directory`` does not hold."""
    keys = {teacher_key(c) for c in cells if not c.teacher.checkpoints.get(c.pair)}
    return {k for k in keys if not ((directory / f"{k}.pt").is_file() and (directory / f"{k}.json").is_file())}


def check_teacher_cache(cells: Iterable[CellSpec]) -> None:
    """A one-line :class:`ConfigError` when a teacher must be trained and the cache cannot take it."""
    directory = cache_dir()
    missing = teachers_to_train(cells, directory)
    if not missing:
        return
    problem = writable_problem(directory)
    if problem:
        raise ConfigError(f"teacher cache {directory} is not writable ({problem}) and {len(missing)} teacher(s) must "
                          "be trained into it; set KDBENCH_CACHE_DIR to a writable directory")
