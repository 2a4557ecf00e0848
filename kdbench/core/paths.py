"""Where kdbench keeps what it can rebuild: one cache root for teachers, generated data and the error journal."""
from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "KDBENCH_CACHE_DIR"


def cache_root() -> Path:
    """``$KDBENCH_CACHE_DIR``, else ``$XDG_CACHE_HOME/kdbench`` (``~/.cache/kdbench``)."""
    root = os.environ.get(CACHE_ENV) or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "kdbench")
    return Path(root)
