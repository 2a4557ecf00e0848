"""Measurement targets: ``cpu`` (all cores), ``cpu-1t`` (one thread), ``cuda``, ``mps``."""
from __future__ import annotations

import torch

import kdbench


def _cuda_probe() -> str | None:
    return None if torch.cuda.is_available() else "no CUDA device on this machine (torch.cuda.is_available() is False)"


def _mps_probe() -> str | None:
    mps = getattr(torch.backends, "mps", None)
    return None if mps is not None and mps.is_available() else "no Apple MPS device on this machine"


@kdbench.hookimpl
def register_hardware(register):
    register(kdbench.Hardware("cpu", "cpu", threads=None, summary="CPU, all cores, fp32"))
    register(kdbench.Hardware("cpu-1t", "cpu", threads=1, summary="CPU, one thread, fp32"))
    register(kdbench.Hardware("cuda", "cuda:0", summary="first CUDA GPU, fp32", probe=_cuda_probe))
    register(kdbench.Hardware("mps", "mps", summary="Apple GPU (Metal), fp32", probe=_mps_probe))
