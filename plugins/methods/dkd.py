"""``dkd``: decoupled knowledge distillation (Zhao, Cui, Song, Qiu & Liang 2022,
"Decoupled Knowledge Distillation", CVPR 2022, arXiv:2203.08679).

DKD splits the KD loss into a target-class part and a non-target-class part
and weights them separately. With p = softmax(z / T) for student (S) and
teacher (T), t the label and b = [p_t, 1 - p_t] the binary target/rest split:

    TCKD = T² · KL(b^T || b^S)
    NCKD = T² · KL(p̂^T || p̂^S),  p̂ = softmax over the non-target classes only
    L    = ce_weight · CE + min((epoch + 1) / warmup, 1) · (alpha · TCKD + beta · NCKD)

(KL summed over classes, averaged over the batch). The DKD term is ramped in
linearly over the first ``warmup`` epochs (mdistiller: weight epoch/warmup
with 1-based epochs).

Defaults are mdistiller's (the authors' code) CIFAR-100 configuration:
alpha=1, beta=8, T=4, warmup=20, CE weight 1 — the ``res32x4_res8x4`` setting;
its per-pair configs use beta=2 for resnet56→resnet20 and resnet110→resnet32
and beta=6 for the WRN-40-2 and VGG-13 teachers (``cifar100-standard`` sets
them per pair). ImageNet (ResNet-34→18): beta=0.5, T=1, warmup=1.

``standardize=True`` applies logit standardization (Sun et al. CVPR 2024,
arXiv:2403.01427): both logit vectors are z-scored (``kd.standardize``)
before TCKD and NCKD, as the authors' ``mdistiller/distillers/DKD.py`` in
sunshangquan/logit-standardization-KD (commit f6e5aa5); the cross-entropy
keeps the raw logits. Their CIFAR-100 recipe (``tools/train.py --logit-stand
--base-temp 2 --kd-weight 9``) multiplies alpha and beta by 9 and sets T=2:
``dkd(standardize=true,T=2,alpha=9,beta=72)`` for the default beta=8 (their logs
name other base temperatures and weights per pair).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

import kdbench

from .kd import standardize as zscore

MASK = 1000.0  # subtracting this from the target logit removes the class from a softmax (as the authors' code does)


def dkd_terms(z_s: torch.Tensor, z_t: torch.Tensor, target: torch.Tensor, T: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(TCKD, NCKD), each already multiplied by T²."""
    gt = F.one_hot(target, z_s.shape[1]).bool()
    p_s, p_t = F.softmax(z_s / T, dim=1), F.softmax(z_t / T, dim=1)
    pt_s, pt_t = (p_s * gt).sum(1), (p_t * gt).sum(1)
    b_s = torch.stack([pt_s, (p_s * ~gt).sum(1)], dim=1)
    b_t = torch.stack([pt_t, (p_t * ~gt).sum(1)], dim=1)
    tckd = F.kl_div(torch.log(b_s), b_t, reduction="batchmean") * T ** 2
    log_q_s = F.log_softmax(z_s / T - MASK * gt, dim=1)
    q_t = F.softmax(z_t / T - MASK * gt, dim=1)
    nckd = F.kl_div(log_q_s, q_t, reduction="batchmean") * T ** 2
    return tckd, nckd


class DKD(kdbench.Distiller):
    def __init__(self, alpha: float = 1.0, beta: float = 8.0, T: float = 4.0, warmup: int = 20, ce_weight: float = 1.0,
                 standardize: bool = False):
        super().__init__()
        if T <= 0 or warmup < 0:
            raise kdbench.ConfigError("dkd: T must be positive and warmup >= 0")
        self.alpha, self.beta, self.T, self.warmup, self.ce_weight = float(alpha), float(beta), float(T), int(warmup), float(ce_weight)
        self.standardize = bool(standardize)

    def loss_terms(self, batch: kdbench.Batch):
        z_s, z_t = batch.student.logits.float(), batch.teacher.logits.float()
        if self.standardize:
            z_s, z_t = zscore(z_s), zscore(z_t)
        tckd, nckd = dkd_terms(z_s, z_t, batch.targets, self.T)
        ramp = min((batch.epoch + 1) / self.warmup, 1.0) if self.warmup > 0 else 1.0
        return {
            "ce": self.ce_weight * F.cross_entropy(batch.student.logits, batch.targets),
            "tckd": ramp * self.alpha * tckd,
            "nckd": ramp * self.beta * nckd,
        }


@kdbench.hookimpl
def register_methods(register):
    register(kdbench.Method(
        "dkd", DKD, summary="decoupled KD: target-class (TCKD) and non-target-class (NCKD) KL weighted apart",
        paper="Zhao et al. 2022, arXiv:2203.08679", family="logits",
    ))
