"""The plugin contract: every hook kdbench calls, with its types.

A plugin is a module (or object) with functions decorated by
``kdbench.hookimpl`` whose names match the specs below. Registration hooks
receive a ``register`` callback and may call it any number of times; the host
validates each item and rejects duplicates. A plugin implements only the hooks
it needs.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:  # imports for the annotations only; keeps start-up light
    import click
    import torch

    from kdbench.core.api import Dataset, Executor, Hardware, Method, ModelPair
    from kdbench.core.config import CellSpec

hookspec = pluggy.HookspecMarker("kdbench")
#: Decorator for plugin functions that implement a hook: ``@kdbench.hookimpl``.
hookimpl = pluggy.HookimplMarker("kdbench")


@hookspec
def register_methods(register: Callable[[Method], None]) -> None:
    """Register compression methods (distillers, pruners, quantizers).

    Called once when the plugin manager is first used. Call
    ``register(kdbench.Method(...))`` once per method.
    """


@hookspec
def register_model_pairs(register: Callable[[ModelPair], None]) -> None:
    """Register teacher→student pairs of timm model names.

    Called once at start-up. A plugin may also register new architectures into
    timm's registry at import time so that pairs can name them.
    """


@hookspec
def register_datasets(register: Callable[[Dataset], None]) -> None:
    """Register datasets: a name and a builder returning train/test splits.

    Called once at start-up. Builders run only when a cell needs the data.
    """


@hookspec
def register_hardware(register: Callable[[Hardware], None]) -> None:
    """Register measurement targets (``cpu``, ``cuda``, ...).

    Called once at start-up. A target that is absent on this machine is still
    registered; its ``probe`` says why it is unavailable.
    """


@hookspec
def register_suites(register: Callable[[Path], None]) -> None:
    """Register suite YAML files by path.

    Called once at start-up. Each file is parsed and validated when registered;
    a malformed file is reported against the plugin that registered it.
    """


@hookspec
def register_executors(register: Callable[[Executor], None]) -> None:
    """Register executors, the things that run a list of cells."""


@hookspec
def register_commands(cli: click.Group) -> None:
    """Add click commands or groups to the ``kdbench`` CLI.

    Called once when the CLI is built, before arguments are parsed.
    """


@hookspec
def cell_started(cell: CellSpec, run_id: str) -> None:
    """Called in the process that runs a cell, after its MLflow run has started."""


@hookspec
def cell_finished(cell: CellSpec, run_id: str, status: str, metrics: dict[str, float]) -> None:
    """Called after a cell ends; ``status`` is ``FINISHED`` or ``FAILED``.

    ``metrics`` holds the final metrics logged for the cell (empty on failure).
    """


@hookspec
def extra_metrics(
    model: torch.nn.Module, cell: CellSpec, example: torch.Tensor
) -> dict[str, float] | None:
    """Return extra metrics for a trained student, or None.

    Called once per finished cell, on the trained (and compressed) student in
    eval mode, on the CPU. ``example`` is a small batch of test images. Returned values are logged
    to the cell's run as they are; each plugin should prefix its names.
    """


HOOK_NAMES: frozenset[str] = frozenset(
    name for name, obj in dict(globals()).items() if hasattr(obj, "kdbench_spec")
)

__all__ = ["HOOK_NAMES", "hookimpl", "hookspec"]

