"""Peak memory of a measurement: CUDA's allocator counters, or the growth of the process's peak RSS on CPU.

On CPU the peak is ``VmHWM`` after a reset through ``/proc/self/clear_refs``
(with freed heap returned to the OS first), a lower bound because the
allocator may reuse pages the process already held; RSS samples taken during
the measurement stand in where the reset is not allowed. MPS has no counter.
"""
from __future__ import annotations

import contextlib
import ctypes
import gc

import torch


def proc_status_kb(field_name: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def release_free_heap() -> None:
    gc.collect()
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


class MemoryProbe:
    """Peak bytes above a baseline: CUDA max allocated, or peak RSS growth on CPU."""

    def __init__(self, device: torch.device):
        self.device = device
        self.baseline = 0
        self._hwm_reset = False
        self._samples: list[int] = []

    def start(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.baseline = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        elif self.device.type == "cpu":
            release_free_heap()
            self.baseline = (proc_status_kb("VmRSS") or 0) * 1024
            self._hwm_reset = reset_peak_rss()

    def reset_peak(self) -> None:
        """Forget the peak so far (not the baseline): compilation's own memory is not the model's."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        elif self.device.type == "cpu":
            self._hwm_reset = reset_peak_rss()
            self._samples.clear()

    def sample(self) -> None:
        if self.device.type == "cpu":
            rss = proc_status_kb("VmRSS")
            if rss is not None:
                self._samples.append(rss * 1024)

    def peak_bytes(self) -> int | None:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) - self.baseline
        if self.device.type != "cpu" or not self.baseline:
            return None  # MPS has no peak counter
        peak = proc_status_kb("VmHWM") if self._hwm_reset else None
        candidates = [peak * 1024] if peak is not None else []
        candidates += self._samples
        return max(0, max(candidates) - self.baseline) if candidates else None
