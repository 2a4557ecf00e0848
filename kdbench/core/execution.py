"""What executors get and give back: jobs (one cell each), their results, the executor itself.

Plugin authors import these from ``kdbench`` directly.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


# --------------------------------------------------------------------------- executors


@dataclass
class Job:
    """One cell to run, with everything a worker needs to run and record it (picklable).

    ``host`` says how to rebuild the plugin host in another process
    (``kdbench.core.host.HostRecipe``); in the process that made the job, the
    runner's own host is used. ``teacher_key`` is the content key of the
    teacher the harness trains for the cell (None: it comes from a
    checkpoint): jobs with the same key share one teacher, so an executor that
    runs cells side by side calls ``kdbench.prepare_teacher(job)`` once per key
    first. ``env``: the ``KDBENCH_*``/``MLFLOW_*`` variables a worker on
    another machine needs (teacher cache as an absolute path). ``after``: the
    spec hash of a cell in the same run whose trained student this cell's
    first stage starts from (a pruner after the baseline): an executor that
    runs cells side by side starts this one once that one has ended, or the
    cell trains that student again itself.
    """

    cell: Any  # kdbench.core.config.CellSpec
    experiment_id: str
    parent_run_id: str
    tracking_uri: str
    host: Any = None  # kdbench.core.host.HostRecipe
    resources: Any = None  # the suite's ``Resources`` (what a cluster executor asks for per cell)
    teacher_key: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    after: str | None = None  # spec hash of a cell of this invocation whose student this one reuses: run it first

    def failed(self, error: str) -> CellResult:
        """The result of a job whose worker died before it could say (an executor reports it so)."""
        return CellResult(self.cell, "FAILED", None, error=error)


@dataclass
class CellResult:
    """What running a job gave: FINISHED, FAILED, or SKIPPED (already finished: resume)."""

    cell: Any  # kdbench.core.config.CellSpec
    status: str
    run_id: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    seconds: float = 0.0


@dataclass(frozen=True)
class Executor:
    """Runs cells: ``run(jobs, run_one)`` calls ``run_one(job)`` for every :class:`Job` and returns
    the :class:`CellResult` of each, in job order.

    ``run_one`` is the module-level ``kdbench.run_job``, picklable, so an
    executor may call it in other processes or on other machines; it never
    raises for a failing cell. Executors own scheduling only; tracking and
    failure handling are the host's, inside ``run_one``.

    ``preflight(suite, tracking_uri, n_cells)``, when given, is called before
    anything is recorded in MLflow; it raises ``ConfigError`` with a one-line
    reason to refuse a set-up it cannot run (e.g. parallel workers writing to
    one SQLite file). ``cli_options``: ``click.Option`` objects the executor
    adds to ``kdbench run`` (e.g. the Ray executor's ``--ray-address``); their
    callbacks apply them (the value is not passed to ``run``).
    """

    name: str
    run: Callable[[list[Job], Callable[[Job], CellResult]], list[CellResult]]
    summary: str = ""
    preflight: Callable[[Any, str, int], None] | None = None
    cli_options: tuple[Any, ...] = ()
