"""``nst``: neuron selectivity transfer (Huang & Wang 2017, "Like What You Like:
Knowledge Distill via Neuron Selectivity Transfer", arXiv:1707.01219).

Each channel's spatial activation pattern is a sample of the stage's
"selectivity" distribution; NST matches the student's and teacher's
distributions with the squared maximum mean discrepancy under the polynomial
kernel k(x, y) = (xᵀy)² (the paper's best, d=2, c=0). With F the (C, HW)
map of one image and every channel's pattern L2-normalised over positions:

    MMD² = mean_ij k(f_T^i, f_T^j) + mean_ij k(f_S^i, f_S^j) - 2 mean_ij k(f_S^i, f_T^j)
    L    = ce_weight · CE + beta · Σ_stages MMD²        (means also over the batch)

Channel counts may differ; maps of different sizes are average-pooled to the
smaller one.

Defaults follow the CRD benchmark recipe (RepDistiller ``--distill nst -a 0
-b 50``): beta=50, CE weight 1, no KL, every stage after the stem
(``feat[1:-1]``; the deepest min(n_s, n_t) - 1 when counts differ). A CNN/ViT
mix is refused before training.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

import kdbench

from ._common import deepest_common_stages, pool_to_common_size, require_spatial_pair, require_stages_resolved


def poly_kernel_mean(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """mean over batch and channel pairs of (a_i · b_j)²; a: (B, Ca, P), b: (B, Cb, P)."""
    return torch.bmm(a, b.transpose(1, 2)).pow(2).mean()


def nst_loss(f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
    f_s, f_t = pool_to_common_size(f_s, f_t)
    s = F.normalize(f_s.flatten(2), dim=2)
    t = F.normalize(f_t.flatten(2), dim=2)
    return poly_kernel_mean(t, t).detach() + poly_kernel_mean(s, s) - 2 * poly_kernel_mean(s, t)


class NST(kdbench.Distiller):
    def __init__(self, beta: float = 50.0, ce_weight: float = 1.0):
        super().__init__()
        self.beta, self.ce_weight = float(beta), float(ce_weight)
        self.student_stages, self.teacher_stages = (), ()

    def check_pair(self, student, teacher):
        require_spatial_pair("nst", student, teacher)
        self.student_stages, self.teacher_stages = deepest_common_stages(student, teacher, "nst")

    def setup(self, info: kdbench.PairInfo) -> None:
        require_stages_resolved("nst", self.student_stages)

    def loss_terms(self, batch: kdbench.Batch):
        loss = sum(nst_loss(f_s, f_t.float()) for f_s, f_t in zip(batch.student.features, batch.teacher.features))
        return {"ce": self.ce_weight * F.cross_entropy(batch.student.logits, batch.targets), "nst": self.beta * loss}


@kdbench.hookimpl
def register_methods(register):
    register(kdbench.Method(
        "nst", NST, family="features", taps=True, summary="neuron selectivity transfer: polynomial-kernel MMD between channel activation patterns",
        paper="Huang & Wang 2017, arXiv:1707.01219",
    ))
