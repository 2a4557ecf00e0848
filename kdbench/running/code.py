"""Which code a cell's methods ran: each stage's plugin version and a digest of its source.

The spec hash names the experiment (method, options, recipe, ...), not the
code that runs it, so a cell also records, per method it runs, the version of
the plugin that registered it and a digest of the method's source
(``kdbench.code.<method>``), and one fingerprint of them all
(``kdbench.method_code``). On resume a FINISHED run whose fingerprint differs
from the installed plugins' is stale (:mod:`kdbench.running.resume`).

The source digest is the sha256 of the syntax tree (``ast.dump``: comments and
formatting do not count, docstrings do) of the module that defines the
method's factory, of the modules of its base classes outside kdbench and
torch, and of every module of the same top-level package those refer to
(``from .kd import KD``), recursively. Code the method reaches otherwise (a
helper package of its own) is covered by the plugin's version only.
"""
from __future__ import annotations

import ast
import hashlib
import inspect
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from kdbench.core.config import Pipeline, Ref
from kdbench.record import schema

_FRAMEWORK = {"kdbench", "torch", "builtins", "abc", "typing"}  # bases whose code is not the method's
_DIGESTS: dict[tuple[str, int, int], str] = {}  # (file, mtime, size) → digest of its syntax tree


def _top(name: str) -> str:
    return name.split(".")[0]


def _module_of(obj: Any) -> ModuleType | None:
    module = obj if isinstance(obj, ModuleType) else sys.modules.get(getattr(obj, "__module__", None) or "")
    return module if isinstance(module, ModuleType) and getattr(module, "__file__", None) else None


def _closure(start: ModuleType) -> dict[str, ModuleType]:
    """``start`` and the modules of its top-level package it refers to, recursively."""
    top, found, todo = _top(start.__name__), {}, [start]
    while todo:
        module = todo.pop()
        if module.__name__ in found:
            continue
        found[module.__name__] = module
        for value in list(vars(module).values()):
            other = _module_of(value)
            if other is not None and _top(other.__name__) == top and other.__name__ not in found:
                todo.append(other)
    return found


def _file_digest(path: str) -> str:
    p = Path(path)
    try:
        st = p.stat()
        key = (str(p), st.st_mtime_ns, st.st_size)
        if key not in _DIGESTS:
            text = p.read_text(encoding="utf-8")
            try:
                canonical = ast.dump(ast.parse(text))
            except SyntaxError:
                canonical = text
            _DIGESTS[key] = hashlib.sha256(canonical.encode()).hexdigest()
        return _DIGESTS[key]
    except OSError:
        return "unreadable"


def source_digest(factory: Any) -> str:
    """16 hex of the method's source (see the module's docstring); ``unknown`` when it has no source file."""
    starts = [factory] + ([c for c in inspect.getmro(factory)[1:] if _top(c.__module__) not in _FRAMEWORK]
                          if inspect.isclass(factory) else [])
    modules: dict[str, ModuleType] = {}
    for obj in starts:
        module = _module_of(obj)
        if module is not None:
            modules.update(_closure(module))
    if not modules:
        return "unknown"
    parts = {name: _file_digest(module.__file__) for name, module in modules.items()}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def stage_code(host: Any, name: str) -> str:
    """``<plugin> <version> <digest>`` of a registered method: the plugin that registered it, that plugin's
    distribution version (``-`` for a loose file or an object), its source digest."""
    owner = host.methods.owner(name)
    info = host.info.get(owner)
    version = (info.version if info is not None else None) or "-"
    return f"{owner} {version} {source_digest(host.methods.get(name).factory)}"


def method_code(host: Any, method: Ref | Pipeline) -> dict[str, str]:
    """The code tags of a cell's method: ``kdbench.code.<method>`` per method it runs (an implied baseline
    included) and their fingerprint ``kdbench.method_code``."""
    from kdbench.running.pipeline import stage_plan

    stages = {ref.name: stage_code(host, ref.name) for ref in stage_plan(host, method)}
    tags = {schema.fill(schema.CODE, method=name): code for name, code in stages.items()}
    tags[schema.METHOD_CODE] = hashlib.sha256(json.dumps(stages, sort_keys=True).encode()).hexdigest()[:16]
    return tags


def code_change(old_tags: dict[str, str], new_tags: dict[str, str]) -> str | None:
    """How the code differs between a finished run's tags and today's (one line), or None when it does not,
    or when the run predates code tags (it cannot say)."""
    old = old_tags.get(schema.METHOD_CODE)
    if old is None or old == new_tags[schema.METHOD_CODE]:
        return None
    changes = []
    for key, now in new_tags.items():
        if key == schema.METHOD_CODE or old_tags.get(key) == now:
            continue
        method = key.removeprefix(schema.CODE.split("<")[0])
        before = old_tags.get(key, "not recorded").split(" ", 1)[-1]
        changes.append(f"{method}: {before} → {now.split(' ', 1)[-1]}")
    return "; ".join(changes) or "its methods changed"
