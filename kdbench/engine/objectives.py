"""The plain objective: cross-entropy on the labels.

It trains teachers, the reference method (``baseline`` registers it) and a
compressor's fine-tuning when no distiller is given; it lives here once.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from kdbench.core.api import Batch, Distiller


class CrossEntropy(Distiller):
    """Cross-entropy on the labels (optionally label-smoothed); no teacher."""

    needs_teacher = False

    def __init__(self, label_smoothing: float = 0.0):
        super().__init__()
        self.label_smoothing = label_smoothing

    def loss_terms(self, batch: Batch) -> dict[str, torch.Tensor]:
        return {"ce": F.cross_entropy(batch.student.logits, batch.targets, label_smoothing=self.label_smoothing)}
