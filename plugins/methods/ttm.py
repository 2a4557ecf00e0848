"""``ttm``: transformed teacher matching (Zheng & Yang, "Knowledge Distillation
Based on Transformed Teacher Matching", ICLR 2024, arXiv:2402.11148).

TTM drops the temperature on the student's side: the student's plain softmax
matches the teacher's probabilities under a power transform, which the paper
shows equals temperature scaling with T = 1/γ on the teacher only:

    p̃_T = p_T^γ / Σ_c p_T,c^γ,     p_T = softmax(z_t)
    L   = ce_weight · CE(z_s, y) + beta · mean_i KL(p̃_T,i || softmax(z_s,i))

(KL summed over classes; no T² factor). This is the authors' ``TTM`` class
(zkxufo/TTM, commit fe457b3, ``distiller_zoo/ttm.py``; loss
``opt.gamma·CE + opt.beta·TTM`` in ``helper/loops.py``, ``-r`` the CE weight,
``--ttm_l`` the exponent γ).

Defaults are the authors' published CIFAR-100 command (README, "Running"):
``--distill ttm --ttm_l 0.1 -r 1 -b 45`` (VGG-13 → VGG-8), with the
RepDistiller recipe of ``train_student.py`` (SGD lr 0.05, batch 64, 240
epochs, ×0.1 at 150/180/210; MobileNet/ShuffleNet students at lr 0.01). The
per-pair γ and β of the paper's appendix A.4 are not transcribed here; the
script reports the best epoch.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

import kdbench


def transformed_teacher(z_t: torch.Tensor, gamma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(p_T^γ normalised, the normaliser Σ_c p_T,c^γ per sample)."""
    powered = F.softmax(z_t, dim=1) ** gamma
    norm = powered.sum(dim=1)
    return powered / norm.unsqueeze(1), norm


def matching_kl(z_s: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """KL(target || softmax(z_s)) per sample (summed over classes)."""
    return F.kl_div(F.log_softmax(z_s, dim=1), target, reduction="none").sum(dim=1)


class TTM(kdbench.Distiller):
    def __init__(self, gamma: float = 0.1, beta: float = 45.0, ce_weight: float = 1.0):
        super().__init__()
        if gamma <= 0:
            raise kdbench.ConfigError(f"{self.term_name}: gamma (the power-transform exponent) must be positive, got {gamma}")
        self.gamma, self.beta, self.ce_weight = float(gamma), float(beta), float(ce_weight)

    term_name = "ttm"

    def check_pair(self, student, teacher):
        if teacher is None:
            raise kdbench.NotApplicableError(f"{self.term_name} matches the teacher's transformed probabilities: the pair needs a teacher")

    def per_sample(self, z_s: torch.Tensor, z_t: torch.Tensor) -> torch.Tensor:
        target, _ = transformed_teacher(z_t, self.gamma)
        return matching_kl(z_s, target)

    def loss_terms(self, batch: kdbench.Batch):
        z_s, z_t = batch.student.logits, batch.teacher.logits.float()
        return {
            "ce": self.ce_weight * F.cross_entropy(z_s, batch.targets),
            self.term_name: self.beta * self.per_sample(z_s.float(), z_t).mean(),
        }


@kdbench.hookimpl
def register_methods(register):
    register(kdbench.Method(
        "ttm", TTM, summary="transformed teacher matching: student softmax (no temperature) vs the teacher's "
                            "power-transformed probabilities p^γ",
        paper="Zheng & Yang ICLR 2024, arXiv:2402.11148", family="logits",
    ))
