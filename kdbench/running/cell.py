"""Running one cell: train, evaluate, measure, and log it all to its MLflow run.

``run_cell`` never raises for a failing cell: the run is marked FAILED with its
traceback as an artifact and the result says so, so the suite goes on.
Ctrl-C marks the run KILLED and stops the suite.
"""
from __future__ import annotations

import sys
import time
import traceback
from typing import Any

import torch

from kdbench.core.api import CellResult, DataBundle, Job
from kdbench.core.config import REFERENCE_METHOD, CellSpec, canonical_hash, method_stages
from kdbench.engine.models import count_params
from kdbench.engine.seeding import torch_threads
from kdbench.measurement.measure import MACS_COUNTER, static_metrics
from kdbench.measurement.phase import Pending, fingerprint, keep_for_measurement
from kdbench.record import schema
from kdbench.record.claims import claim_cell
from kdbench.record.writer import Writer
from kdbench.running.code import method_code
from kdbench.running.pipeline import stage_plan, deploy_targets, reuse_from_mlflow, run_method
from kdbench.core.host import PluginHost, host_for
from kdbench.running.teachers import recorded_teacher, teacher_key


_DATA: dict[str, DataBundle] = {}


def load_data(host: PluginHost, cell: CellSpec) -> DataBundle:
    """The dataset's bundle, built once per process."""
    key = cell.dataset.model_dump_json()
    if key not in _DATA:
        _DATA[key] = host.datasets.get(cell.dataset.name).build(**cell.dataset.options)
    return _DATA[key]


def clear_data_cache() -> None:
    """Forget the bundles :func:`load_data` built in this process (tests isolate cases with it)."""
    _DATA.clear()


def recipe_hash(cell: CellSpec) -> str:
    """16 hex of the cell's recipe and teacher: rows with different recipes must not be averaged together silently."""
    teacher = dict(cell.canonical()["teacher"])
    if teacher.get("seed", 0) != 0:  # the teacher's draw is a seed like the student's, not a recipe (0: as before)
        teacher["seed"] = 0
    return canonical_hash({"recipe": cell.recipe.canonical(), "teacher": teacher})[:16]


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
        writer = Writer.connect(job.tracking_uri)
        data = load_data(host, job.cell)
        return _teacher_for(writer, job, host, data, torch.device(job.cell.device)).source
    except Exception as exc:
        return f"failed: {type(exc).__name__}: {exc}".splitlines()[0]


def runtime_inputs(targets: list, data: DataBundle, outcome: Any, seed: int) -> Any:
    """Test and calibration images for deployment-runtime targets (None when the cell has none)."""
    if not any(t.runtime is not None for t in targets):
        return None
    from kdbench.measurement.runtimes import RuntimeInputs

    quantized = outcome.deployment is not None and outcome.deployment.precision == "int8"
    # an int8 graph keeps its float model: what a runtime quantizes itself when the graph does not export
    return RuntimeInputs.from_data(data, outcome.float_model.to("cpu") if quantized else None, quantized, seed)


def run_cell(job: Job, host: PluginHost) -> CellResult:
    cell = job.cell
    writer = Writer.connect(job.tracking_uri)
    start = time.perf_counter()
    try:  # the cell's run is its claim: another live invocation holding the cell makes this one skip it
        claim = claim_cell(writer.client, job.experiment_id, job.parent_run_id, cell.spec_hash, cell.label,
                           lambda: writer.start_cell(job.experiment_id, job.parent_run_id, cell,
                                                     plugin_versions=host.plugin_versions(),
                                                     macs_counter=MACS_COUNTER, recipe_hash=recipe_hash(cell),
                                                     code=method_code(host, cell.method)))
    except Exception as exc:  # the tracking store is away: nothing can be recorded, say so
        message = f"{type(exc).__name__}: {exc}".splitlines()[0]
        return CellResult(cell, "FAILED", None, error=message, seconds=time.perf_counter() - start)
    if claim.run_id is None:
        return CellResult(cell, "SKIPPED", claim.held_by, error=claim.reason, seconds=time.perf_counter() - start)
    run_id = claim.run_id
    try:
        writer.log_cell_spec(run_id, cell, method_option_params(host, cell))
        host.call("cell_started", cell=cell, run_id=run_id)

        device = torch.device(cell.device)
        data = load_data(host, cell)
        writer.log_data(run_id, data.input_size, data.num_classes)
        teacher = _teacher_for(writer, job, host, data, device)
        writer.log_teacher(run_id, top1=teacher.top1, top5=teacher.top5, params=count_params(teacher.model),
                           source=teacher.source)

        # one distiller trains a fresh student; a pipeline (kd>prune>quant) runs its stages (kdbench.running.pipeline)
        with torch_threads(cell.recipe.threads):
            outcome = run_method(
                cell, host, data, teacher, device,
                lambda r, prefix, offset: writer.log_epoch(run_id, r, prefix, offset),
                reuse=reuse_from_mlflow(writer.client, job.experiment_id, cell),
            )
        final = dict(outcome.metrics)
        student_cpu = outcome.model.to("cpu")
        final.update(static_metrics(outcome.float_model.to("cpu"), data.input_size))
        # timed later, in the measurement phase, once per distinct deployed model (kdbench.measurement.phase)
        key = fingerprint(student_cpu, cell.student_arch, cell.student_kwargs, data.input_size, outcome.deployment,
                          run_id)
        targets = deploy_targets([host.hardware.get(h) for h in cell.hardware], outcome.deployment)
        keep_for_measurement(Pending(
            run_id, (str(cell.dataset), cell.pair), key, tuple(data.input_size), targets,
            reference=len(method_stages(cell.method)) == 1 and cell.method.name == REFERENCE_METHOD,
            inputs=runtime_inputs(targets, data, outcome, cell.seed),
        ), student_cpu)
        example = torch.stack([data.test[i][0] for i in range(min(8, len(data.test)))])
        for extra in host.call("extra_metrics", model=student_cpu, cell=cell, example=example):
            if extra:
                final.update({k: float(v) for k, v in extra.items()})
        # the student's state_dict as student.pt, or what the last compressing stage saves (a pruned
        # architecture, an exported int8 program)
        artifact_bytes = writer.log_model(run_id, outcome.save, outcome.artifact_name)
        if outcome.pipeline:  # a compressed model: its size on disk is that of what its stages saved
            final[schema.SIZE_BYTES] = artifact_bytes
        writer.finish(run_id, final, {**outcome.tags, schema.DEPLOYED_MODEL: key})
        host.call("cell_finished", cell=cell, run_id=run_id, status="FINISHED", metrics=final)
        return CellResult(cell, "FINISHED", run_id, final, seconds=time.perf_counter() - start)
    except KeyboardInterrupt:
        writer.mark_killed(run_id, "interrupted (KeyboardInterrupt)", traceback.format_exc())
        raise
    except Exception as exc:
        message = f"{type(exc).__name__}: {exc}".splitlines()[0]
        writer.fail(run_id, "FAILED", message, traceback.format_exc(), type(exc).__name__)
        try:
            host.call("cell_finished", cell=cell, run_id=run_id, status="FAILED", metrics={})
        except Exception as hook_exc:  # a plugin's hook must not turn a recorded failure into a crash
            print(f"kdbench: cell_finished hook failed: {hook_exc}", file=sys.stderr, flush=True)
        return CellResult(cell, "FAILED", run_id, error=message, seconds=time.perf_counter() - start)


def _teacher_for(writer: Writer, job: Job, host: PluginHost, data: DataBundle, device: torch.device):
    """The cell's teacher; when it must be trained, that training is a run of its own."""
    return recorded_teacher(writer, job.experiment_id, job.parent_run_id, job.cell, data, device, host.plugin_versions())


def method_option_params(host: PluginHost, cell: CellSpec) -> dict[str, Any]:
    """``method.option.<k>`` for a method named alone; ``stage<N>.<name>.option.<k>`` for each stage of a
    pipeline, numbered as its metrics are (``pipeline.stage_plan``: an implied baseline is stage 1)."""
    named = method_stages(cell.method)
    if len(named) == 1:
        options = host.methods.get(named[0].name).resolve_options(named[0].options)
        return {schema.fill(schema.METHOD_OPTION, option=k): v for k, v in options.items()}
    plan = stage_plan(host, cell.method)
    implied = len(plan) - len(named)  # the implied baseline logs no options
    return {
        schema.fill(schema.STAGE_OPTION, n=i, method=ref.name, option=k): v
        for i, ref in enumerate(plan[implied:], start=1 + implied)
        for k, v in host.methods.get(ref.name).resolve_options(ref.options).items()
    }
