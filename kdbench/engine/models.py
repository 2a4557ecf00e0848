"""Building timm models and running them with feature taps."""
from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import timm
import torch
from torch import nn

from kdbench.core.api import Outputs
from kdbench.core.errors import ConfigError


def create_model(arch: str, num_classes: int, input_size: tuple[int, int, int], **kwargs: Any) -> nn.Module:
    """``timm.create_model`` with the dataset's classes, channels and image size."""
    if not timm.is_model(arch):
        from kdbench.core.registry import did_you_mean

        hint = did_you_mean(arch, timm.list_models())
        raise ConfigError(
            f"timm has no model {arch!r}" + (f" — did you mean {hint!r}?" if hint else "")
            + " (see timm.list_models())"
        )
    kwargs = {"num_classes": num_classes, "in_chans": input_size[0], **kwargs}
    try:  # ViT-style models need the image size; CNNs reject the argument
        return timm.create_model(arch, img_size=input_size[1:], **kwargs)
    except TypeError:
        return timm.create_model(arch, **kwargs)


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def forward_with_taps(
    model: nn.Module, x: torch.Tensor, stages: Sequence[int], pre_logits: bool = False, *, preact: bool = False,
    head: bool = False,
) -> Outputs:
    """Logits plus the requested intermediate features (timm's feature API).

    With ``pre_logits``, also the pooled features the classifier sees
    (``forward_head(..., pre_logits=True)``); with ``preact``, the stage taps
    are taken before the activation that ends each stage
    (:func:`preact_intermediates`); with ``head``, also the map the head pools
    with the head and the classifier (``Outputs.final_map``, ``.head``, ``.classifier``).
    """
    if not stages and not pre_logits and not head:
        return Outputs(model(x))
    if stages:
        final, feats = (preact_intermediates(model, x, list(stages)) if preact
                        else model.forward_intermediates(x, indices=list(stages)))
    else:
        final, feats = model.forward_features(x), []
    pooled = model.forward_head(final, pre_logits=True) if pre_logits else None
    if not head:
        return Outputs(model.forward_head(final), list(feats), pooled)
    return Outputs(model.forward_head(final), list(feats), pooled, final, model.forward_head, model.get_classifier())


def tap_options(distiller: Any, teacher: bool = False) -> dict[str, bool]:
    """The keyword options of :func:`forward_with_taps` that a distiller asks for, for its student or its teacher."""
    return {"pre_logits": distiller.needs_pre_logits, "head": distiller.needs_head,
            "preact": distiller.teacher_preact if teacher else distiller.student_preact}


# --------------------------------------------------------------------------- pre-activation taps

_ACTIVATIONS: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.CELU, nn.SELU, nn.SiLU, nn.GELU, nn.Mish, nn.Hardswish,
)


def _is_activation(m: nn.Module) -> bool:
    return isinstance(m, _ACTIVATIONS) or (type(m).__module__ == "timm.layers.activations"
                                           and type(m).__name__ not in ("Sigmoid", "HardSigmoid", "Tanh"))


def _accepts_preact(model: nn.Module) -> bool:
    fn = getattr(model, "forward_intermediates", None)
    try:
        return fn is not None and "preact" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def preact_unsupported(model: nn.Module) -> str | None:
    """Why ``model`` cannot give pre-activation taps, or None when it can.

    A model can when its ``forward_intermediates`` takes ``preact=True``
    (kdbench's extension of timm's feature API; the CIFAR networks of
    ``kdbench_plugins.cifar_models`` take it, as RepDistiller's and
    mdistiller's networks do), or when it is one of timm's own models, whose
    activations are modules: the host then takes the input of the activation
    module that produced each stage's output (a stage that ends without one,
    such as a linear bottleneck, is already pre-activation).
    """
    if not hasattr(model, "forward_intermediates"):
        return f"{type(model).__name__} has no timm forward_intermediates"
    if _accepts_preact(model) or type(model).__module__.startswith("timm."):
        return None
    return (f"{type(model).__name__} offers no pre-activation taps: its forward_intermediates has no `preact` "
            "option and it is not one of timm's models (whose activation modules kdbench can hook)")


def preact_intermediates(model: nn.Module, x: torch.Tensor, stages: list[int]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """``forward_intermediates`` with every tapped stage taken before the activation that ends it."""
    if _accepts_preact(model):
        return model.forward_intermediates(x, indices=stages, preact=True)
    why = preact_unsupported(model)
    if why:
        raise ConfigError(why)
    from timm.models._features import feature_take_indices

    names = [f["module"] if isinstance(f, dict) else f.module for f in model.feature_info]
    take, _ = feature_take_indices(len(names), stages)
    seen: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # stage -> (its output, that output before the activation)
    handles = []

    def watch(name: str, stage: nn.Module) -> None:
        last: dict[str, torch.Tensor] = {}

        def pre_hook(module, args):  # an in-place activation overwrites its input: keep a copy
            last["pending"] = args[0].clone() if getattr(module, "inplace", False) else args[0]

        def act_hook(module, args, out):
            last["out"], last["pre"] = out, last.pop("pending")

        def stage_hook(module, args, out):
            seen[name] = (out, last["pre"] if last.get("out") is out else out)

        for m in stage.modules():
            if _is_activation(m):
                handles.append(m.register_forward_pre_hook(pre_hook))
                handles.append(m.register_forward_hook(act_hook))
        handles.append(stage.register_forward_hook(stage_hook))

    for i in take:
        watch(names[i], model.get_submodule(names[i]))
    try:
        final, feats = model.forward_intermediates(x, indices=stages)
    finally:
        for h in handles:
            h.remove()
    out = []
    for i, f in zip(take, feats):
        post, pre = seen.get(names[i], (None, None))
        if post is not f:
            raise ConfigError(f"{type(model).__name__}: tap {i} is not the output of module {names[i]!r}, so kdbench "
                              "cannot take it before its activation")
        out.append(pre)
    return final, out
