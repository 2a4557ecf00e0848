"""Running one cell: train, evaluate, measure, and log it all to its MLflow run.

``run_cell`` never raises for a failing cell: the run is marked FAILED with its
traceback as an artifact and the result says so, so the suite goes on.
Ctrl-C marks the run KILLED and stops the suite.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time
import traceback
from typing import Any

import torch

from kdbench.record import tracking as tr
from kdbench.core.api import CellResult, DataBundle, Job
from kdbench.core.config import CellSpec, canonical_hash, method_stages
from kdbench.engine.loop import EpochResult
from kdbench.engine.models import count_params
from kdbench.measurement.measure import MACS_COUNTER, measure_on_targets, static_metrics
from kdbench.running.pipeline import MethodResult, stage_plan, deploy_targets, reuse_from_mlflow, run_method, save_to_tmp
from kdbench.core.host import PluginHost, host_for
from kdbench.running.progress import TrainingProgress
from kdbench.running.teachers import get_teacher, teacher_key


_DATA: dict[str, DataBundle] = {}


def load_data(host: PluginHost, cell: CellSpec) -> DataBundle:
    """The dataset's bundle, built once per process."""
    key = cell.dataset.model_dump_json()
    if key not in _DATA:
        _DATA[key] = host.datasets.get(cell.dataset.name).build(**cell.dataset.options)
    return _DATA[key]


def cell_tags(cell: CellSpec, host: PluginHost) -> dict[str, Any]:
    t = tr.TAG
    return {
        t + "role": tr.ROLE_CELL,
        t + "spec_hash": cell.spec_hash,
        t + "suite": cell.suite,
        t + "suite_version": cell.suite_version,
        t + "method": str(cell.method),
        t + "method_name": cell.method.name,
        t + "pair": cell.pair,
        t + "teacher": cell.teacher_arch,
        t + "student": cell.student_arch,
        t + "dataset": str(cell.dataset),
        t + "seed": cell.seed,
        t + "device": cell.device,
        t + "score_epoch": "last",
        # rows with different recipes must not be averaged together silently
        t + "recipe_hash": canonical_hash({"recipe": cell.recipe.model_dump(mode="json"),
                                           "teacher": cell.teacher.model_dump(mode="json")})[:16],
        t + "macs_counter": MACS_COUNTER,
        **tr.environment_tags(host.plugin_versions()),
    }


def _epoch_metrics(r: EpochResult, prefix: str = "") -> dict[str, float]:
    m = {
        "train_loss": r.train_loss, "train_top1": r.train_top1, "test_top1": r.test_top1,
        "test_top5": r.test_top5, "test_loss": r.test_loss, "lr": r.lr, "epoch_seconds": r.seconds,
    }
    m.update({f"loss.{k}": v for k, v in r.terms.items()})
    if r.phase == "pretrain":  # a distiller's pre-training epoch: metrics of their own, no evaluation
        prefix += "pretrain."
        m = {k: v for k, v in m.items() if not k.startswith("test_")}
    return {prefix + k: v for k, v in m.items()}


def run_job(job: Job) -> CellResult:
    """Run a job's cell in this process (what executors call).

    A module-level function of a picklable job, so that executors can ship it
    to other processes or machines; the host is the runner's own in the
    process that made the job, and is rebuilt from ``job.host`` elsewhere.
    """
    return run_cell(job, host_for(job.host))


def teacher_cache_key(cell: CellSpec) -> str | None:
    """The content key of the teacher the harness trains for ``cell``; None when it comes from a checkpoint.

    Cells with the same key share one teacher: an executor that runs cells in
    parallel calls :func:`prepare_teacher` once per key before those cells.
    """
    if cell.teacher.checkpoints.get(cell.pair):
        return None
    return teacher_key(cell)


def prepare_teacher(job: Job) -> str:
    """Train the job's teacher into the cache (or find it there), as a teacher run of the job's parent.

    Module-level and picklable like :func:`run_job`. Returns where the teacher
    came from (``trained``, ``cache``, ...) or ``failed: <reason>``; never raises
    for a failure (the cells that need the teacher then report it), except
    KeyboardInterrupt.
    """
    host = host_for(job.host)
    try:
        c = tr.client(job.tracking_uri)
        data = load_data(host, job.cell)
        return _teacher_for(c, job, host, data, torch.device(job.cell.device)).source
    except Exception as exc:
        return f"failed: {type(exc).__name__}: {exc}".splitlines()[0]


def run_cell(job: Job, host: PluginHost) -> CellResult:
    cell = job.cell
    c = tr.client(job.tracking_uri)
    start = time.perf_counter()
    try:
        run_id = tr.start_run(c, job.experiment_id, cell.label, cell_tags(cell, host), job.parent_run_id)
    except Exception as exc:  # the tracking store is away: nothing can be recorded, say so
        message = f"{type(exc).__name__}: {exc}".splitlines()[0]
        return CellResult(cell, "FAILED", None, error=message, seconds=time.perf_counter() - start)
    try:
        tr.log_params(c, run_id, {
            **tr.flatten(cell.canonical()),
            **method_option_params(host, cell),
            "spec_hash": cell.spec_hash,
        })
        c.log_text(run_id, json.dumps(cell.model_dump(mode="json"), indent=2, sort_keys=True), "cell_spec.json")
        host.call("cell_started", cell=cell, run_id=run_id)

        device = torch.device(cell.device)
        data = load_data(host, cell)
        teacher = _teacher_for(c, job, host, data, device)
        tr.log_metrics(c, run_id, {
            "teacher_top1": teacher.top1, "teacher_top5": teacher.top5, "teacher_params": count_params(teacher.model),
        })
        tr.set_tags(c, run_id, {tr.TAG + "teacher_source": teacher.source})

        # one distiller trains a fresh student; a pipeline (kd>prune>quant) runs its stages (kdbench.running.pipeline)
        outcome = run_method(
            cell, host, data, teacher, device,
            lambda r, prefix, offset: tr.log_metrics(c, run_id, _epoch_metrics(r, prefix), step=offset + r.epoch),
            reuse=reuse_from_mlflow(c, job.experiment_id, cell),
        )
        final = dict(outcome.metrics)
        student_cpu = outcome.model.to("cpu")
        final.update(static_metrics(outcome.float_model.to("cpu"), data.input_size))
        measured, measure_tags = measure_on_targets(
            student_cpu, deploy_targets([host.hardware.get(h) for h in cell.hardware], outcome.deployment),
            data.input_size, cell.measure,
        )
        final.update(measured)
        example = torch.stack([data.test[i][0] for i in range(min(8, len(data.test)))])
        for extra in host.call("extra_metrics", model=student_cpu, cell=cell, example=example):
            if extra:
                final.update({k: float(v) for k, v in extra.items()})
        artifact_bytes = _log_model(c, run_id, student_cpu, outcome)
        if outcome.pipeline:  # a compressed model: its size on disk is that of what its stages saved
            final["size_bytes"] = artifact_bytes
        tr.log_metrics(c, run_id, final)
        tr.set_tags(c, run_id, {**measure_tags, **outcome.tags})
        c.set_terminated(run_id, "FINISHED")
        host.call("cell_finished", cell=cell, run_id=run_id, status="FINISHED", metrics=final)
        return CellResult(cell, "FINISHED", run_id, final, seconds=time.perf_counter() - start)
    except KeyboardInterrupt:
        _fail(c, run_id, "KILLED", "interrupted (KeyboardInterrupt)", traceback.format_exc())
        raise
    except Exception as exc:
        message = f"{type(exc).__name__}: {exc}".splitlines()[0]
        _fail(c, run_id, "FAILED", message, traceback.format_exc(), type(exc).__name__)
        try:
            host.call("cell_finished", cell=cell, run_id=run_id, status="FAILED", metrics={})
        except Exception as hook_exc:  # a plugin's hook must not turn a recorded failure into a crash
            print(f"kdbench: cell_finished hook failed: {hook_exc}", file=sys.stderr, flush=True)
        return CellResult(cell, "FAILED", run_id, error=message, seconds=time.perf_counter() - start)


def _teacher_for(c, job: Job, host: PluginHost, data: DataBundle, device: torch.device):
    """The cell's teacher; when it must be trained, that training is a run of its own."""
    cell = job.cell
    state: dict[str, Any] = {}

    def started(key: str) -> None:
        tags = {
            tr.TAG + "role": tr.ROLE_TEACHER, tr.TAG + "teacher_key": key, tr.TAG + "teacher": cell.teacher_arch,
            tr.TAG + "dataset": str(cell.dataset), tr.TAG + "seed": cell.teacher.seed, tr.TAG + "suite": cell.suite,
            **tr.environment_tags(host.plugin_versions()),
        }
        state["run"] = tr.start_run(c, job.experiment_id, f"teacher/{cell.teacher_arch}/{cell.dataset}", tags, job.parent_run_id)
        recipe = cell.teacher.recipe or cell.recipe
        state["progress"] = TrainingProgress(f"teacher {cell.teacher_arch}", recipe.epochs, len(data.train) // recipe.batch_size)

    def step(i: int, loss: float) -> None:
        state["progress"].on_step(i, loss)

    def epoch(r: EpochResult) -> None:
        state["progress"].on_epoch(r)
        tr.log_metrics(c, state["run"], _epoch_metrics(r), step=r.epoch)

    try:
        teacher = get_teacher(cell, data, device, on_train_start=started, on_epoch=epoch, on_step=step)
    except BaseException as exc:
        if "run" in state:
            status = "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"
            _fail(c, state["run"], status, f"{type(exc).__name__}: {exc}".splitlines()[0], traceback.format_exc())
        raise
    finally:
        if "progress" in state:
            state["progress"].close()
    if "run" in state:
        tr.log_metrics(c, state["run"], {"top1": teacher.top1, "top5": teacher.top5, "params": count_params(teacher.model)})
        c.set_terminated(state["run"], "FINISHED")
    return teacher


def _log_model(c, run_id: str, model: torch.nn.Module, outcome: MethodResult | None = None) -> int:
    """The trained student's state_dict as the artifact ``student.pt``, or what the pipeline's
    last compressing stage saves (e.g. a pruned architecture, an exported int8 program); returns its bytes."""
    with tempfile.TemporaryDirectory() as tmp:
        if outcome is None:
            path = os.path.join(tmp, "student.pt")
            torch.save(model.state_dict(), path)
        else:
            path, _ = save_to_tmp(outcome, tmp)
        size = os.path.getsize(path)
        c.log_artifact(run_id, path)
    return size


def method_option_params(host: PluginHost, cell: CellSpec) -> dict[str, Any]:
    """``method.option.<k>`` for a method named alone; ``stage<N>.<name>.option.<k>`` for each stage of a
    pipeline, numbered as its metrics are (``pipeline.stage_plan``: an implied baseline is stage 1)."""
    named = method_stages(cell.method)
    if len(named) == 1:
        options = host.methods.get(named[0].name).resolve_options(named[0].options)
        return {f"method.option.{k}": v for k, v in options.items()}
    plan = stage_plan(host, cell.method)
    implied = len(plan) - len(named)  # the implied baseline logs no options
    return {
        f"stage{i}.{ref.name}.option.{k}": v
        for i, ref in enumerate(plan[implied:], start=1 + implied)
        for k, v in host.methods.get(ref.name).resolve_options(ref.options).items()
    }


def _fail(c, run_id: str, status: str, message: str, details: str, error_type: str = "") -> None:
    """Mark a run FAILED/KILLED with its reason as a tag and its traceback as an artifact.

    Never raises: when the tracking store itself is the problem, the reason is
    printed instead and the run is left RUNNING for the next ``kdbench run``
    to mark KILLED (see ``tracking.reap_stale_runs``).
    """
    try:
        try:
            tags = {tr.TAG + "error": message[: tr.MAX_PARAM_LEN]}
            if error_type:
                tags[tr.TAG + "error_type"] = error_type
            tr.set_tags(c, run_id, tags)
            c.log_text(run_id, details, "traceback.txt")
        finally:
            c.set_terminated(run_id, status)
    except Exception as exc:
        tr.stop_heartbeat(run_id)
        print(f"kdbench: could not record run {run_id} as {status} ({message}): {exc}", file=sys.stderr, flush=True)
