"""Top-1 / top-5 evaluation."""
from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader


@dataclass
class EvalResult:
    top1: float  # percent
    top5: float  # percent (top-k with k = min(5, classes))
    loss: float
    n: int


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    memory_format: torch.memory_format = torch.contiguous_format,
) -> EvalResult:
    was_training = model.training
    model.eval()
    top1 = top5 = 0
    loss_sum, n = 0.0, 0
    for batch in loader:
        images, targets = batch[0], batch[1]
        images = images.to(device, non_blocking=True, memory_format=memory_format)
        targets = targets.to(device, non_blocking=True)
        with autocast():
            logits = model(images)
        logits = logits.float()
        loss_sum += F.cross_entropy(logits, targets, reduction="sum").item()
        k = min(5, logits.size(1))
        topk = logits.topk(k, dim=1).indices
        hits = topk == targets[:, None]
        top1 += hits[:, 0].sum().item()
        top5 += hits.any(1).sum().item()
        n += targets.size(0)
    model.train(was_training)
    return EvalResult(100.0 * top1 / n, 100.0 * top5 / n, loss_sum / n, n)
