"""What produced a run: kdbench version and commit, torch, timm, Python, platform, plugin versions."""
from __future__ import annotations

import functools
import subprocess
from collections.abc import Mapping
from pathlib import Path

from kdbench.record import schema


@functools.lru_cache(maxsize=1)
def git_sha() -> str | None:
    """Commit of the kdbench source tree, with ``-dirty`` if it has changes; None outside git."""
    root = Path(__file__).resolve().parents[2]  # the folder that holds the kdbench package
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


def provenance_tags(plugin_versions: Mapping[str, str]) -> dict[str, str]:
    import platform

    import timm
    import torch

    from kdbench import __version__

    tags = {
        schema.VERSION: __version__,
        schema.TORCH_VERSION: torch.__version__,
        schema.TIMM_VERSION: timm.__version__,
        schema.PYTHON_VERSION: platform.python_version(),
        schema.PLATFORM: platform.platform(),
    }
    sha = git_sha()
    if sha:
        tags[schema.GIT_SHA] = sha
    for name, version in plugin_versions.items():
        tags[schema.fill(schema.PLUGIN, name=name)] = version
    return tags
