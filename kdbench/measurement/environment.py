"""The machine a measurement ran on: CPU model and flags, cores, GPU, library versions.

Every latency figure is logged with these so that a number can be traced to
the hardware and software that produced it. Nothing here needs the network;
each probe degrades to ``"unknown"`` (or leaves the key out) rather than fail.
"""
from __future__ import annotations

import functools
import importlib.metadata
import os
import platform
import subprocess
from typing import Any

from kdbench.record import schema

# /proc/cpuinfo flags worth knowing for inference speed, under readable names.
CPU_FLAGS = {
    "avx2": ("avx2",),
    "avx512": ("avx512f",),
    "avx512_bf16": ("avx512_bf16",),
    "avx512_fp16": ("avx512_fp16",),
    "vnni": ("avx512_vnni", "avx_vnni"),
    "amx": ("amx_tile",),
    "amx_bf16": ("amx_bf16",),
    "amx_int8": ("amx_int8",),
    "neon": ("asimd", "neon"),
}

# distribution names whose versions are recorded (missing ones say "not installed")
PACKAGES = {
    "torch": "torch",
    "timm": "timm",
    "torchao": "torchao",
    "torch_pruning": "torch-pruning",
    "torchvision": "torchvision",
    "mlflow": "mlflow",
    "kdbench": "kdbench",
}


def _read(path: str) -> str:
    try:
        with open(path) as fh:
            return fh.read()
    except OSError:
        return ""


def parse_cpuinfo(text: str) -> dict[str, Any]:
    """Model name, flag set, and physical core count from ``/proc/cpuinfo`` text."""
    model = ""
    flags: set[str] = set()
    cores: set[tuple[str, str]] = set()
    physical_id = core_id = None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key in ("model name", "Model", "cpu model") and not model:
            model = value
        elif key in ("flags", "Features"):
            flags.update(value.split())
        elif key == "physical id":
            physical_id = value
        elif key == "core id":
            core_id = value
        elif not line.strip():  # end of one processor block
            if core_id is not None:
                cores.add((physical_id or "0", core_id))
            physical_id = core_id = None
    if core_id is not None:
        cores.add((physical_id or "0", core_id))
    return {"model": model, "flags": flags, "physical_cores": len(cores) or None}


def cpu_info() -> dict[str, Any]:
    """CPU model, selected instruction-set flags, core and thread counts."""
    import torch

    parsed = parse_cpuinfo(_read("/proc/cpuinfo"))
    model = parsed["model"] or platform.processor() or platform.machine() or "unknown"
    flags = parsed["flags"]
    info: dict[str, Any] = {
        "cpu_model": model,
        "cpu_arch": platform.machine() or "unknown",
        "cpu_logical": os.cpu_count() or 0,
        "cpu_physical_cores": parsed["physical_cores"] or os.cpu_count() or 0,
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 0),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "torch_cpu_capability": _cpu_capability(),
    }
    if flags:
        for name, aliases in CPU_FLAGS.items():
            info[f"cpu_{name}"] = any(a in flags for a in aliases)
    return info


def _cpu_capability() -> str:
    """The SIMD level torch dispatches to (``AVX512``, ``AVX2``, ``DEFAULT`` …)."""
    import torch

    try:
        return str(torch.backends.cpu.get_cpu_capability())
    except Exception:
        return "unknown"


def gpu_info() -> dict[str, Any]:
    """Name, capability, memory of each CUDA device and the driver; empty without CUDA."""
    import torch

    if not torch.cuda.is_available():
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return {"gpu_count": 1, "gpu_0_name": "Apple MPS", "gpu_driver": "metal"}
        return {"gpu_count": 0}
    info: dict[str, Any] = {"gpu_count": torch.cuda.device_count(), "cuda_runtime": torch.version.cuda or "unknown"}
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        info[f"gpu_{i}_name"] = props.name
        info[f"gpu_{i}_capability"] = f"{props.major}.{props.minor}"
        info[f"gpu_{i}_memory_gb"] = round(props.total_memory / 2**30, 1)
    try:
        info["cudnn"] = str(torch.backends.cudnn.version())
    except Exception:
        pass
    info["gpu_driver"] = _nvidia_driver() or _cuda_driver_api()
    return info


def _nvidia_driver() -> str | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip().splitlines()
    except (OSError, subprocess.SubprocessError):
        return None
    return out[0].strip() if out else None


def _cuda_driver_api() -> str:
    """CUDA driver API version (e.g. ``12.4``) when nvidia-smi is not there."""
    import torch

    try:
        v = int(torch._C._cuda_getDriverVersion())
        return f"cuda-driver-api {v // 1000}.{(v % 1000) // 10}"
    except Exception:
        return "unknown"


def package_versions() -> dict[str, str]:
    out: dict[str, str] = {}
    for key, dist in PACKAGES.items():
        try:
            out[f"{key}_version"] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[f"{key}_version"] = "not installed"
    import torch  # the running torch wins over metadata (editable / local builds)

    out["torch_version"] = torch.__version__
    return out


@functools.lru_cache(maxsize=1)
def _static_environment() -> tuple[tuple[str, Any], ...]:
    info: dict[str, Any] = {
        "os": platform.platform(),
        "python_version": platform.python_version(),
    }
    info.update(gpu_info())
    info.update(package_versions())
    return tuple(info.items())


def environment() -> dict[str, Any]:
    """Everything above, as one flat dict (thread counts are read fresh each call)."""
    return {**cpu_info(), **dict(_static_environment())}


def environment_tags(env: dict[str, Any] | None = None) -> dict[str, str]:
    """The environment as MLflow tags ``kdbench.env.<key>``."""
    env = environment() if env is None else env
    return {schema.fill(schema.ENV, key=k): str(v) for k, v in env.items()}


def summary_lines(env: dict[str, Any] | None = None) -> list[str]:
    """A few human lines for the ``bench`` header."""
    env = environment() if env is None else env
    flags = [name for name in CPU_FLAGS if env.get(f"cpu_{name}")]
    lines = [
        f"CPU: {env['cpu_model']} ({env['cpu_arch']}), {env['cpu_physical_cores']} cores / "
        f"{env['cpu_logical']} threads, {env['cpu_affinity']} usable, torch dispatch {env['torch_cpu_capability']}",
        f"CPU flags: {', '.join(flags) if flags else 'none of ' + ', '.join(CPU_FLAGS)}",
    ]
    gpus = [env[k] for k in sorted(env) if k.startswith("gpu_") and k.endswith("_name")]
    if gpus:
        lines.append(f"GPU: {', '.join(gpus)}; driver {env.get('gpu_driver', 'unknown')}, "
                     f"CUDA {env.get('cuda_runtime', '-')}, cuDNN {env.get('cudnn', '-')}")
    else:
        lines.append("GPU: none")
    lines.append("versions: " + ", ".join(
        f"{k.removesuffix('_version')} {env[k]}" for k in
        ("kdbench_version", "torch_version", "timm_version", "torchao_version", "torch_pruning_version")
    ) + f", python {env['python_version']}")
    return lines
