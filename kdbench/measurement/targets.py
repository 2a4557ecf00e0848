"""Hardware targets as measured here: precisions each device can run, thread counts, what stops a target,
how a target is described and named."""
from __future__ import annotations

import os
from dataclasses import replace
from typing import Any

import torch

from kdbench.core.api import Hardware

PRECISIONS = ("fp32", "bf16", "fp16", "int8", "int4")
# what each device type can measure; int8 means "the model is already quantized"
SUPPORTED_PRECISIONS = {
    "cpu": ("fp32", "bf16", "int8"),
    "cuda": ("fp32", "bf16", "fp16", "int8", "int4"),  # int8/int4: a model a quantizer converted (quant_linear)
    "mps": ("fp32", "fp16"),
}


def metric_suffix(hardware: Hardware, precision: str | None = None) -> str:
    """``<target>.<precision>``: how the metrics of one target × precision end."""
    return f"{hardware.name}.{precision or hardware.precision}"


def default_threads() -> int:
    """Threads for a target with ``threads=None``: the physical cores this process may use."""
    from kdbench.measurement.environment import cpu_info

    info = cpu_info()
    usable = info["cpu_affinity"] or os.cpu_count() or 1
    physical = info["cpu_physical_cores"] or usable
    logical = info["cpu_logical"] or usable
    # with SMT, affinity counts hardware threads; one thread per physical core is faster
    per_core = max(1, logical // physical) if physical else 1
    return max(1, usable // per_core)


def target_threads(hardware: Hardware) -> int:
    return hardware.threads or default_threads()


def compile_problem(hardware: Hardware) -> str | None:
    """None when ``torch.compile`` can run for this target, else why not."""
    import shutil

    if not hasattr(torch, "compile"):
        return "this torch has no torch.compile"
    kind = torch.device(hardware.device).type
    if kind == "cpu" and not any(shutil.which(cc) for cc in ("g++", "c++", "clang++", "cl")):
        return "torch.compile on CPU needs a C++ compiler (g++/clang++) on PATH"
    return None


def precision_problem(hardware: Hardware, precision: str) -> str | None:
    """None when ``precision`` can be measured on ``hardware`` here, else why not."""
    if hardware.runtime is not None:
        return hardware.runtime.precision_problem(precision)
    kind = torch.device(hardware.device).type
    supported = SUPPORTED_PRECISIONS.get(kind, ("fp32",))
    if precision not in supported:
        return f"precision {precision} is not supported on {kind} (supported: {', '.join(supported)})"
    if kind == "cuda" and precision == "bf16" and torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
        return "this GPU has no bf16 support (torch.cuda.is_bf16_supported() is False)"
    return None


def describe_target(hardware: Hardware) -> str:
    threads = target_threads(hardware) if torch.device(hardware.device).type == "cpu" else hardware.threads
    if hardware.runtime is not None:
        return f"{hardware.device}, {hardware.runtime.describe(threads)}, {'/'.join(hardware.measured_precisions)}"
    parts = [hardware.device]
    if threads:
        parts.append(f"{threads} thread{'s' if threads > 1 else ''}")
    parts += [hardware.memory_format, hardware.mode, "/".join(hardware.measured_precisions)]
    return ", ".join(parts)


def variant(hw: Hardware, *, precisions: list[str] | None = None, compile_: bool = False,
            channels_last: bool = False, threads: int | None = None) -> Hardware:
    """``hw`` with overrides (``kdbench bench`` options); the name says what changed (``cpu-compile-cl``)."""
    changes: dict[str, Any] = {}
    name = hw.name
    if threads and torch.device(hw.device).type == "cpu" and threads != hw.threads:
        changes["threads"] = threads
        name = f"{name.removesuffix('-1t')}-{threads}t"
    if compile_ and hw.mode != "compile":
        changes["mode"] = "compile"
        name += "-compile"
    if channels_last and hw.memory_format != "channels_last":
        changes["memory_format"] = "channels_last"
        name += "-cl"
    if precisions:
        changes["precisions"] = tuple(precisions)
        changes["precision"] = precisions[0]
    if changes:
        changes["name"] = name
        return replace(hw, **changes)
    return hw
