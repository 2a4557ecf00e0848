"""Building timm models and running them with feature taps."""
from __future__ import annotations

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


def forward_with_taps(model: nn.Module, x: torch.Tensor, stages: Sequence[int], pre_logits: bool = False) -> Outputs:
    """Logits plus the requested intermediate features (timm's feature API).

    With ``pre_logits``, also the pooled features the classifier sees
    (``forward_head(..., pre_logits=True)``).
    """
    if not stages and not pre_logits:
        return Outputs(model(x))
    if stages:
        final, feats = model.forward_intermediates(x, indices=list(stages))
    else:
        final, feats = model.forward_features(x), []
    pooled = model.forward_head(final, pre_logits=True) if pre_logits else None
    return Outputs(model.forward_head(final), list(feats), pooled)

