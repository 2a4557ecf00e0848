"""``kd``: vanilla knowledge distillation (Hinton, Vinyals & Dean 2015,
"Distilling the Knowledge in a Neural Network", arXiv:1503.02531).

    loss = (1 - alpha) * CE(student, labels)
         + alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T))

The KL is averaged over the batch; the T^2 factor keeps the soft-target
gradients on the same scale as the hard-target ones when T changes (paper §2).

Defaults T=4, alpha=0.9 follow the CRD paper's benchmark recipe (Tian et al.
2020, RepDistiller: cross-entropy weight 0.1, KD weight 0.9, T=4).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

import kdbench


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, T: float) -> torch.Tensor:
    """T^2 * KL(p_teacher^T || p_student^T), averaged over the batch."""
    log_p_s = F.log_softmax(student_logits / T, dim=1)
    log_p_t = F.log_softmax(teacher_logits / T, dim=1)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * T * T


class KD(kdbench.Distiller):
    def __init__(self, T: float = 4.0, alpha: float = 0.9):
        super().__init__()
        if T <= 0:
            raise kdbench.ConfigError(f"kd: T must be positive, got {T}")
        if not 0 <= alpha <= 1:
            raise kdbench.ConfigError(f"kd: alpha must be in [0, 1], got {alpha}")
        self.T, self.alpha = float(T), float(alpha)

    def loss_terms(self, batch: kdbench.Batch):
        ce = F.cross_entropy(batch.student.logits, batch.targets)
        kl = kd_loss(batch.student.logits, batch.teacher.logits.float(), self.T)
        return {"ce": (1 - self.alpha) * ce, "kd": self.alpha * kl}


@kdbench.hookimpl
def register_methods(register):
    register(kdbench.Method(
        "kd", KD, summary="vanilla KD: softened KL at temperature T (×T²) mixed with cross-entropy",
        paper="Hinton et al. 2015, arXiv:1503.02531",
    ))
