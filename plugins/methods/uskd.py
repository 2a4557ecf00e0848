"""``uskd``: universal self-knowledge distillation (Yang, Zeng, Yuan & Li, "From
Knowledge Distillation to Self-Knowledge Distillation: A Unified Approach with
Normalized Loss and Customized Soft Labels", ICCV 2023, arXiv:2303.13005).

USKD is NKD without a teacher: the student builds its own soft labels.

- Target class: with s_t the student's probability of the label (detached),
  the soft target is p_t = s_t² + 1 − mean_batch(s_t²), and
  L_target = − mean_i p_t,i · log S_i,t.
- Non-target classes: a weak classifier (an extra linear layer on the
  globally pooled features of the student's penultimate stage) trained on
  label-smoothed targets (0.9 on the label + 0.1/C everywhere) gives
  L_weak = − μ · mean_i Σ_c y^smooth_i,c · log softmax(w_i)_c. The
  non-target classes are ranked by W_c / (1 − W_t) + log S_c / (1 − log S_t)
  (W = softmax of the weak logits, log S the student's log-probabilities),
  the class at rank r (0 = first) gets the Zipf weight 1/(r + 1), and those
  weights, renormalised over the non-target classes, are the soft labels Ẑ:
  L_non = − mean_i Σ_{c≠t} Ẑ_i,c · log softmax(z_s,i without t)_c.
- L = CE(z_s, y) + α · L_target + β · L_non + L_weak.

This is the authors' ``USKDLoss`` (yzd-v/cls_KD, commit 1e5d48f,
``mmcls/models/dis_losses/uskd.py``) on the penultimate stage pooled by the
model's neck (``mmcls/models/classifiers/distiller.py``: ``neck(fea_s[-2])``),
followed where it differs from the paper's prose: the rank adds the student's
*log*-probabilities (the code reuses the log-softmax there). Hard labels only.

Defaults are the authors' CIFAR-100 config,
``configs/distillers/cifar100/res18_sd_cifar.py``: α = 0.1, β = 0.1, μ = 0.1.
ImageNet (``configs/distillers/imagenet/res18_sd_img.py``): α = 1, β = 0.1,
μ = 0.005. The weak classifier is an extra module (trained, never deployed).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import kdbench

from ._common import num_stages
from .nkd import drop_target

RANK_EPS = 1e-6  # the code's guard in the rank denominators


def pool(features: torch.Tensor) -> torch.Tensor:
    """Global average pooling of a (B, C, H, W) map (a (B, C) tensor passes through)."""
    return features.mean(dim=(-2, -1)) if features.dim() == 4 else features


def zipf_labels(rank_scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Zipf soft labels over the non-target classes: 1/(rank + 1) by descending score, renormalised."""
    n, c = rank_scores.shape
    order = rank_scores.argsort(dim=1, descending=True)          # class at each rank
    position = order.argsort(dim=1)                              # rank of each class
    weights = 1.0 / (position.to(rank_scores.dtype) + 1.0)
    weights = drop_target(weights, targets)
    return weights / weights.sum(dim=1, keepdim=True)


class USKD(kdbench.Distiller):
    needs_teacher = False
    student_stages = (-2,)

    def __init__(self, alpha: float = 0.1, beta: float = 0.1, mu: float = 0.1, ce_weight: float = 1.0):
        super().__init__()
        self.alpha, self.beta, self.mu, self.ce_weight = float(alpha), float(beta), float(mu), float(ce_weight)

    def check_pair(self, student, teacher):
        if num_stages(student, "uskd") < 2:
            raise kdbench.NotApplicableError(
                "uskd's weak classifier reads the student's penultimate stage, but the student has fewer than two feature taps"
            )

    def setup(self, info: kdbench.PairInfo):
        (shape,) = info.student_shapes
        if info.num_classes < 2:
            raise kdbench.NotApplicableError("uskd needs at least two classes (its non-target soft labels)")
        self.weak_head = nn.Linear(int(shape[1]), info.num_classes)

    def loss_terms(self, batch: kdbench.Batch):
        z_s, y = batch.student.logits.float(), batch.targets
        idx = y.view(-1, 1)
        log_s = F.log_softmax(z_s, dim=1)
        log_s_t = log_s.gather(1, idx)
        s_t = log_s_t.exp().detach()
        soft_target = (s_t ** 2 + 1 - (s_t ** 2).mean(dim=0, keepdim=True)).detach()
        target = -(soft_target * log_s_t).sum(dim=1).mean()

        w = self.weak_head(pool(batch.student.features[0]).float())
        c = z_s.shape[1]
        smooth = torch.zeros_like(w).scatter_(1, idx, 0.9) + 0.1 / c
        weak = -(self.mu * smooth * F.log_softmax(w, dim=1)).sum(dim=1).mean()

        with torch.no_grad():
            w_p = F.softmax(w, dim=1)
            scores = w_p / (1 - w_p.gather(1, idx) + RANK_EPS) + log_s / (1 - log_s_t + RANK_EPS)
            z_hat = zipf_labels(scores, y)
        non = -(z_hat * F.log_softmax(drop_target(z_s, y), dim=1)).sum(dim=1).mean()
        return {
            "ce": self.ce_weight * F.cross_entropy(batch.student.logits, y),
            "uskd_target": self.alpha * target,
            "uskd_non_target": self.beta * non,
            "uskd_weak": weak,
        }


@kdbench.hookimpl
def register_methods(register):
    register(kdbench.Method(
        "uskd", USKD, summary="teacher-free NKD: the student's own squared target probability and Zipf non-target "
                              "soft labels ranked with a weak classifier on its penultimate stage",
        paper="Yang et al. ICCV 2023, arXiv:2303.13005", family="logits", taps=True,
    ))
