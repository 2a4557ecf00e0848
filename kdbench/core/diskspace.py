"""Saying "the disk is full, here" instead of a library's riddle.

``torch.save`` onto a full disk raises ``RuntimeError: [enforce fail at
inline_container.cc:672] . unexpected pos 451712 vs 451544`` (a short write);
a plain write raises ``OSError`` ENOSPC. :func:`explain_write_error` turns
either into :class:`DiskFullError` naming the file, its filesystem and the
space left there.
"""
from __future__ import annotations

import errno
import shutil
from pathlib import Path

from kdbench.core.errors import KdbenchError

LOW_SPACE = 64 * 2**20  # below this much free space a short write is taken for a full disk
SHORT_WRITE_MARKERS = ("unexpected pos", "PytorchStreamWriter failed writing", "file write failed")


class DiskFullError(KdbenchError):
    """A file could not be written because its disk (or quota) is full."""


def free_bytes(path: Path) -> tuple[Path, int] | None:
    """(the nearest existing folder of ``path``, the bytes free on its filesystem), or None."""
    for folder in (path, *path.parents):
        if folder.exists():
            try:
                return folder, shutil.disk_usage(folder).free
            except OSError:
                return None
    return None


def _causes(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def explain_write_error(exc: BaseException, path: str | Path) -> DiskFullError | None:
    """A :class:`DiskFullError` for ``exc`` raised while writing ``path`` when the disk is full; else None."""
    path = Path(path)
    no_space = any(isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT) for e in _causes(exc))
    short_write = any(m in str(e) for e in _causes(exc) for m in SHORT_WRITE_MARKERS)
    where = free_bytes(path.parent)
    if not no_space and not (short_write and where is not None and where[1] < LOW_SPACE):
        return None
    free = f"{where[1] / 2**20:.1f} MiB free on the filesystem of {where[0]}" if where else "free space unknown"
    return DiskFullError(f"disk full: could not write {path} ({free}); free some space or point "
                         f"KDBENCH_CACHE_DIR / TMPDIR elsewhere")
