"""``sp``: similarity-preserving knowledge distillation (Tung & Mori 2019,
"Similarity-Preserving Knowledge Distillation", ICCV 2019, arXiv:1907.09682).

Inputs that the teacher finds similar should be similar to the student too.
From a stage's activations A (batch B, flattened) the batch Gram matrix is
row-normalised, G = row_l2_normalise(A Aᵀ), and the loss (paper Eq. 4) is

    L = ce_weight · CE + gamma · (1 / B²) · || G_T - G_S ||_F²

Widths and spatial sizes may differ between student and teacher: only the
B×B matrices are compared.

Defaults follow the CRD benchmark recipe (RepDistiller ``--distill
similarity -a 0 -b 3000``, an implementation its README says SP's first
author verified): gamma=3000, CE weight 1, no KL, on the last stage's map
(RepDistiller's ``feat[-2]``: timm stage -1, before pooling).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

import kdbench

from ._common import num_stages


def sp_loss(f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
    b = f_s.shape[0]
    a_s, a_t = f_s.reshape(b, -1), f_t.reshape(b, -1)
    g_s = F.normalize(a_s @ a_s.t(), dim=1)
    g_t = F.normalize(a_t @ a_t.t(), dim=1)
    return (g_t - g_s).pow(2).sum() / (b * b)


class SP(kdbench.Distiller):
    student_stages = (-1,)
    teacher_stages = (-1,)

    def __init__(self, gamma: float = 3000.0, ce_weight: float = 1.0):
        super().__init__()
        self.gamma, self.ce_weight = float(gamma), float(ce_weight)

    def check_pair(self, student, teacher):
        num_stages(student, "sp")
        if teacher is not None:
            num_stages(teacher, "sp")

    def loss_terms(self, batch: kdbench.Batch):
        (f_s,), (f_t,) = batch.student.features, batch.teacher.features
        return {
            "ce": self.ce_weight * F.cross_entropy(batch.student.logits, batch.targets),
            "sp": self.gamma * sp_loss(f_s.float(), f_t.float()),
        }


@kdbench.hookimpl
def register_methods(register):
    register(kdbench.Method(
        "sp", SP, family="relations", taps=True, summary="similarity-preserving KD: match row-normalised batch Gram matrices of the last stage",
        paper="Tung & Mori 2019, arXiv:1907.09682",
    ))
