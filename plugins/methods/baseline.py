"""``baseline``: the student trained alone with cross-entropy.

Every suite includes it: it is the reference each distiller is compared with.
"""
from __future__ import annotations

import torch.nn.functional as F

import kdbench


class Baseline(kdbench.Distiller):
    needs_teacher = False

    def __init__(self, label_smoothing: float = 0.0):
        super().__init__()
        self.label_smoothing = label_smoothing

    def loss_terms(self, batch: kdbench.Batch):
        return {"ce": F.cross_entropy(batch.student.logits, batch.targets, label_smoothing=self.label_smoothing)}


@kdbench.hookimpl
def register_methods(register):
    register(kdbench.Method("baseline", Baseline, summary="student trained alone (cross-entropy)"))
