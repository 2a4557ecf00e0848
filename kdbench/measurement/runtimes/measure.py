"""Measuring a model through a deployment runtime: export, agreement check, int8 model, then timing.

For one target × precision (:func:`measure_runtime`):

1. The model is exported to ONNX once (:func:`.export.export_onnx`, dynamo exporter else TorchScript); a
   model that does not export is not applicable on the target (:class:`NotApplicable`, with the exporter's
   reason).
2. ``fp32`` runs that file. ``int8`` runs the int8 graph kdbench's quant stage produced, exported as it is,
   where it exports; otherwise the runtime's own static quantization of the float model, calibrated on the
   cell's training images. What ran is said in the result's detail (``kdbench.measure.<target>.<precision>``).
3. Before anything is timed, the runtime's logits on test images are compared with the PyTorch model's
   (``export_max_abs_diff``, ``export_top1_agreement``). An fp32 file, or kdbench's own int8 graph, that
   disagrees beyond tolerance fails the target; a runtime's own int8 model is compared with the float model
   and its agreement recorded (quantization error is what it measures).
4. Timing follows the protocol of :func:`kdbench.measurement.measure.measure_latency`: a session built for
   the latency batch (its build time is ``compile_s``), ``spec.warmup`` untimed calls, per-call times with
   the same stop rules and percentiles, then a session for the throughput batch timed the same way; peak
   memory is the growth of the process's peak RSS from before the sessions were built.

Exported and quantized files are kept (per model, in a temporary folder removed with the model) for the
other rounds of the measurement phase and the other targets, so each is made once.
"""
from __future__ import annotations

import shutil
import tempfile
import time
import weakref
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from kdbench.core.api import Hardware
from kdbench.core.config import MeasureSpec
from kdbench.measurement.memory import MemoryProbe
from kdbench.measurement.runtimes.base import NotApplicable, Runtime, RuntimeInputs, is_quantized_graph
from kdbench.measurement.runtimes.export import (
    FP32_TOLERANCE, Agreement, Exported, agreement, export_onnx, reference_logits,
)
from kdbench.measurement.timing import Clock, percentile_stats, throughput_figures, timed_calls
from kdbench.record import schema
from kdbench.record.schema import on_target

INT8_EXPORT_TOLERANCE = 0.1  # kdbench's int8 graph in a runtime vs eagerly: rounding at quantization steps only
THROUGHPUT_MIN_CALLS = 3


class Disagrees(RuntimeError):
    """The runtime's logits differ from the PyTorch model's beyond tolerance: nothing was timed."""


@dataclass
class Prepared:
    """A file a runtime runs for one precision, how it was made, and how it agrees with its reference."""

    path: str
    label: str
    check: Agreement | None = None


@dataclass
class _ModelFiles:
    """What was exported and quantized for one model (kept while the model lives)."""

    workdir: str
    exported: dict[str, Exported] = field(default_factory=dict)  # "deployed" / "float"
    prepared: dict[tuple[str, str], Prepared | Exception] = field(default_factory=dict)  # (target, precision)
    quantized: dict[str, Prepared] = field(default_factory=dict)  # the runtime's own int8 model, by runtime name


_FILES: weakref.WeakKeyDictionary[nn.Module, _ModelFiles] = weakref.WeakKeyDictionary()


def _files(model: nn.Module) -> _ModelFiles:
    found = _FILES.get(model)
    if found is None:
        workdir = tempfile.mkdtemp(prefix="kdbench-onnx-")
        found = _FILES[model] = _ModelFiles(workdir)
        weakref.finalize(model, shutil.rmtree, workdir, True)
    return found


def _export(files: _ModelFiles, which: str, model: nn.Module, input_size: tuple[int, ...]) -> Exported:
    if which not in files.exported:
        model.eval()  # (an exported int8 graph's eval() returns None: not chained)
        files.exported[which] = export_onnx(model, input_size, f"{files.workdir}/{which}.onnx")
    return files.exported[which]


def _exporter_note(exported: Exported) -> str:
    if exported.exporter == "torchscript":
        return f"exported with the TorchScript exporter (the dynamo exporter failed: {exported.dynamo_error})"
    return f"exported with the {exported.exporter} exporter"


def _check(runtime: Runtime, path: str, reference_model: nn.Module, inputs: RuntimeInputs,
           input_size: tuple[int, ...], threads: int) -> tuple[Agreement, str]:
    images, what = inputs.test_images(input_size)
    reference = reference_logits(reference_model, images)
    run = runtime.session(path, threads, len(images), input_size)
    return agreement(reference, np.asarray(run(images.float().numpy()))), what


def prepare(model: nn.Module, hw: Hardware, precision: str, input_size: tuple[int, ...],
            inputs: RuntimeInputs, threads: int) -> Prepared:
    """The checked file ``hw``'s runtime runs at ``precision`` (made once per model); raises
    :class:`NotApplicable` or :class:`Disagrees`."""
    runtime: Runtime = hw.runtime
    files = _files(model)
    key = (hw.name, precision)
    if key not in files.prepared:
        try:
            files.prepared[key] = _prepare(runtime, files, model, precision, input_size, inputs, threads)
        except (NotApplicable, Disagrees) as exc:
            files.prepared[key] = exc
    found = files.prepared[key]
    if isinstance(found, Exception):
        raise found
    return found


def _prepare(runtime: Runtime, files: _ModelFiles, model: nn.Module, precision: str, input_size: tuple[int, ...],
             inputs: RuntimeInputs, threads: int) -> Prepared:
    quantized = inputs.quantized or is_quantized_graph(model)
    if quantized and precision != "int8":
        raise NotApplicable(f"the model is an int8 graph: {precision} is measured on its float model")
    own_graph = precision == "fp32" or (precision == "int8" and quantized)
    if own_graph:
        exported = _export(files, "deployed", model, input_size)
        if exported.ok:
            check, what = _check(runtime, exported.path, model, inputs, input_size, threads)
            tolerance = FP32_TOLERANCE if precision == "fp32" else INT8_EXPORT_TOLERANCE
            label = "the model as trained" if precision == "fp32" else "kdbench's int8 graph (its quant stage)"
            if not check.within(tolerance):
                raise Disagrees(f"the exported model disagrees with PyTorch ({check.text()} on {what}; tolerance "
                                f"{tolerance:g} of the largest logit)")
            return Prepared(exported.path, f"{label}, {_exporter_note(exported)}; vs PyTorch: {check.text()} "
                                            f"({what})", check)
        if precision == "fp32" or inputs.float_model is None:
            raise NotApplicable(f"the model {exported.reason}")
        fallback = f"kdbench's int8 graph {exported.reason}; instead "
    else:
        fallback = ""
    float_model = inputs.float_model if quantized and inputs.float_model is not None else model
    why = runtime.quantizer_problem()
    if why:
        raise NotApplicable(f"int8 on {runtime.name} needs its quantizer: {why}")
    if runtime.name not in files.quantized:
        exported = _export(files, "float" if float_model is not model else "deployed", float_model, input_size)
        if not exported.ok:
            raise NotApplicable(f"the {'float ' if float_model is not model else ''}model {exported.reason}")
        batches, label = inputs.calibration_batches(input_size)
        own = runtime.quantize(exported.path, batches, label, files.workdir)
        files.quantized[runtime.name] = Prepared(own.path, f"{own.label}, {_exporter_note(exported)}")
    made = files.quantized[runtime.name]
    check, what = _check(runtime, made.path, float_model, inputs, input_size, threads)
    return Prepared(made.path, f"{fallback}{made.label}; vs the fp32 model: {check.text()} ({what})", check)


def measure_runtime(model: nn.Module, hw: Hardware, input_size: tuple[int, int, int], spec: MeasureSpec,
                    precision: str, inputs: RuntimeInputs | None, threads: int) -> tuple[dict[str, float], str]:
    """Metrics of ``model`` through ``hw.runtime`` at ``precision`` (named ``<metric>.<target>.<precision>``)
    and the detail saying what ran; see the module docstring."""
    runtime: Runtime = hw.runtime
    suffix = f"{hw.name}.{precision}"
    began = time.perf_counter()
    prepared = prepare(model, hw, precision, input_size, inputs or RuntimeInputs(), threads)
    out: dict[str, float] = {}
    if prepared.check is not None:
        out[on_target(schema.EXPORT_MAX_ABS_DIFF, suffix)] = prepared.check.max_abs_diff
        out[on_target(schema.EXPORT_TOP1_AGREEMENT, suffix)] = prepared.check.top1_agreement
    clock = Clock(torch.device("cpu"))  # runtimes return host arrays: a call returns when its work is done
    memory = MemoryProbe(clock.device)
    rng = np.random.default_rng(0)
    memory.start()
    t0 = time.perf_counter()
    run = runtime.session(prepared.path, threads, spec.batch_size, input_size)
    out[on_target(schema.COMPILE_S, suffix)] = time.perf_counter() - t0
    x = rng.standard_normal((spec.batch_size, *input_size), dtype=np.float32)
    for _ in range(spec.warmup):
        run(x)
    memory.sample()
    times = timed_calls(lambda: run(x), clock, min_time=spec.min_run_time, min_calls=spec.min_calls,
                        max_time=spec.max_run_time)
    memory.sample()
    out.update(percentile_stats(times, "latency", suffix))
    out[on_target(schema.LATENCY_BATCH, suffix)] = spec.batch_size
    big, big_times = spec.throughput_batch_size, None
    if big and big != spec.batch_size:
        run_big = runtime.session(prepared.path, threads, big, input_size)
        xb = rng.standard_normal((big, *input_size), dtype=np.float32)
        run_big(xb)  # warm-up
        big_times = timed_calls(lambda: run_big(xb), clock, min_time=spec.throughput_min_run_time,
                                min_calls=THROUGHPUT_MIN_CALLS, max_time=spec.max_run_time)
        memory.sample()
        del run_big
    out.update(throughput_figures(big_times, big, spec.batch_size, out[on_target(schema.LATENCY_P50, suffix)], suffix))
    peak = memory.peak_bytes()
    if peak is not None:
        out[on_target(schema.PEAK_MEM_MB, suffix)] = peak / 2**20
    out[on_target(schema.THREADS, suffix)] = threads
    out[on_target(schema.MEASURE_S, suffix)] = time.perf_counter() - began
    return out, prepared.label
