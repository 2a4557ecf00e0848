"""Writing the record: every run kdbench creates, with the names of :mod:`kdbench.record.schema`.

One :class:`Writer` per process and store (``Writer.connect(uri)``); runs are
addressed by id, so a cell can log from any worker given its job. Every run
is created owned by this process and beats while open
(:mod:`kdbench.record.liveness`, :mod:`kdbench.record.heartbeat`).

- ``kdbench run``: :meth:`Writer.start_invocation` … :meth:`Writer.end_invocation`
  (or :meth:`Writer.abort_invocation`); per cell :meth:`Writer.start_cell`,
  :meth:`Writer.log_cell_spec`, :meth:`Writer.log_data`, :meth:`Writer.log_teacher`,
  :meth:`Writer.log_epoch`, :meth:`Writer.log_model`, then :meth:`Writer.finish`
  or :meth:`Writer.fail` (:meth:`Writer.mark_killed` on Ctrl-C); a teacher the
  harness trains is :meth:`Writer.start_teacher` … :meth:`Writer.finish_teacher`.
- ``kdbench bench --log``: :meth:`Writer.log_bench`; ``kdbench report``: :meth:`Writer.log_report`.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from kdbench.core.diskspace import explain_write_error
from kdbench.record import heartbeat, schema, unrecorded
from kdbench.record.client import RetryingClient, TrackingError, client
from kdbench.record.liveness import close_open_children, owner_tags
from kdbench.record.provenance import provenance_tags
from kdbench.record.store import MAX_PARAM_LEN, ensure_experiment, flatten, log_metrics, log_params, set_tags

FINISHED, FAILED, KILLED = "FINISHED", "FAILED", "KILLED"


def epoch_metrics(result: Any, prefix: str = "") -> dict[str, float]:
    """The metrics of one epoch (a ``kdbench.engine.loop.EpochResult``), named as the schema says."""
    m = {name: getattr(result, field) for field, name in schema.EPOCH_METRICS.items()}
    m.update({schema.fill(schema.LOSS_TERM, term=k): v for k, v in result.terms.items()})
    if getattr(result, "phase", "train") == "pretrain":  # a distiller's pre-training epoch: no evaluation
        prefix += schema.PRETRAIN
        m = {k: v for k, v in m.items() if k not in (schema.TEST_TOP1, schema.TEST_TOP5, schema.TEST_LOSS)}
    return {prefix + k: v for k, v in m.items()}


def cell_tags(cell: Any, plugin_versions: Mapping[str, str], macs_counter: str, recipe_hash: str,
              code: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The tags a cell run starts with (``cell``: a ``kdbench.core.config.CellSpec``; ``recipe_hash``: what
    tells rows trained with different recipes apart, so that they are not averaged together silently;
    ``code``: the code tags of its methods, ``kdbench.running.code.method_code``)."""
    s = schema
    return {
        s.ROLE: s.CELL, s.SPEC_HASH: cell.spec_hash, s.SUITE: cell.suite, s.SUITE_VERSION: cell.suite_version,
        s.METHOD: str(cell.method), s.METHOD_NAME: cell.method.name, s.PAIR: cell.pair,
        s.TEACHER_ARCH: cell.teacher_arch, s.STUDENT_ARCH: cell.student_arch, s.DATASET: str(cell.dataset),
        s.SEED: cell.seed, s.TEACHER_SEED: cell.teacher.seed, s.TEACHER_FROM: cell.teacher_source, s.DEVICE: cell.device, s.SCORE_EPOCH: "last", s.RECIPE_HASH: recipe_hash,
        s.MACS_COUNTER: macs_counter,
        **provenance_tags(plugin_versions), **(code or {}),
    }


def input_size_text(input_size: Iterable[int]) -> str:
    return ",".join(str(int(v)) for v in input_size)


class Writer:
    """Creates and completes kdbench's runs in one tracking store."""

    def __init__(self, c: RetryingClient):
        self.client = c

    @classmethod
    def connect(cls, tracking_uri: str | None = None) -> Writer:
        return cls(client(tracking_uri))

    @property
    def uri(self) -> str:
        return self.client.tracking_uri

    def experiment(self, suite: str) -> str:
        """The id of the suite's experiment (``kdbench/<suite>``), created when needed."""
        return ensure_experiment(self.client, schema.experiment_name(suite))

    def start_run(self, experiment_id: str, name: str, tags: Mapping[str, Any], parent_run_id: str | None = None) -> str:
        """Create a run owned by this process (owner tags, heartbeat until it is terminated)."""
        all_tags = {**owner_tags(), **{k: str(v) for k, v in tags.items()}}
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        run = self.client.create_run(experiment_id, tags=all_tags, run_name=name)
        heartbeat.start(run.info.run_id, getattr(self.client, "tracking_uri", None))
        return run.info.run_id

    # ------------------------------------------------------------------ invocations

    def start_invocation(self, experiment_id: str, suite: Any, *, command: str, cells_total: int,
                         cells_skipped: int, plugin_versions: Mapping[str, str]) -> str:
        """The run of one ``kdbench run`` (``suite``: a ``kdbench.core.config.Suite``), with the suite as params."""
        run_id = self.start_run(experiment_id, f"{suite.name} ({cells_total - cells_skipped} cells)", {
            schema.ROLE: schema.INVOCATION, schema.SUITE: suite.name, schema.SUITE_VERSION: suite.version,
            schema.COMMAND: command, schema.CELLS_TOTAL: cells_total, schema.CELLS_SKIPPED: cells_skipped,
            **provenance_tags(plugin_versions),
        })
        log_params(self.client, run_id, flatten(suite.model_dump(mode="json")))
        self.client.log_text(run_id, suite.model_dump_json(indent=2), schema.SUITE_JSON)
        return run_id

    def end_invocation(self, experiment_id: str, run_id: str, *, finished: int, failed: int,
                       errors: Mapping[str, str] | None = None) -> None:
        """Close the invocation (and any child its worker left open: an OOM kill, a lost node, or a cell that
        could not close its run while the store was away, recorded with ``errors[run_id]``, the error its cell
        ended with); never raises for an unreachable store, which is printed instead."""
        try:
            close_open_children(self.client, experiment_id, run_id, FAILED, "its worker ended without closing the run",
                                {**unrecorded.known(), **(errors or {})})
            log_metrics(self.client, run_id, {schema.CELLS_FINISHED: finished, schema.CELLS_FAILED: failed})
            self.client.set_terminated(run_id, FAILED if failed else FINISHED)
        except TrackingError as exc:
            heartbeat.stop(run_id)
            print(f"kdbench: could not record the end of run {run_id}: {exc}", file=sys.stderr, flush=True)

    def abort_invocation(self, experiment_id: str, run_id: str, status: str, reason: str) -> None:
        """Best effort on the way out (Ctrl-C, the executor broke): close the invocation and its open children."""
        try:
            close_open_children(self.client, experiment_id, run_id, status, reason)
            self.client.set_tag(run_id, schema.ERROR, reason[:MAX_PARAM_LEN])
            self.client.set_terminated(run_id, status)
        except Exception as exc:
            heartbeat.stop(run_id)
            print(f"kdbench: could not mark run {run_id} {status}: {exc}", file=sys.stderr, flush=True)

    # ------------------------------------------------------------------ cells

    def start_cell(self, experiment_id: str, parent_run_id: str | None, cell: Any, *,
                   plugin_versions: Mapping[str, str], macs_counter: str, recipe_hash: str,
                   code: Mapping[str, str] | None = None) -> str:
        """The run of one cell, a child of the invocation; see :func:`cell_tags`."""
        tags = cell_tags(cell, plugin_versions, macs_counter, recipe_hash, code)
        return self.start_run(experiment_id, cell.label, tags, parent_run_id)

    def log_cell_spec(self, run_id: str, cell: Any, method_params: Mapping[str, Any]) -> None:
        """The canonical spec as params (with the methods' resolved options) and the full spec as an artifact."""
        log_params(self.client, run_id, {**flatten(cell.canonical()), **method_params,
                                         schema.SPEC_HASH_PARAM: cell.spec_hash})
        self.client.log_text(run_id, json.dumps(cell.model_dump(mode="json"), indent=2, sort_keys=True),
                             schema.CELL_SPEC)

    def log_data(self, run_id: str, input_size: Iterable[int], num_classes: int) -> None:
        """The dataset's input size and classes: what ``kdbench bench runs:/ID`` builds the student with."""
        set_tags(self.client, run_id, {schema.INPUT_SIZE: input_size_text(input_size),
                                       schema.NUM_CLASSES: int(num_classes)})

    def log_teacher(self, run_id: str, *, top1: float, top5: float, params: int, source: str) -> None:
        """The cell's teacher, on the cell's run."""
        log_metrics(self.client, run_id, {schema.TEACHER_TOP1: top1, schema.TEACHER_TOP5: top5,
                                          schema.TEACHER_PARAMS: params})
        set_tags(self.client, run_id, {schema.TEACHER_SOURCE: source})

    def log_epoch(self, run_id: str, result: Any, prefix: str = "", step_offset: int = 0) -> None:
        """One epoch's metrics at step ``step_offset + result.epoch`` (``prefix``: a pipeline stage's)."""
        log_metrics(self.client, run_id, epoch_metrics(result, prefix), step=step_offset + result.epoch)

    def log_model(self, run_id: str, save: Callable[[str], Any], name: str = schema.STUDENT) -> int:
        """``save(path)`` writes the model as the artifact ``name``; returns its bytes."""
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, name)
            try:
                save(path)
            except Exception as exc:
                raise explain_write_error(exc, path) or exc  # a full disk says so, not torch's "unexpected pos"
            size = os.path.getsize(path)
            self.client.log_artifact(run_id, path)
        return size

    def finish(self, run_id: str, metrics: Mapping[str, float] | None = None,
               tags: Mapping[str, Any] | None = None) -> None:
        """Final metrics (step 0) and tags, then FINISHED."""
        if metrics:
            log_metrics(self.client, run_id, metrics)
        if tags:
            set_tags(self.client, run_id, tags)
        self.client.set_terminated(run_id, FINISHED)

    def fail(self, run_id: str, status: str, message: str, details: str, error_type: str = "") -> None:
        """Mark a run FAILED/KILLED with its reason as a tag and its traceback as an artifact.

        Never raises: when the tracking store itself is the problem, the reason is
        printed instead and the run is left RUNNING for the next ``kdbench run``
        to mark KILLED (:func:`kdbench.record.liveness.reap_stale_runs`).
        """
        try:
            try:
                tags = {schema.ERROR: message[:MAX_PARAM_LEN]}
                if error_type:
                    tags[schema.ERROR_TYPE] = error_type
                set_tags(self.client, run_id, tags)
                self.client.log_text(run_id, details, schema.TRACEBACK)
            finally:
                self.client.set_terminated(run_id, status)
        except Exception as exc:
            heartbeat.stop(run_id)
            unrecorded.remember(run_id, message)  # for whoever closes the run later
            print(f"kdbench: could not record run {run_id} as {status} ({message}): {exc}", file=sys.stderr, flush=True)

    def mark_killed(self, run_id: str, message: str, details: str) -> None:
        """Ctrl-C (or a signal) ended the run: KILLED, with why (never raises)."""
        self.fail(run_id, KILLED, message, details)

    # ------------------------------------------------------------------ teachers

    def start_teacher(self, experiment_id: str, parent_run_id: str | None, cell: Any, key: str,
                      plugin_versions: Mapping[str, str]) -> str:
        """The run of a teacher the harness trains for ``cell`` (cache ``key``), a child of the invocation."""
        return self.start_run(experiment_id, f"teacher/{cell.teacher_arch}/{cell.dataset}", {
            schema.ROLE: schema.TEACHER, schema.TEACHER_KEY: key, schema.TEACHER_ARCH: cell.teacher_arch,
            schema.DATASET: str(cell.dataset), schema.SEED: cell.teacher.seed, schema.SUITE: cell.suite,
            **provenance_tags(plugin_versions),
        }, parent_run_id)

    def log_measurement(self, run_id: str, metrics: Mapping[str, float], tags: Mapping[str, Any]) -> None:
        """The measurement phase's figures, on a cell run that finished training."""
        if metrics:
            log_metrics(self.client, run_id, metrics)
        if tags:
            set_tags(self.client, run_id, tags)

    def finish_teacher(self, run_id: str, *, top1: float, top5: float, params: int) -> None:
        self.finish(run_id, {schema.TOP1: top1, schema.TOP5: top5, schema.PARAMS: params})

    # ------------------------------------------------------------------ bench and report

    def log_bench(self, *, label: str, arch: str, source: str, input_size: Iterable[int], num_classes: int,
                  details: Mapping[str, Any], macs_counter: str, plugin_versions: Mapping[str, str],
                  environment: Mapping[str, str], measure_tags: Mapping[str, str], hardware: list[str],
                  measure: Mapping[str, Any], metrics: Mapping[str, float]) -> str:
        """One measured model of ``kdbench bench --log``, a run of the experiment ``kdbench/bench``."""
        exp = self.experiment(schema.BENCH_SUITE)
        tags = {
            schema.ROLE: schema.BENCH, schema.MODEL: label, schema.ARCH: arch, schema.MODEL_SOURCE: source,
            schema.MACS_COUNTER: macs_counter, schema.INPUT_SIZE: input_size_text(input_size),
            **{schema.fill(schema.MODEL_DETAIL, detail=k): v for k, v in details.items()},
            **provenance_tags(plugin_versions), **environment, **measure_tags,
        }
        run_id = self.start_run(exp, f"bench/{label}", tags)
        try:
            log_params(self.client, run_id, {
                schema.BENCH_ARCH: arch, schema.BENCH_NUM_CLASSES: num_classes,
                schema.BENCH_INPUT_SIZE: [int(v) for v in input_size], schema.BENCH_HARDWARE: hardware,
                **flatten(measure, schema.BENCH_MEASURE.removesuffix("<field>")),
            })
            log_metrics(self.client, run_id, metrics)
        except BaseException:
            self.client.set_terminated(run_id, FAILED)
            raise
        self.client.set_terminated(run_id, FINISHED)
        return run_id

    def log_report(self, experiment_id: str, suite: str, command: str, files: Iterable[Any]) -> str:
        """A ``report`` run of the suite's experiment holding the report's files under ``report/``."""
        run_id = self.start_run(experiment_id, f"report {suite}", {
            schema.ROLE: schema.REPORT, schema.SUITE: suite, schema.COMMAND: command})
        for f in files:
            self.client.log_artifact(run_id, str(f), schema.REPORT_FOLDER)
        self.client.set_terminated(run_id, FINISHED)
        return run_id
