"""The kinds of things plugins register, declared once.

Every part of kdbench that deals with "each kind of plugin item" reads this
table: the plugin host (one registry and one registration hook per kind),
``kdbench list`` (one view per kind), ``kdbench plugins new`` and the scaffold
(the kinds that have a package template), and :mod:`kdbench.testing` (which
registry holds an item, which hook registers a ready-made item).

Adding a kind means adding a row here, a hook spec in
:mod:`kdbench.core.hookspecs`, and (for ``plugins new``) a template folder
``kdbench/authoring/templates/<name>/``.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import importlib
from typing import TYPE_CHECKING

from kdbench.core.config import load_suite_file
from kdbench.core.errors import KdbenchError

if TYPE_CHECKING:
    from kdbench.core.api import Hardware


@dataclass(frozen=True)
class Scaffold:
    """What ``kdbench plugins new --kind KIND`` says about a kind (its files are templates)."""

    summary: str  # what the example in the package is (pyproject description, README)
    run: str  # a `kdbench run` command that uses the new item; ``{name}`` is its name


@dataclass(frozen=True)
class Kind:
    """One kind of registered item."""

    name: str  # singular: ``--kind``, ``check_<name>``, messages ("method")
    registry: str  # the PluginHost attribute and the ``kdbench list`` argument ("methods")
    hook: str  # the registration hook a plugin implements ("register_methods")
    type_path: str  # what ``register`` accepts, as "module:Class" (imported when needed: torch is slow to import)
    label: str  # one item, in the registry's error messages ("hardware target")
    describe: Callable[[Any], dict[str, Any]]  # one row of ``kdbench list --json`` (the owner is added)
    columns: tuple[str, ...]  # the columns of the ``kdbench list`` table
    coerce: Callable[[Any], Any] | None = None  # turns what a plugin registers into an item (suite file → Suite)
    scaffold: Scaffold | None = None  # None: ``plugins new`` has no template for it

    @property
    def item_type(self) -> type:
        """The class ``register`` accepts."""
        module, name = self.type_path.split(":")
        return getattr(importlib.import_module(module), name)


def _suite_from(item: Any) -> Any:
    return load_suite_file(Path(item)) if isinstance(item, (str, Path)) else item


def _hardware_row(h: Hardware) -> dict[str, Any]:
    reason = h.probe()
    return {"name": h.name, "device": h.device, "threads": h.threads, "precision": h.precision,
            "precisions": list(h.measured_precisions), "runtime": getattr(h.runtime, "name", "") or "",
            "available": reason is None, "reason": reason or ""}


_RUN = '--datasets "glyphs(num_train=192,num_test=96)" --epochs 2 --batch-size 32'

#: Every kind, in the order the host collects registrations.
KINDS: tuple[Kind, ...] = (
    Kind(
        "method", "methods", "register_methods", "kdbench.core.api:Method", "method",
        lambda m: {"name": m.name, "kind": m.kind, "family": m.family, "taps": m.taps, "summary": m.summary,
                   "paper": m.paper, "options": m.defaults()},
        ("name", "kind", "family", "taps", "paper", "summary", "options", "plugin"),
        scaffold=Scaffold("a distillation method (variational information distillation on the last stage)",
                          f"kdbench run --methods {{name}} {_RUN}"),
    ),
    Kind(
        "pair", "pairs", "register_model_pairs", "kdbench.core.api:ModelPair", "pair",
        lambda p: {"name": p.name, "teacher": p.teacher, "student": p.student, "summary": p.summary},
        ("name", "teacher", "student", "summary"),
        scaffold=Scaffold("a teacher→student pair of small CNNs registered into timm",
                          f"kdbench run --pairs {{name}} {_RUN}"),
    ),
    Kind(
        "dataset", "datasets", "register_datasets", "kdbench.core.api:Dataset", "dataset",
        lambda d: {"name": d.name, "needs_root": d.needs_root, "summary": d.summary},
        ("name", "needs_root", "summary", "plugin"),
        scaffold=Scaffold("a dataset generated in memory (oriented gratings)",
                          'kdbench run --datasets "{name}(num_train=192,num_test=96)" --epochs 2 --batch-size 32'),
    ),
    Kind(
        "hardware", "hardware", "register_hardware", "kdbench.core.api:Hardware", "hardware target",
        _hardware_row,
        ("name", "device", "threads", "precisions", "runtime", "available", "reason"),
        scaffold=Scaffold("a CPU measurement target (2 threads, channels_last)",
                          f"kdbench run --hardware cpu,{{name}} {_RUN}"),
    ),
    Kind(
        "suite", "suites", "register_suites", "kdbench.core.config:Suite", "suite",
        lambda s: {"name": s.name, "version": s.version, "description": s.description,
                   "methods": [str(m) for m in s.methods], "pairs": [str(p) for p in s.pairs],
                   "datasets": [str(d) for d in s.datasets], "seeds": s.seeds, "hardware": s.hardware,
                   "epochs": s.recipe.epochs, "source": s.source},
        ("name", "version", "methods", "pairs", "datasets", "seeds", "epochs", "plugin"),
        coerce=_suite_from,
    ),
    Kind(
        "executor", "executors", "register_executors", "kdbench.core.api:Executor", "executor",
        lambda e: {"name": e.name, "summary": e.summary},
        ("name", "summary", "plugin"),
        scaffold=Scaffold("an executor running each cell in a fresh worker process",
                          f"kdbench run --executor {{name}} {_RUN}"),
    ),
)

#: The kinds ``kdbench plugins new`` can write a package for.
SCAFFOLD_KINDS: tuple[Kind, ...] = tuple(k for k in KINDS if k.scaffold is not None)


def kind(name: str) -> Kind:
    """The kind called ``name`` (singular, "method") or registry (plural, "methods")."""
    for k in KINDS:
        if name in (k.name, k.registry):
            return k
    raise KdbenchError(f"unknown plugin kind {name!r}; valid kinds: {', '.join(k.name for k in KINDS)}")


def kind_of(item: Any) -> Kind | None:
    """The kind of a ready-made item (a Method, Dataset, ...), or None."""
    return next((k for k in KINDS if isinstance(item, k.item_type)), None)


__all__ = ["KINDS", "SCAFFOLD_KINDS", "Kind", "Scaffold", "kind", "kind_of"]
