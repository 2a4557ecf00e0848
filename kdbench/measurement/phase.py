"""The measurement phase: every distinct deployed model measured once, after training, in interleaved rounds.

Cells no longer time their students while other cells may be training.
Each cell says which model it deploys (:func:`fingerprint`: architecture,
parameter shapes, input, deployment) and leaves the model with
:func:`keep_for_measurement`; once the executor has run every cell,
:func:`measure_phase` groups the cells of each (dataset, pair) by deployed
model and measures each distinct one on every target, with nothing else of
kdbench's running:

- a dense fp32 student of one architecture and input is one measurement,
  however many methods trained it (its weights do not change its speed);
  a pruned model is its own architecture, an int8 graph is measured as itself;
- ``spec.rounds`` rounds, each measuring every model of the group once, the
  order reversed every other round, so slow drift (thermal, frequency,
  another process) hits the candidates and their reference alike;
- per model and target: the median of the rounds' p50 (and of the other
  statistics), the coefficient of variation of the round p50s
  (``latency_cv``), and how much CPU other processes used meanwhile
  (``measure_other_cpu``, a fraction of the machine, from ``/proc/stat``) with
  the 1-minute load average; every cell of the group gets the same figures,
  so rows that deploy the same model show the same latency and a 1.00×
  speed-up. Leaderboards show a speed-up from noisy (CV above
  :data:`MAX_CV`) or disturbed (other CPU above :data:`MAX_OTHER_CPU`)
  measurements as unreliable, never as a number.
"""
from __future__ import annotations

import hashlib
import json
import os
import resource
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch import nn

from kdbench.core.api import Deployment, Hardware
from kdbench.core.config import MeasureSpec
from kdbench.measurement.measure import TargetResult, measure_targets, result_tags
from kdbench.record import schema

MAX_CV = 0.05  # above this, round-to-round spread makes a speed-up unreadable
MAX_OTHER_CPU = 0.10  # above this share of the machine used by other processes, the figures were disturbed


def fingerprint(model: nn.Module, arch: str, kwargs: dict[str, Any], input_size: tuple[int, ...],
                deployment: Deployment | None, run_id: str) -> str:
    """What identifies a deployed model for measurement. Float models: architecture, kwargs, input size and
    every parameter/buffer shape (a pruned model differs by its shapes). A deployment that transforms the
    graph (int8, compiled) is measured as itself: its run id is part of it."""
    if deployment is not None and (deployment.precision or deployment.mode):
        return "run:" + run_id
    shapes = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    blob = json.dumps({"arch": arch, "kwargs": kwargs, "input": list(input_size), "shapes": shapes},
                      sort_keys=True, default=str)
    return "float:" + hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass
class Pending:
    """A trained cell's deployed model, waiting for the measurement phase."""

    run_id: str
    group: tuple[str, str]  # (dataset, pair): models measured together in rounds
    key: str  # :func:`fingerprint`
    input_size: tuple[int, int, int]
    targets: list[Hardware]  # as the deployment is measured on them (``deploy_targets``)
    model: nn.Module | None = None  # held once per key in this process; None: not kept here
    reference: bool = False  # the dense student of the group (measured first in the first round)
    inputs: Any = None  # RuntimeInputs for runtime targets (test and calibration images); None: none needed


_KEPT: dict[str, nn.Module] = {}  # fingerprint → one model, in the process that trained it
_PENDING: list[Pending] = []


_INPUTS: dict[str, Any] = {}  # fingerprint → the runtime inputs of the cell whose model was kept


def keep_for_measurement(pending: Pending, model: nn.Module) -> None:
    """Record a trained cell's deployed model for the phase (one copy per distinct model is kept, with one set
    of runtime inputs)."""
    _KEPT.setdefault(pending.key, model)
    if pending.inputs is not None:
        _INPUTS.setdefault(pending.key, pending.inputs)
        pending.inputs = None
    _PENDING.append(pending)


def take_pending(run_ids: Iterable[str]) -> list[Pending]:
    """The pending measurements of these runs, with their models; forgotten here once taken."""
    wanted = set(run_ids)
    taken = [p for p in _PENDING if p.run_id in wanted]
    _PENDING[:] = [p for p in _PENDING if p.run_id not in wanted]
    for p in taken:
        p.model = _KEPT.get(p.key)
        p.inputs = p.inputs or _INPUTS.get(p.key)
    if not _PENDING:
        _KEPT.clear()
        _INPUTS.clear()
    return taken


class OtherLoad:
    """How much of the machine other processes used between :meth:`start` and :meth:`stop` (Linux /proc/stat;
    None elsewhere): (busy CPU time of all processes − this process's) / (wall time × CPUs)."""

    def __init__(self) -> None:
        self.fraction: float | None = None
        self.load1: float | None = None

    @staticmethod
    def _busy() -> float | None:
        try:
            with open("/proc/stat") as fh:
                fields = [float(v) for v in fh.readline().split()[1:]]
        except OSError:
            return None
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)
        return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")

    @staticmethod
    def _own() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    def start(self) -> OtherLoad:
        self._t0, self._busy0, self._own0 = time.monotonic(), self._busy(), self._own()
        return self

    def stop(self) -> OtherLoad:
        busy = self._busy()
        wall = time.monotonic() - self._t0
        if busy is not None and self._busy0 is not None and wall > 0:
            other = (busy - self._busy0) - (self._own() - self._own0)
            self.fraction = max(0.0, other / (wall * (os.cpu_count() or 1)))
        self.load1 = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
        return self


@dataclass
class Measured:
    """One distinct model's figures on every target, and the tags saying what was measured or why not."""

    metrics: dict[str, float] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)


def combine_rounds(rounds: list[list[TargetResult]]) -> tuple[dict[str, float], list[TargetResult]]:
    """Median over rounds of every metric, plus ``latency_cv.<target>.<precision>`` (std / mean of the rounds'
    p50). Compilation time is the first round's (later rounds compile the same graph again)."""
    values: dict[str, list[float]] = {}
    for results in rounds:
        for r in results:
            for k, v in r.metrics.items():
                values.setdefault(k, []).append(float(v))
    out: dict[str, float] = {}
    for k, vs in values.items():
        out[k] = vs[0] if k.startswith("compile_s.") else float(np.median(vs))
        if k.startswith("latency_p50_ms."):
            suffix = k.removeprefix("latency_p50_ms.")
            out[schema.on_target(schema.LATENCY_CV, suffix)] = float(np.std(vs, ddof=1) / np.mean(vs)) if len(vs) > 1 else float("nan")
    return out, rounds[-1]


def measure_group(models: list[tuple[Any, ...]], spec: MeasureSpec) -> dict[str, Measured]:
    """Measure each (key, model, targets, input size[, runtime inputs]) on its targets in ``spec.rounds``
    interleaved rounds."""
    rounds = max(1, spec.rounds)
    per_round = spec.model_copy(update={
        "min_run_time": max(0.05, spec.min_run_time / rounds), "min_calls": max(5, spec.min_calls // rounds),
        "throughput_min_run_time": max(0.05, spec.throughput_min_run_time / rounds),
    })
    collected: dict[str, list[list[TargetResult]]] = {key: [] for key, *_ in models}
    load = OtherLoad().start()
    for r in range(rounds):
        order = models if r % 2 == 0 else list(reversed(models))
        for key, model, targets, input_size, *inputs in order:
            collected[key].append(measure_targets(model, targets, input_size, per_round,
                                                  inputs=inputs[0] if inputs else None))
    load.stop()
    out: dict[str, Measured] = {}
    for key, results in collected.items():
        metrics, last = combine_rounds(results)
        metrics[schema.MEASURE_ROUNDS] = rounds
        if load.fraction is not None:
            metrics[schema.MEASURE_OTHER_CPU] = load.fraction
        if load.load1 is not None:
            metrics[schema.MEASURE_LOAD1] = load.load1
        out[key] = Measured(metrics, result_tags(last))
    return out


def measure_phase(pending: list[Pending], spec: MeasureSpec, log: Any) -> int:
    """Measure every pending cell's deployed model once per distinct model; ``log(run_id, metrics, tags)``
    records the figures on each cell's run. Returns how many distinct models were measured."""
    measured = 0
    groups: dict[tuple[str, str], list[Pending]] = {}
    for p in pending:
        groups.setdefault(p.group, []).append(p)
    for group, items in groups.items():
        distinct: dict[str, Pending] = {}
        for p in sorted(items, key=lambda p: not p.reference):  # the reference first
            if p.model is not None:
                distinct.setdefault(p.key, p)
        results = measure_group([(k, p.model, p.targets, p.input_size, p.inputs) for k, p in distinct.items()], spec) \
            if distinct else {}
        measured += len(results)
        for p in items:
            got = results.get(p.key)
            if got is None:
                log(p.run_id, {}, {schema.MEASURE_NOTE: "not measured: the model was trained in another process; "
                                   f"measure it with `kdbench bench runs:/{p.run_id}`"})
                continue
            log(p.run_id, got.metrics, {**got.tags, schema.DEPLOYED_MODEL: p.key})
    return measured
