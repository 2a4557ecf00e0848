"""Small helpers shared by the feature-based distillers (not a plugin: no hooks here).

Stage indices are positions in timm's ``feature_info`` / ``forward_intermediates``.
kdbench reads index 0 as the stem and the rest as the network's stages, the
layout of timm's ResNets and of the CIFAR networks in ``cifar_models`` — where
RepDistiller's ``feat[1:-1]`` ("every stage after the stem") is indices
``1..n-1`` and its ``feat[-2]`` (the last stage map) is index ``-1``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import kdbench


def num_stages(model: nn.Module, method: str) -> int:
    """How many feature taps ``model`` offers; NotApplicableError if it has no timm feature API."""
    info = getattr(model, "feature_info", None)
    if info is None or not hasattr(model, "forward_intermediates"):
        raise kdbench.NotApplicableError(
            f"{method} taps intermediate features, but {type(model).__name__} has no timm "
            "feature_info/forward_intermediates"
        )
    return len(info)


def _reductions(model: nn.Module) -> list[int]:
    info = getattr(model, "feature_info", None) or []
    out = []
    for entry in info:
        red = entry.get("reduction") if isinstance(entry, dict) else getattr(entry, "reduction", None)
        if red is not None:
            out.append(int(red))
    return out


def is_token_model(model: nn.Module) -> bool:
    """A plain vision transformer: every tap is the same token grid (no spatial hierarchy)."""
    reds = _reductions(model)
    return hasattr(model, "patch_embed") and len(set(reds)) <= 1


def require_spatial_pair(method: str, student: nn.Module, teacher: nn.Module | None) -> None:
    """Spatial feature hints need two maps of the same kind: two CNNs (or two ViTs), not a mix."""
    if teacher is None:
        raise kdbench.NotApplicableError(f"{method} needs a teacher")
    num_stages(student, method)
    num_stages(teacher, method)
    s_tok, t_tok = is_token_model(student), is_token_model(teacher)
    if s_tok != t_tok:
        kinds = {True: "a vision transformer (a single token grid)", False: "a CNN (a spatial hierarchy)"}
        raise kdbench.NotApplicableError(
            f"{method} matches spatial feature maps stage by stage, but the student is {kinds[s_tok]} and the "
            f"teacher is {kinds[t_tok]}: there is no faithful adapter between the two (use a logit- or "
            "embedding-based method such as kd, dkd, crd, pkt or rkd)"
        )


def deepest_common_stages(student: nn.Module, teacher: nn.Module, method: str) -> tuple[list[int], list[int]]:
    """Every stage after the stem, the deepest ``min(n_s, n_t) - 1`` of each model."""
    n_s, n_t = num_stages(student, method), num_stages(teacher, method)
    k = min(n_s, n_t) - 1
    if k < 1:
        raise kdbench.NotApplicableError(f"{method} needs at least one stage after the stem in both models")
    return list(range(n_s - k, n_s)), list(range(n_t - k, n_t))


def pool_to_common_size(f_s: torch.Tensor, f_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Average-pool the larger map to the smaller one's size (RepDistiller's AT/NST rule)."""
    hs, ht = f_s.shape[-2:], f_t.shape[-2:]
    if hs[0] > ht[0]:
        f_s = F.adaptive_avg_pool2d(f_s, tuple(ht))
    elif hs[0] < ht[0]:
        f_t = F.adaptive_avg_pool2d(f_t, tuple(hs))
    return f_s, f_t


def require_stages_resolved(method: str, stages) -> None:
    if not stages:
        raise kdbench.ConfigError(
            f"{method}: feature stages are chosen from the models in check_pair(student, teacher); call it before training"
        )


def stage_channels(model: nn.Module, method: str) -> list[int]:
    """Channels of every feature tap (timm ``feature_info``), stem first."""
    num_stages(model, method)
    out = []
    for entry in model.feature_info:
        out.append(int(entry["num_chs"] if isinstance(entry, dict) else entry.num_chs))
    return out


def require_preact(method: str, student: nn.Module | None, teacher: nn.Module | None) -> None:
    """Refuse a pair whose models cannot give pre-activation taps (``Distiller.student_preact``/``teacher_preact``)."""
    from kdbench.engine.models import preact_unsupported

    for role, model in (("student", student), ("teacher", teacher)):
        if model is None:
            continue
        why = preact_unsupported(model)
        if why:
            raise kdbench.NotApplicableError(f"{method} needs the {role}'s pre-ReLU features: {why}")


def as_linear(module: nn.Module | None) -> nn.Module | None:
    """A classifier that is one ``nn.Linear``, possibly wrapped in a one-layer ``nn.Sequential`` (RepDistiller's
    MobileNetV2 ``classifier.0``), as that Linear; anything else unchanged."""
    if isinstance(module, nn.Sequential) and len(module) == 1 and isinstance(module[0], nn.Linear):
        return module[0]
    return module


def linear_classifier(model: nn.Module, method: str, role: str) -> nn.Linear:
    """The model's classifier, when it is one linear layer on globally average-pooled features (CAMs, SRD)."""
    head = as_linear(model.get_classifier() if hasattr(model, "get_classifier") else None)
    if not isinstance(head, nn.Linear):
        raise kdbench.NotApplicableError(
            f"{method} applies the {role}'s classifier to feature maps, but the {role}'s classifier is "
            f"{type(head).__name__ if head is not None else 'missing'}, not one nn.Linear")
    pool = getattr(model, "global_pool", "avg")
    pool_type = pool if isinstance(pool, str) else getattr(pool, "pool_type", "avg")
    if pool_type not in ("avg", "fast", ""):
        raise kdbench.NotApplicableError(
            f"{method} needs a classifier on average-pooled features; the {role} pools with {pool_type!r}")
    return head


def kl_div(student_logits: torch.Tensor, teacher_logits: torch.Tensor, T: float) -> torch.Tensor:
    """T² · KL(p_t || p_s) at temperature T, averaged over the batch (Hinton et al.'s KD term)."""
    log_p_s = F.log_softmax(student_logits / T, dim=1)
    log_p_t = F.log_softmax(teacher_logits.float() / T, dim=1)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * T * T
