"""Tiny data and tiny suites: enough to train, log and rank a cell in seconds on a CPU."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from kdbench.core.api import DataBundle
from kdbench.core.config import REFERENCE_METHOD, MeasureSpec, Recipe, Ref, Suite
from kdbench.core.host import PluginHost, get_host, using
from kdbench.testing.contract import fail
from kdbench.testing.isolation import fresh_store, tracking_for_check

#: The dataset of :func:`tiny_suite`: a few batches of the embedded glyphs.
TINY_DATASET = "glyphs(num_train=64,num_test=32)"
#: Measurement settings for tests: a handful of timed calls, no throughput run.
QUICK_MEASURE = MeasureSpec(warmup=1, min_run_time=0.01, min_calls=3, max_run_time=0.2, throughput_batch_size=0)


# --------------------------------------------------------------------------- data


class TensorSplit(torch.utils.data.Dataset):
    """A split held in memory: ``(image, label, index)`` items, all labels in ``targets``."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        self.images, self.targets = images, labels

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):
        return self.images[i], int(self.targets[i]), i


def tiny_data(
    num_train: int = 16, num_test: int = 8, num_classes: int = 10, input_size: tuple[int, int, int] = (3, 32, 32),
    seed: int = 0,
) -> DataBundle:
    """A few random normalised images with balanced labels: enough for a training step."""
    g = torch.Generator().manual_seed(seed)

    def split(n: int) -> TensorSplit:
        labels = torch.arange(n) % num_classes
        return TensorSplit(torch.randn(n, *input_size, generator=g), labels[torch.randperm(n, generator=g)])

    c = input_size[0]
    return DataBundle(split(num_train), split(num_test), num_classes, input_size, (0.0,) * c, (1.0,) * c)


# --------------------------------------------------------------------------- suites


def tiny_suite(
    methods: Sequence[str | Ref | dict] = (REFERENCE_METHOD,),
    pairs: Sequence[str] = ("tiny",),
    datasets: Sequence[str | Ref | dict] = (TINY_DATASET,),
    hardware: Sequence[str] = ("cpu",),
    *,
    executor: str = "local",
    seeds: Sequence[int] = (0,),
    epochs: int = 1,
    batch_size: int = 32,
    name: str = "kdbench-test",
) -> Suite:
    """A suite that trains in seconds on a CPU: one epoch, small batches, quick measurement."""
    return Suite(
        name=name, version=1, description="kdbench.testing tiny suite",
        methods=list(methods), pairs=list(pairs), datasets=list(datasets), seeds=list(seeds),
        hardware=list(hardware), executor=executor, device="cpu",
        recipe=Recipe(epochs=epochs, batch_size=batch_size, eval_batch_size=64, lr=0.05, schedule="constant"),
        measure=QUICK_MEASURE,
    )


@dataclass
class SuiteResult:
    """What :func:`run_tiny_suite` ran: per-cell results, where they were logged, the leaderboard."""

    suite: Suite
    results: list[Any]  # kdbench.CellResult, in cell order
    tracking_uri: str
    experiment_id: str | None
    leaderboard: Any  # pandas.DataFrame, built from MLflow after the run
    runs: dict[str, Any] = field(default_factory=dict)  # run id -> mlflow Run of each cell

    def result(self, method: str) -> Any:
        """The result of the (first) cell of ``method`` (its name or ``str(Ref)``)."""
        for r in self.results:
            if r.cell.method.name == method or str(r.cell.method) == method:
                return r
        raise KeyError(method)


def run_tiny_suite(
    host: PluginHost | None = None,
    suite: Suite | None = None,
    *,
    baseline: bool | None = None,
    tracking_uri: str | None = None,
    check: bool = True,
    **suite_options: Any,
) -> SuiteResult:
    """Run a (tiny) suite through ``kdbench.running.runner`` with a real MLflow store, as ``kdbench run`` does.

    ``suite`` defaults to ``tiny_suite(**suite_options)``. The host defaults to
    the current one; it is made the current host during the run (so
    the executor's workers find it in this process). ``baseline``: also run
    the student-baseline cells (of the reference method, ``baseline``; default:
    only when the suite lists it). Logs into ``tracking_uri``, else the ``kdbench_env``
    store, else a throwaway store. With ``check``, a cell that is not
    FINISHED raises :class:`ContractError` with its error and traceback.
    """
    from kdbench.record import schema
    from kdbench.record.client import client
    from kdbench.results import leaderboards
    from kdbench.running.runner import expand, preflight, run_suite

    suite = suite or tiny_suite(**suite_options)
    host = host or get_host()
    listed = {m.name for m in suite.methods}
    want_baseline = (REFERENCE_METHOD in listed) if baseline is None else baseline
    with tracking_for_check(tracking_uri) as uri, using(host):
        fresh_store(uri)
        _experiment_beside_store(uri, schema.experiment_name(suite.name))
        cells = expand(suite, host, "cpu")
        if not want_baseline:
            cells = [c for c in cells if c.method.name != REFERENCE_METHOD]
        preflight(suite, host, cells)
        run = run_suite(host, suite, cells, force=True, command=["kdbench.testing.run_tiny_suite"])
        c = client(uri)
        runs = {r.run_id: c.get_run(r.run_id) for r in run.results if r.run_id}
        if check:
            problems = []
            for r in run.results:
                if r.status != "FINISHED":
                    problems.append(f"cell {r.cell.label} {r.status}: {r.error}" + _traceback_tail(c, r.run_id))
                elif r.run_id and runs[r.run_id].info.status != "FINISHED":
                    problems.append(f"cell {r.cell.label}: MLflow run {r.run_id} is {runs[r.run_id].info.status}")
            if problems:
                fail("\n".join(problems))
        board = leaderboards.build(suite.name, uri)
    return SuiteResult(suite, run.results, uri, run.experiment_id, board, runs)


def _experiment_beside_store(uri: str, name: str) -> None:
    """Create the suite's experiment with its artifacts next to a SQLite store (not in ./mlruns of the cwd)."""
    from kdbench.record import schema
    from kdbench.record.client import client

    if not uri.startswith("sqlite:///"):
        return
    c = client(uri)
    if c.get_experiment_by_name(name) is None:
        folder = Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts"
        c.create_experiment(name, artifact_location=folder.as_uri(), tags={schema.MANAGED: "true"})


def _traceback_tail(c, run_id: str | None, lines: int = 25) -> str:
    if not run_id:
        return ""
    try:
        path = c.download_artifacts(run_id, "traceback.txt")
        text = Path(path).read_text()
    except Exception:
        return ""
    return "\n" + "\n".join(text.rstrip().splitlines()[-lines:])


__all__ = ["QUICK_MEASURE", "TINY_DATASET", "SuiteResult", "TensorSplit", "run_tiny_suite", "tiny_data", "tiny_suite"]
