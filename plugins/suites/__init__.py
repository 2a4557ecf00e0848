"""First-party suites: every ``*.yaml`` file in this folder."""
from __future__ import annotations

from pathlib import Path

import kdbench


@kdbench.hookimpl
def register_suites(register):
    for path in sorted(Path(__file__).parent.glob("*.yaml")):
        register(path)
