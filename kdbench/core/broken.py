"""Broken plugins, never silent: one warning per command, and a hint where a name they provide is missing.

A plugin that failed to load (import error, unknown hook, a registration
that raised) is recorded in ``PluginHost.broken``. :func:`warn_broken` says
so on stderr once per host; :func:`provider_hint` completes an unknown-name
error ("no method 'lskd'") with the broken plugin that would have provided
it: one named like the missing item, or whose source mentions the name in
quotes; else every broken plugin, as ones that may have.
"""
from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from typing import Any

_WARNED: set[int] = set()  # hosts (by id) whose broken plugins were already reported


def warn_broken(host: Any) -> None:
    """One line on stderr per broken plugin of ``host``, the first time this is called for it."""
    if id(host) in _WARNED or not host.broken:
        return
    _WARNED.add(id(host))
    for b in host.broken:
        print(f"warning: plugin {b.name!r} ({b.source}) failed to load: {b.error}", file=sys.stderr, flush=True)


def _norm(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower())


def source_file(location: str) -> Path | None:
    """The file of a broken plugin: its path (plugins-dir), or its entry point's module, found without
    importing it (``pkg.mod:attr`` → ``pkg/mod.py``)."""
    if location.endswith(".py"):
        return Path(location)
    module = location.split(":", 1)[0].strip()
    if not module:
        return None
    top, *rest = module.split(".")
    try:
        spec = importlib.util.find_spec(top)  # a top-level spec is found without running the package
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin:
        return None
    base = Path(spec.origin).parent if rest else Path(spec.origin)
    if not rest:
        return base
    for candidate in (base.joinpath(*rest).with_suffix(".py"), base.joinpath(*rest, "__init__.py")):
        if candidate.is_file():
            return candidate
    return None


def mentions(location: str, name: str) -> bool:
    """Whether the plugin's source names ``name`` in quotes (a registration of it, most likely)."""
    path = source_file(location) if location else None
    try:
        text = path.read_text(errors="replace") if path else ""
    except OSError:
        return False
    return f'"{name}"' in text or f"'{name}'" in text


def provider_hint(host: Any, kind: str, name: str) -> str | None:
    """A sentence naming the broken plugin(s) that would have provided the ``kind`` ``name``; None when
    no plugin is broken."""
    if not host.broken:
        return None
    wanted = _norm(name)
    likely = [b for b in host.broken
              if (wanted and (_norm(b.name) == wanted or (len(wanted) > 2 and wanted in _norm(b.name))))
              or mentions(getattr(b, "location", ""), name)]
    if likely:
        return " ".join(f"Plugin {b.name!r} would have provided it but failed to load: {b.error}" for b in likely)
    listed = "; ".join(f"{b.name!r} ({b.error})" for b in host.broken)
    return f"{len(host.broken)} plugin(s) failed to load and may have provided it: {listed}"
