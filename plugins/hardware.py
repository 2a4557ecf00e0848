"""Measurement targets.

==============  ========  =======  =============  ================  =======
name            device    threads  precisions     memory format     mode
==============  ========  =======  =============  ================  =======
cpu             cpu       all      fp32           contiguous        eager
cpu-1t          cpu       1        fp32           contiguous        eager
cpu-bf16        cpu       all      bf16 autocast  contiguous        eager
cpu-compile     cpu       all      fp32           contiguous        compile
cuda, cuda:N    cuda:N    -        fp32,bf16,fp16 channels_last     eager
cuda-compile    cuda:0    -        fp32,bf16,fp16 channels_last     compile
mps             mps       -        fp32,fp16      contiguous        eager
==============  ========  =======  =============  ================  =======

``cuda:0`` is always registered (skipped when absent) so suites written on a
GPU machine still run elsewhere; ``cuda:N`` for N > 0 exists where that GPU does.
Quantized (int8) models are measured on CPU targets by giving them the int8
precision (``kdbench bench --precision int8``), usually with ``cpu-compile``.
"""
from __future__ import annotations

import torch

import kdbench

ALL_CUDA_PRECISIONS = ("fp32", "bf16", "fp16")


def _cuda_probe(index: int = 0):
    def probe() -> str | None:
        if not torch.cuda.is_available():
            return "no CUDA device on this machine (torch.cuda.is_available() is False)"
        if index >= torch.cuda.device_count():
            return f"no CUDA device {index} (this machine has {torch.cuda.device_count()})"
        return None

    return probe


def _mps_probe() -> str | None:
    mps = getattr(torch.backends, "mps", None)
    return None if mps is not None and mps.is_available() else "no Apple MPS device on this machine"


def _cuda_count() -> int:
    try:
        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:
        return 0


@kdbench.hookimpl
def register_hardware(register):
    H = kdbench.Hardware
    register(H("cpu", "cpu", threads=None, summary="CPU, all physical cores, fp32, eager"))
    register(H("cpu-1t", "cpu", threads=1, summary="CPU, one thread, fp32, eager"))
    register(H("cpu-bf16", "cpu", precision="bf16", summary="CPU, all cores, bf16 autocast (AMX/AVX512-BF16 if present)"))
    register(H("cpu-compile", "cpu", mode="compile",
               summary="CPU, all cores, fp32, torch.compile (inductor, freezing); compile time apart"))
    register(H("cuda", "cuda:0", precisions=ALL_CUDA_PRECISIONS, memory_format="channels_last",
               summary="first CUDA GPU: fp32 and bf16/fp16 autocast, channels_last", probe=_cuda_probe(0)))
    for i in range(max(1, _cuda_count())):
        register(H(f"cuda:{i}", f"cuda:{i}", precisions=ALL_CUDA_PRECISIONS, memory_format="channels_last",
                   summary=f"CUDA GPU {i}: fp32 and bf16/fp16 autocast, channels_last", probe=_cuda_probe(i)))
    register(H("cuda-compile", "cuda:0", precisions=ALL_CUDA_PRECISIONS, memory_format="channels_last",
               mode="compile", probe=_cuda_probe(0),
               summary="first CUDA GPU, torch.compile, fp32/bf16/fp16; compile time apart"))
    register(H("mps", "mps", precisions=("fp32", "fp16"), summary="Apple GPU (Metal), fp32 and fp16 autocast",
               probe=_mps_probe))
