"""``wttm``: weighted transformed teacher matching (Zheng & Yang, "Knowledge
Distillation Based on Transformed Teacher Matching", ICLR 2024, arXiv:2402.11148).

WTTM is TTM (``plugins/methods/ttm.py``) with a sample-adaptive weight: each
sample's KL is weighted by the power sum of its teacher distribution, which is
larger the smoother the teacher's prediction:

    U_γ(p_T) = Σ_c p_T,c^γ,   p̃_T = p_T^γ / U_γ(p_T)
    L = ce_weight · CE(z_s, y) + beta · mean_i U_γ(p_T,i) · KL(p̃_T,i || softmax(z_s,i))

This is the authors' ``WTTM`` class (zkxufo/TTM, commit fe457b3,
``distiller_zoo/wttm.py``: ``mean(norm * KL)``).

Defaults: γ = 0.2 with weight 4 is the only WTTM setting the authors publish
outside the paper (README, "Running" 3: ``--add wttm --ttm_l 0.2 -a 4``, there
beside CRD with ``-b 0.8``), with CE weight 1 (``-r`` default) and the
RepDistiller recipe of ``train_student.py``. The paper's per-pair values
(appendix A.4) are not transcribed here; the script reports the best epoch.
"""
from __future__ import annotations

import torch

import kdbench

from .ttm import TTM, matching_kl, transformed_teacher


class WTTM(TTM):
    term_name = "wttm"

    def __init__(self, gamma: float = 0.2, beta: float = 4.0, ce_weight: float = 1.0):
        super().__init__(gamma=gamma, beta=beta, ce_weight=ce_weight)

    def per_sample(self, z_s: torch.Tensor, z_t: torch.Tensor) -> torch.Tensor:
        target, norm = transformed_teacher(z_t, self.gamma)
        return norm * matching_kl(z_s, target)


@kdbench.hookimpl
def register_methods(register):
    register(kdbench.Method(
        "wttm", WTTM, summary="weighted TTM: TTM's KL weighted per sample by Σ p_T^γ (smoother teacher, more weight)",
        paper="Zheng & Yang ICLR 2024, arXiv:2402.11148", family="logits",
    ))
