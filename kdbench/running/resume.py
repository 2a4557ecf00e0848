"""Resume: which cells of an invocation run again, and which finished runs stand.

A cell with a FINISHED run of its spec hash is skipped, unless

- that run is **stale**: the code of its methods (``kdbench.method_code``, see
  :mod:`kdbench.running.code`) differs from the installed plugins'; it runs
  again, and says so, unless ``reuse_stale`` keeps the old run (also said);
  a run recorded before code tags existed cannot be told stale and stands;
- ``force`` reruns every cell, ``force_methods`` the cells of those methods only
  (``lskd`` matches ``lskd`` with any options, ``kd(T=2)`` that setting).
"""
from __future__ import annotations

import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from kdbench.core.config import CellSpec, method_stages, parse_method
from kdbench.core.errors import ConfigError
from kdbench.core.options import canonical_method
from kdbench.running.code import code_change, method_code


@dataclass
class ResumePlan:
    todo: list[CellSpec] = field(default_factory=list)
    kept: dict[str, str] = field(default_factory=dict)  # spec hash → the FINISHED run that stands
    stale: dict[str, str] = field(default_factory=dict)  # spec hash → how its code changed (it runs again)
    stale_kept: dict[str, str] = field(default_factory=dict)  # the same, kept with reuse_stale


def _matcher(host: Any, names: Iterable[str]) -> list[tuple[str, str | None]]:
    """(method name, canonical method string or None for any options) of each ``--force-methods`` entry."""
    out = []
    for text in names:
        try:
            method = parse_method(text)
        except ValueError as exc:
            raise ConfigError(f"invalid --force-methods {text!r}: {exc}") from None
        for stage in method_stages(method):
            host.methods.get(stage.name)  # an unknown name: the registry's one line, with did-you-mean
        with_options = "(" in text
        out.append((method.name, str(canonical_method(host, method)) if with_options else None))
    return out


def forced_cells(host: Any, cells: list[CellSpec], names: Iterable[str]) -> set[str]:
    """Spec hashes of the cells ``--force-methods`` names; a name that matches no cell is a ConfigError."""
    hashes: set[str] = set()
    for name, exact in _matcher(host, names):
        hit = {c.spec_hash for c in cells if (str(c.method) == exact if exact else c.method.name == name)}
        if not hit:
            here = ", ".join(sorted({str(c.method) for c in cells}))
            raise ConfigError(f"--force-methods {exact or name!r} matches no cell of this run; its methods: {here}")
        hashes |= hit
    return hashes


def plan_resume(host: Any, cells: list[CellSpec], finished: dict[str, tuple[str, dict[str, str]]], *,
                force: bool = False, force_methods: Iterable[str] = (), reuse_stale: bool = False) -> ResumePlan:
    """What runs: ``finished`` is spec hash → (run id, tags) of the latest FINISHED runs
    (``kdbench.record.reader.finished_cells``)."""
    forced = forced_cells(host, cells, force_methods) if force_methods else set()
    plan, codes = ResumePlan(), {}
    for cell in cells:
        found = None if force or cell.spec_hash in forced else finished.get(cell.spec_hash)
        if found is None:
            plan.todo.append(cell)
            continue
        run_id, tags = found
        key = str(cell.method)
        if key not in codes:
            codes[key] = method_code(host, cell.method)
        why = code_change(tags, codes[key])
        if why and not reuse_stale:
            plan.stale[cell.spec_hash] = why
            plan.todo.append(cell)
            continue
        plan.kept[cell.spec_hash] = run_id
        if why:
            plan.stale_kept[cell.spec_hash] = why
    return plan


def say(plan: ResumePlan, cells: list[CellSpec]) -> None:
    """One line on stderr per stale cell: rerun, or kept with ``--reuse-stale``."""
    for cell in cells:
        if cell.spec_hash in plan.stale:
            print(f"kdbench: {cell.label} [{cell.short_hash}] finished with other code ({plan.stale[cell.spec_hash]}): "
                  "running it again (--reuse-stale keeps the old run)", file=sys.stderr, flush=True)
        elif cell.spec_hash in plan.stale_kept:
            print(f"kdbench: {cell.label} [{cell.short_hash}] kept with --reuse-stale although its code changed "
                  f"({plan.stale_kept[cell.spec_hash]})", file=sys.stderr, flush=True)
