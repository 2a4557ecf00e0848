"""From a suite to finished cells: resolve, override, expand, check, run, summarise."""
from __future__ import annotations

import os
import shlex
import sys
import time
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path
from typing import Any

import timm
import torch
from pydantic import ValidationError

from kdbench.record.client import tracking_uri
from kdbench.record.liveness import reap_stale_runs
from kdbench.record.reader import finished_cells
from kdbench.record import schema
from kdbench.record.writer import Writer
from kdbench.core.api import CellResult, Job
from kdbench.running.checks import check_teacher_cache
from kdbench.running.teachers import cache_dir
from kdbench.running.cell import load_data, run_job, teacher_cache_key
from kdbench.running.resume import plan_resume, say
from kdbench.core.config import REFERENCE_METHOD, CellSpec, Pipeline, Recipe, Ref, Suite, format_validation_error, load_suite_file
from kdbench.core.errors import ConfigError, DeviceUnavailableError
from kdbench.running.pipeline import check_method, reused_cell
from kdbench.core.host import PluginHost, using
from kdbench.core.options import canonical_method
from kdbench.core.registry import did_you_mean

# CLI flag for each overridable field, so errors name what the user typed.
FLAG_FOR = {
    ("methods",): "--methods", ("pairs",): "--pairs", ("datasets",): "--datasets", ("seeds",): "--seeds",
    ("hardware",): "--hardware", ("recipe", "epochs"): "--epochs", ("recipe", "batch_size"): "--batch-size",
    ("recipe", "lr"): "--lr", ("device",): "--device", ("executor",): "--executor",
    ("teacher", "seeds"): "--teacher-seeds", ("teacher", "recipe", "epochs"): "--teacher-epochs",
}


@dataclass
class Overrides:
    """What CLI options narrow or override in a suite (None: keep the suite's)."""

    methods: list[str] | None = None
    pairs: list[str] | None = None
    datasets: list[str] | None = None
    seeds: list[int] | None = None
    hardware: list[str] | None = None
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    device: str | None = None
    executor: str | None = None
    data_dir: str | None = None
    teacher_checkpoints: dict[str, str] = field(default_factory=dict)
    teacher_pretrained: bool | None = None
    teacher_seeds: list[int] | None = None
    teacher_epochs: int | None = None


def find_suite(host: PluginHost, name_or_path: str) -> Suite:
    """A registered suite by name, or a suite YAML file by path."""
    path = Path(name_or_path)
    if name_or_path.endswith((".yaml", ".yml")) or path.is_file():
        if not path.is_file():
            raise ConfigError(f"suite file {name_or_path!r} does not exist")
        return load_suite_file(path)
    return host.suites.get(name_or_path)


def apply_overrides(suite: Suite, o: Overrides) -> Suite:
    data = suite.model_dump(mode="json")
    data.pop("source", None)
    top = {"methods": o.methods, "pairs": o.pairs, "datasets": o.datasets, "seeds": o.seeds,
           "hardware": o.hardware, "device": o.device, "executor": o.executor}
    data.update({k: v for k, v in top.items() if v is not None})
    if o.pairs is not None:  # a pair named bare on the CLI keeps the suite's per-pair settings
        known = {ref.name: ref for ref in suite.pairs}
        data["pairs"] = [
            known[p].model_dump(mode="json") if isinstance(p, str) and p in known else p for p in o.pairs
        ]
    for key, value in (("batch_size", o.batch_size), ("lr", o.lr)):
        if value is not None:
            data["recipe"][key] = value
    # --epochs: the students' recipe only; teachers keep theirs unless --teacher-epochs says otherwise. A
    # teacher sharing the students' recipe (``teacher.recipe`` unset) keeps sharing it when both flags agree.
    shared = data["teacher"].get("recipe") is None and o.epochs is not None and o.teacher_epochs == o.epochs
    if data["teacher"].get("recipe") is None and not shared and (o.epochs or o.teacher_epochs) is not None:
        data["teacher"]["recipe"] = dict(data["recipe"])
    if o.epochs is not None:
        _scale_epochs(data["recipe"], o.epochs)
    if o.teacher_epochs is not None and not shared:
        _scale_epochs(data["teacher"]["recipe"], o.teacher_epochs)
    if o.teacher_seeds is not None:  # one seed: one shared teacher; as many as students: matched; else cross
        data["teacher"]["seeds"] = o.teacher_seeds
        if len(o.teacher_seeds) == 1:
            data["teacher"].update(pairing="fixed", seed=o.teacher_seeds[0])
        elif len(o.teacher_seeds) != len(data["seeds"]):
            data["teacher"]["pairing"] = "cross"
    if o.teacher_checkpoints:
        data["teacher"]["checkpoints"] = {**data["teacher"].get("checkpoints", {}), **o.teacher_checkpoints}
    if o.teacher_pretrained is not None:
        data["teacher"]["pretrained"] = o.teacher_pretrained
    try:
        new = Suite.model_validate(data)
    except ValidationError as err:
        loc = tuple(str(p) for p in err.errors()[0]["loc"])
        flag = next((f for k, f in FLAG_FOR.items() if loc[: len(k)] == k), None)
        raise ConfigError(format_validation_error(err, f"invalid {flag}" if flag else f"suite {suite.name!r}")) from None
    return new.model_copy(update={"source": suite.source})


def _scale_epochs(recipe: dict[str, Any], epochs: int) -> None:
    """Set epochs; warm-up and lr milestones keep their place in the schedule."""
    old = recipe.get("epochs") or epochs
    recipe["epochs"] = epochs
    if epochs <= 0:
        return  # validation reports it
    ratio = epochs / old
    recipe["warmup_epochs"] = recipe.get("warmup_epochs", 0) * ratio
    if recipe.get("milestones"):
        scaled = sorted({min(epochs - 1, max(1, round(m * ratio))) for m in recipe["milestones"]})
        recipe["milestones"] = [m for m in scaled if 0 < m < epochs]


def resolve_device(requested: str) -> str:
    """``auto`` → the best device present; an absent one is a clear error."""
    cuda, mps = torch.cuda.is_available(), bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    if requested == "auto":
        return "cuda" if cuda else "mps" if mps else "cpu"
    kind = requested.split(":")[0]
    valid = ["auto", "cpu"] + (["cuda"] if cuda else []) + (["mps"] if mps else [])
    if kind == "cpu" and requested == "cpu":
        return "cpu"
    if kind == "cuda" and cuda:
        index = requested.split(":")[1] if ":" in requested else "0"
        if not index.isdigit() or int(index) >= torch.cuda.device_count():
            raise DeviceUnavailableError(f"device {requested!r} does not exist: {torch.cuda.device_count()} CUDA device(s) here")
        return requested
    if kind == "mps" and mps:
        return "mps"
    if kind in ("cuda", "mps"):
        raise DeviceUnavailableError(f"device {requested!r} is not available on this machine; valid here: {', '.join(valid)}")
    raise DeviceUnavailableError(f"unknown device {requested!r}; valid here: {', '.join(valid)}")


def _pair_recipe(suite: Suite, pair_ref: Ref) -> Recipe:
    """The suite's recipe with the pair's ``recipe:`` overrides (e.g. a smaller lr for one student)."""
    overrides = pair_ref.options.get("recipe") or {}
    if not overrides:
        return suite.recipe
    if not isinstance(overrides, dict):
        raise ConfigError(f"suite {suite.name!r}, pair {pair_ref.name!r}: recipe must be a mapping of recipe fields")
    try:
        return Recipe.model_validate({**suite.recipe.model_dump(), **overrides})
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, f"suite {suite.name!r}, pair {pair_ref.name!r} recipe")) from None


def _pair_method(method: Ref | Pipeline, pair_ref: Ref) -> Ref | Pipeline:
    """``method`` with the pair's ``method_options:`` defaults; options given with the method win."""
    if isinstance(method, Pipeline):  # per stage
        return Pipeline(stages=[_pair_method(stage, pair_ref) for stage in method.stages])
    extra = (pair_ref.options.get("method_options") or {}).get(method.name) or {}
    if not extra:
        return method
    return Ref(name=method.name, options={**extra, **method.options})


def expand(suite: Suite, host: PluginHost, device: str) -> list[CellSpec]:
    """The suite's cells, baseline first: datasets × pairs × methods × (student seed, teacher seed).

    A pair entry may carry per-pair settings of the published recipe:
    ``recipe:`` (fields overriding the suite's recipe for that pair's students;
    its teacher keeps the suite's recipe) and ``method_options:``
    (``{method: {option: value}}``, defaults for that pair's cells).
    """
    methods = list(suite.methods)
    if not any(m.name == REFERENCE_METHOD for m in methods):
        methods.insert(0, Ref(name=REFERENCE_METHOD))
    methods.sort(key=lambda m: m.name != REFERENCE_METHOD)
    # (student seed, teacher seed) units: the teacher is part of the seed (``SuiteTeacher.pairing``)
    units = [(seed, t) for seed, ts in zip(suite.seeds, suite.teacher.seeds_for(suite.seeds)) for t in ts]
    cells = []
    for dataset, pair_ref, method, (seed, teacher_seed) in product(suite.datasets, suite.pairs, methods, units):
        pair = host.pairs.get(pair_ref.name)
        recipe = _pair_recipe(suite, pair_ref)
        teacher = suite.teacher.for_cell(teacher_seed)
        if recipe is not suite.recipe and teacher.recipe is None:
            teacher = teacher.model_copy(update={"recipe": suite.recipe})
        cells.append(CellSpec(
            suite=suite.name, suite_version=suite.version, pair=pair.name,
            method=canonical_method(host, _pair_method(method, pair_ref)),  # one setting, one spec hash
            teacher_arch=pair.teacher, student_arch=pair.student,
            teacher_kwargs={**pair.teacher_kwargs, **pair_ref.options.get("teacher_kwargs", {})},
            student_kwargs={**pair.student_kwargs, **pair_ref.options.get("student_kwargs", {})},
            dataset=dataset, seed=seed, recipe=recipe, teacher=teacher, device=device,
            hardware=suite.hardware, measure=suite.measure,
        ))
    return cells


def with_data_dir(suite: Suite, host: PluginHost, data_dir: str | None) -> Suite:
    """Give ``--data-dir`` as ``root`` to every dataset that reads files and has none."""
    if not data_dir:
        return suite
    datasets = []
    for ref in suite.datasets:
        ds = host.datasets.get(ref.name)
        if ds.needs_root and "root" not in ref.options:
            ref = Ref(name=ref.name, options={**ref.options, "root": data_dir})
        datasets.append(ref)
    return suite.model_copy(update={"datasets": datasets})


def preflight(suite: Suite, host: PluginHost, cells: list[CellSpec]) -> None:
    """Catch user mistakes before anything trains: every one is a one-line error."""
    host.executors.get(suite.executor)
    checked = set()
    for method in [*suite.methods, *(cell.method for cell in cells)]:  # per-pair method options too
        if str(method) not in checked:  # each method built once, however many cells run it
            checked.add(str(method))
            check_method(host, method)
    for hw in suite.hardware:
        host.hardware.get(hw)
    for ref in suite.pairs:
        pair = host.pairs.get(ref.name)
        for role, arch in (("teacher", pair.teacher), ("student", pair.student)):
            if not timm.is_model(arch):
                hint = did_you_mean(arch, timm.list_models())
                raise ConfigError(f"pair {pair.name!r}: timm has no {role} model {arch!r}" + (f" — did you mean {hint!r}?" if hint else ""))
    pair_names = {p.name for p in suite.pairs}
    for name in suite.teacher.checkpoints:
        if name not in pair_names:
            raise ConfigError(f"teacher checkpoint given for pair {name!r}, which is not in this run; pairs: {', '.join(sorted(pair_names))}")
        path = Path(suite.teacher.checkpoints[name]).expanduser()
        if not path.is_file():
            raise ConfigError(f"teacher checkpoint {str(path)!r} for pair {name!r} does not exist")
    seen = set()
    for cell in cells:
        key = cell.dataset.model_dump_json()
        if key in seen:
            continue
        seen.add(key)
        data = load_data(host, cell)
        for recipe in filter(None, (suite.recipe, suite.teacher.recipe)):
            if recipe.batch_size > len(data.train):
                raise ConfigError(
                    f"batch size {recipe.batch_size} is larger than the training set of {str(cell.dataset)!r} "
                    f"({len(data.train)} samples); use --batch-size {len(data.train)} or less"
                )
    check_teacher_cache(cells)  # an unwritable cache would fail every cell after it trained a teacher


@dataclass
class SuiteRun:
    suite: Suite
    cells: list[CellSpec]
    results: list[CellResult]
    experiment_id: str | None = None
    parent_run_id: str | None = None
    seconds: float = 0.0

    @property
    def failed(self) -> list[CellResult]:
        return [r for r in self.results if r.status == "FAILED"]


def prepare(host: PluginHost, suite_name: str, overrides: Overrides) -> tuple[Suite, list[CellSpec]]:
    suite = apply_overrides(find_suite(host, suite_name), overrides)
    suite = with_data_dir(suite, host, overrides.data_dir)
    device = resolve_device(suite.device)
    for ref in suite.datasets:
        host.datasets.get(ref.name)
    cells = expand(suite, host, device)
    preflight(suite, host, cells)
    return suite, cells


def run_suite(
    host: PluginHost, suite: Suite, cells: list[CellSpec], *, force: bool = False, command: list[str] | None = None,
    force_methods: list[str] | None = None, reuse_stale: bool = False,
) -> SuiteRun:
    """Run every cell without a FINISHED run of its spec hash (all of them with ``force``, those of
    ``force_methods``), and those whose run is stale (its methods' code changed; kept with ``reuse_stale``):
    see :mod:`kdbench.running.resume`.

    Runs of this suite left RUNNING by a process that is gone (``kill -9``, a
    lost node) are marked KILLED first (``kdbench.record.liveness.reap_stale_runs``), so their
    cells run again and nothing stays RUNNING forever.
    """
    start = time.perf_counter()
    writer = Writer.connect()
    uri = tracking_uri()
    experiment_id = writer.experiment(suite.name)
    for run_id, reason in reap_stale_runs(writer.client, experiment_id):
        print(f"kdbench: run {run_id} was left RUNNING and {reason}: marked KILLED", file=sys.stderr, flush=True)
    plan = plan_resume(host, cells, {} if force else finished_cells(writer.client, experiment_id),
                       force_methods=force_methods or (), reuse_stale=reuse_stale)
    say(plan, cells)
    done, todo = plan.kept, plan.todo
    skipped = [CellResult(cell, "SKIPPED", done[cell.spec_hash]) for cell in cells if cell.spec_hash in done]

    if not todo:  # everything finished before: nothing to record
        return SuiteRun(suite, cells, skipped, experiment_id, None, time.perf_counter() - start)
    executor = host.executors.get(suite.executor)
    if executor.preflight is not None:  # may refuse (one line) before anything is recorded
        executor.preflight(suite, uri, len(todo))
    parent = writer.start_invocation(experiment_id, suite, command=shlex.join(command or sys.argv),
                                     cells_total=len(cells), cells_skipped=len(skipped),
                                     plugin_versions=host.plugin_versions())
    env = worker_environment()
    todo_hashes = {cell.spec_hash for cell in todo}
    jobs = [Job(cell, experiment_id, parent, uri, host.recipe, suite.resources, teacher_cache_key(cell), env,
                after=reused if (reused := reused_cell(host, cell)) in todo_hashes else None)
            for cell in todo]
    results: list[CellResult] = []
    try:
        with using(host):  # jobs run in this process get this very host
            results = executor.run(jobs, run_job)
        measure_finished(writer, suite, results, parent, host)
    except BaseException as exc:  # Ctrl-C, SIGTERM (SystemExit under Ray), or the executor broke: nothing stays RUNNING
        status = "FAILED" if isinstance(exc, Exception) else "KILLED"
        reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        writer.abort_invocation(experiment_id, parent, status, f"invocation ended: {reason}")
        raise
    failed = [r for r in results if r.status == "FAILED"]
    # a worker that died (OOM kill, lost node) cannot close its runs: they are marked FAILED, not left RUNNING;
    # one whose cell failed because the store was away gets the error its cell ended with
    writer.end_invocation(experiment_id, parent, finished=sum(r.status == "FINISHED" for r in results),
                          failed=len(failed), errors={r.run_id: r.error for r in failed if r.run_id and r.error})
    order = {cell.spec_hash: i for i, cell in enumerate(cells)}
    all_results = sorted(results + skipped, key=lambda r: order[r.cell.spec_hash])
    return SuiteRun(suite, cells, all_results, experiment_id, parent, time.perf_counter() - start)


def pending_from_run(writer: Writer, result: CellResult, host: PluginHost) -> Any:
    """A finished cell's dense student rebuilt from its ``student.pt`` (None for a compressed model)."""
    from kdbench.measurement.models_io import load_model
    from kdbench.measurement.phase import Pending, fingerprint

    run = writer.client.get_run(result.run_id)
    if run.data.tags.get(schema.DEPLOYMENT) or int(run.data.metrics.get("stages", 1)) > 1:
        return None
    try:
        loaded = load_model(f"runs:/{result.run_id}", tracking_uri=writer.client.tracking_uri)
    except Exception:
        return None
    cell = result.cell
    key = fingerprint(loaded.model, cell.student_arch, cell.student_kwargs, loaded.input_size, None, result.run_id)
    return Pending(result.run_id, (str(cell.dataset), cell.pair), key, tuple(loaded.input_size),
                   [host.hardware.get(h) for h in cell.hardware], loaded.model,
                   reference=cell.method.name == REFERENCE_METHOD)


def measure_finished(writer: Writer, suite: Suite, results: list[CellResult], session: str,
                     hosted: PluginHost) -> None:
    """The measurement phase: after every cell trained, each distinct deployed model is measured once on
    every target, in interleaved rounds (``kdbench.measurement.phase``); each cell's run gets the figures."""
    from kdbench.measurement.environment import environment_tags
    from kdbench.measurement.phase import measure_phase, take_pending

    finished = [r.run_id for r in results if r.status == "FINISHED" and r.run_id]
    pending = take_pending(finished)
    for r in results:  # trained in another process (a worker): a dense student comes back from its artifact
        if r.run_id in set(finished) - {p.run_id for p in pending}:
            found = pending_from_run(writer, r, hosted)
            if found is None:
                writer.log_measurement(r.run_id, {}, {schema.MEASURE_NOTE: "not measured: trained in another process "
                                       f"and not a dense student; measure it with `kdbench bench runs:/{r.run_id}`"})
            else:
                pending.append(found)
    if not pending:
        return
    by_run = {r.run_id: r for r in results}
    env = {**environment_tags(), schema.MEASURE_SESSION: session}

    def log(run_id: str, metrics: dict[str, float], tags: dict[str, str]) -> None:
        writer.log_measurement(run_id, metrics, {**tags, **env})
        by_run[run_id].metrics.update(metrics)

    print(f"kdbench: measuring {len({p.key for p in pending})} distinct model(s) of {len(pending)} cell(s), "
          f"{suite.measure.rounds} interleaved round(s) per target", file=sys.stderr, flush=True)
    try:
        measure_phase(pending, suite.measure, log)
    except Exception as exc:  # the cells trained and are recorded: a measurement crash must not lose them
        print(f"kdbench: the measurement phase failed: {type(exc).__name__}: {exc}".splitlines()[0],
              file=sys.stderr, flush=True)


def worker_environment() -> dict[str, str]:
    """The ``KDBENCH_*``/``MLFLOW_*`` variables a worker elsewhere needs, the teacher cache made absolute."""
    env = {k: v for k, v in os.environ.items() if k.startswith(("KDBENCH_", "MLFLOW_"))}
    env["KDBENCH_CACHE_DIR"] = str(cache_dir().parent.resolve())  # absolute: workers start elsewhere
    return env


def describe_cells(cells: list[CellSpec], finished: dict[str, str] | None = None,
                   stale: dict[str, str] | None = None) -> list[dict[str, Any]]:
    finished, stale = finished or {}, stale or {}
    return [
        {
            "spec_hash": c.short_hash, "method": str(c.method), "pair": c.pair, "teacher": c.teacher_arch,
            "student": c.student_arch, "dataset": str(c.dataset), "seed": c.seed,
            "teacher seed": c.teacher.seed if c.teacher_source == "trained" else c.teacher_source,
            "status": "done" if c.spec_hash in finished else "stale: to run again" if c.spec_hash in stale else "to run",
        }
        for c in cells
    ]
