"""``check_hardware``: a measurement target is well formed, and measures a tiny model (or says why not)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from kdbench.core.api import Hardware
from kdbench.core.config import REFERENCE_METHOD
from kdbench.core.host import PluginHost
from kdbench.testing.contract import fail
from kdbench.testing.hosts import resolve
from kdbench.testing.tiny import QUICK_MEASURE, run_tiny_suite


@dataclass
class HardwareReport:
    name: str
    available: bool
    reason: str | None
    metrics: dict[str, float] = field(default_factory=dict)  # from a tiny model measured on it
    cell: Any = None


def check_hardware(
    hardware: str | Hardware,
    *,
    host: PluginHost | None = None,
    end_to_end: bool = False,
    tracking_uri: str | None = None,
) -> HardwareReport:
    """Check a measurement target; raise :class:`ContractError` if not.

    The device string must parse, precisions be known, ``probe()`` return
    None or a reason. When available here, a tiny timm model is measured on
    it (every precision it lists) and must give positive latencies.
    ``end_to_end``: also a baseline cell measured on it, whose run must log
    its latency or say why it was skipped.
    """
    from kdbench.engine.models import create_model
    from kdbench.measurement import measure
    from kdbench.record import schema

    hardware, host = resolve(host, "hardware", hardware)
    name = hardware.name
    try:
        torch.device(hardware.device)
    except Exception as exc:
        fail(f"hardware {name!r}: device {hardware.device!r} is not a torch device: {exc}")
    unknown = [p for p in hardware.measured_precisions if p not in measure.PRECISIONS]
    if unknown:
        fail(f"hardware {name!r}: unknown precision {unknown[0]!r}; valid: {', '.join(measure.PRECISIONS)}")
    if hardware.runtime is not None:
        from kdbench.measurement.runtimes import Runtime

        if not isinstance(hardware.runtime, Runtime):
            fail(f"hardware {name!r}: runtime must be a kdbench.measurement.runtimes.Runtime, "
                 f"got {type(hardware.runtime).__name__}")
    if hardware.threads is not None and (not isinstance(hardware.threads, int) or hardware.threads < 1):
        fail(f"hardware {name!r}: threads must be None or a positive integer, got {hardware.threads!r}")
    try:
        reason = hardware.probe()
    except Exception as exc:
        fail(f"hardware {name!r}: probe() raised {type(exc).__name__}: {exc}; it must return None or a reason")
    if reason is not None and (not isinstance(reason, str) or not reason.strip()):
        fail(f"hardware {name!r}: probe() must return None (available) or a non-empty reason, got {reason!r}")
    report = HardwareReport(name, reason is None, reason)
    if reason is None:
        model = create_model("test_efficientnet", 10, (3, 32, 32))
        results = measure.measure_targets(model, [hardware], (3, 32, 32), QUICK_MEASURE)
        for r in results:
            if r.status == "failed":
                fail(f"hardware {name!r}: measuring {r.precision} failed: {r.reason}")
            report.metrics.update(r.metrics)
        for r in results:
            if r.status == "measured":
                key = f"latency_p50_ms.{measure.metric_suffix(hardware, r.precision)}"
                if not report.metrics.get(key, 0) > 0:
                    fail(f"hardware {name!r}: no positive {key} after measuring")
    if end_to_end:
        result = run_tiny_suite(host, hardware=[name], methods=[REFERENCE_METHOD], tracking_uri=tracking_uri)
        cell = result.result(REFERENCE_METHOD)
        run = result.runs[cell.run_id]
        if reason is None and not any(k.startswith("latency_p50_ms." + name + ".") for k in run.data.metrics):
            fail(f"hardware {name!r}: the cell's run has no latency_p50_ms.{name}.* metric")
        if reason is not None and not run.data.tags.get(schema.fill(schema.MEASURE_TARGET, target=name), "").startswith("skipped"):
            fail(f"hardware {name!r}: unavailable here, but the cell's run does not say it was skipped")
        report.cell = cell
    return report


__all__ = ["HardwareReport", "check_hardware"]
