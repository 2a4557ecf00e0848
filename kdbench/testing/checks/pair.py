"""``check_pair``: both models of a teacher→student pair build in timm, honour the class count and can be tapped."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from kdbench.core.api import ModelPair
from kdbench.core.errors import KdbenchError
from kdbench.core.host import PluginHost
from kdbench.testing.contract import fail
from kdbench.testing.hosts import resolve
from kdbench.testing.tiny import run_tiny_suite


@dataclass
class PairReport:
    name: str
    teacher_params: int
    student_params: int
    feature_taps: bool
    cell: Any = None


def check_pair(
    pair: str | ModelPair,
    *,
    host: PluginHost | None = None,
    num_classes: Sequence[int] = (10, 3),
    input_size: tuple[int, int, int] = (3, 32, 32),
    require_feature_taps: bool = True,
    end_to_end: bool = False,
    method: str = "kd",
    tracking_uri: str | None = None,
) -> PairReport:
    """Check a teacher→student pair; raise :class:`ContractError` if not.

    Both models must exist in timm (after the plugin registered them), build
    for every class count in ``num_classes`` with logits of that width,
    give finite outputs, and the student must train (gradients from a
    cross-entropy step). With ``require_feature_taps``, timm's feature API
    (``forward_intermediates``/``forward_head``, what feature methods tap)
    must work and give the same logits as ``forward``. ``end_to_end``: also run
    a ``method`` cell (``kd``) on the pair with :func:`run_tiny_suite`.
    """
    import timm

    from kdbench.core.registry import did_you_mean
    from kdbench.engine.models import count_params, create_model, forward_with_taps

    pair, host = resolve(host, "pair", pair)
    for role, arch in (("teacher", pair.teacher), ("student", pair.student)):
        if not timm.is_model(arch):
            hint = did_you_mean(arch, timm.list_models())
            fail(f"pair {pair.name!r}: timm has no {role} model {arch!r}" + (f" — did you mean {hint!r}?" if hint else "")
                  + " (a plugin registering it must do so when its module is imported)")
    counts: dict[str, int] = {}
    taps = True
    x = torch.randn(2, *input_size, generator=torch.Generator().manual_seed(0))
    for k in num_classes:
        for role, arch, kwargs in (("teacher", pair.teacher, pair.teacher_kwargs),
                                   ("student", pair.student, pair.student_kwargs)):
            try:
                model = create_model(arch, k, input_size, **kwargs)
            except KdbenchError:
                raise
            except Exception as exc:
                fail(f"pair {pair.name!r}: the {role} {arch!r} does not build with {k} classes: {type(exc).__name__}: {exc}")
            model.eval()
            with torch.no_grad():
                logits = model(x)
            if not isinstance(logits, torch.Tensor) or tuple(logits.shape) != (2, k):
                shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
                fail(f"pair {pair.name!r}: the {role} {arch!r} built for {k} classes gives logits {shape}, expected (2, {k})")
            if not torch.isfinite(logits).all():
                fail(f"pair {pair.name!r}: the {role} {arch!r} gives non-finite logits")
            if require_feature_taps:
                try:
                    with torch.no_grad():
                        out = forward_with_taps(model, x, [-1], pre_logits=True)
                except Exception as exc:
                    fail(f"pair {pair.name!r}: the {role} {arch!r} does not support timm's feature API "
                          f"(forward_intermediates/forward_head), which feature methods use: {type(exc).__name__}: {exc}")
                if len(out.features) != 1 or out.pre_logits is None:
                    fail(f"pair {pair.name!r}: the {role} {arch!r} returned {len(out.features)} taps for one stage asked")
                if not torch.allclose(out.logits, logits, rtol=1e-4, atol=1e-5):
                    fail(f"pair {pair.name!r}: the {role} {arch!r} gives different logits through "
                          "forward_intermediates + forward_head than through forward")
            counts[role] = count_params(model)
            if role == "student" and k == num_classes[0]:
                model.train()
                loss = torch.nn.functional.cross_entropy(model(x), torch.tensor([0, 1]) % k)
                loss.backward()
                if not any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters()):
                    fail(f"pair {pair.name!r}: the student {arch!r} gets no gradient from cross-entropy")
    report = PairReport(pair.name, counts["teacher"], counts["student"], taps)
    if end_to_end:
        result = run_tiny_suite(host, pairs=[pair.name], methods=[method], tracking_uri=tracking_uri)
        report.cell = result.result(method)
    return report


__all__ = ["PairReport", "check_pair"]
