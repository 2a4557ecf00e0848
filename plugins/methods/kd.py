"""``kd``: vanilla knowledge distillation (Hinton, Vinyals & Dean 2015,
"Distilling the Knowledge in a Neural Network", arXiv:1503.02531).

    loss = (1 - alpha) * CE(student, labels)
         + alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T))

The KL is averaged over the batch; the T^2 factor keeps the soft-target
gradients on the same scale as the hard-target ones when T changes (paper §2).

Defaults T=4, alpha=0.9 follow the CRD paper's benchmark recipe (Tian et al.
2020, RepDistiller: cross-entropy weight 0.1, KD weight 0.9, T=4).

``standardize=True`` applies logit standardization (Sun et al., "Logit
Standardization in Knowledge Distillation", CVPR 2024, arXiv:2403.01427):
each logit vector, the teacher's and the student's, is z-scored before the
softmax, ``(z - mean(z)) / (std(z) + 1e-7)`` with the unbiased standard
deviation over the classes, as the authors' ``normalize`` in
sunshangquan/logit-standardization-KD (commit f6e5aa5,
``mdistiller/distillers/KD.py``); T is then the paper's *base temperature*.
The cross-entropy keeps the raw logits. The authors' CIFAR-100 recipe for KD
with it is not alpha-mixed (base temperature 2, CE weight 0.1, KD weight 9:
``tools/train.py --logit-stand --base-temp 2 --kd-weight 9``): that is the
``lskd`` method (``plugins/methods/lskd.py``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

import kdbench

STD_EPS = 1e-7  # the authors' guard in the z-score denominator


def standardize(logits: torch.Tensor) -> torch.Tensor:
    """Z-score each row (over the classes): mean 0, unbiased standard deviation 1."""
    mean = logits.mean(dim=-1, keepdim=True)
    std = logits.std(dim=-1, keepdim=True)
    return (logits - mean) / (STD_EPS + std)


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, T: float) -> torch.Tensor:
    """T^2 * KL(p_teacher^T || p_student^T), averaged over the batch."""
    log_p_s = F.log_softmax(student_logits / T, dim=1)
    log_p_t = F.log_softmax(teacher_logits / T, dim=1)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * T * T


class KD(kdbench.Distiller):
    def __init__(self, T: float = 4.0, alpha: float = 0.9, standardize: bool = False):
        super().__init__()
        if T <= 0:
            raise kdbench.ConfigError(f"kd: T must be positive, got {T}")
        if not 0 <= alpha <= 1:
            raise kdbench.ConfigError(f"kd: alpha must be in [0, 1], got {alpha}")
        self.T, self.alpha, self.standardize = float(T), float(alpha), bool(standardize)
        self.ce_weight, self.kd_weight = 1 - self.alpha, self.alpha

    def loss_terms(self, batch: kdbench.Batch):
        z_s, z_t = batch.student.logits, batch.teacher.logits.float()
        ce = F.cross_entropy(z_s, batch.targets)
        if self.standardize:
            z_s, z_t = standardize(z_s.float()), standardize(z_t)
        kl = kd_loss(z_s, z_t, self.T)
        return {"ce": self.ce_weight * ce, "kd": self.kd_weight * kl}


@kdbench.hookimpl
def register_methods(register):
    register(kdbench.Method(
        "kd", KD, summary="vanilla KD: softened KL at temperature T (×T²) mixed with cross-entropy; "
                          "standardize=true z-scores the logits first (logit standardization)",
        paper="Hinton et al. 2015, arXiv:1503.02531", family="logits",
    ))
