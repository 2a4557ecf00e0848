"""``rkd``: relational knowledge distillation (Park, Kim, Lu & Cho 2019, "Relational
Knowledge Distillation", CVPR 2019, arXiv:1904.05068).

RKD transfers the *structure* of the teacher's embedding: distances between
pairs and angles between triplets of the batch's embeddings.

    distance:  ψ_D(i, j) = ||e_i - e_j||₂ / μ,  μ = mean of the non-zero distances in the batch
    angle:     ψ_A(i, j, k) = <(e_i - e_j)/||·||, (e_k - e_j)/||·||>
    L = ce_weight · CE + beta · ( w_d · Huber(ψ_D^S, ψ_D^T) + w_a · Huber(ψ_A^S, ψ_A^T) )

Huber is the smooth-L1 loss (δ = 1) averaged over all pairs / triplets; the
distances are computed with a 1e-12 floor under the square root. The
embedding is the penultimate feature (the pooled features the classifier
sees); the teacher's side carries no gradient.

Defaults: w_d=25, w_a=50 (the paper's RKD-DA setting); beta=1 and CE weight 1,
no KL (the CRD benchmark recipe, RepDistiller ``--distill rkd -a 0 -b 1``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

import kdbench


def pairwise_distances(e: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    sq = e.pow(2).sum(1)
    d = (sq[:, None] + sq[None, :] - 2 * e @ e.t()).clamp(min=eps).sqrt()
    return d * (1 - torch.eye(len(e), device=e.device, dtype=e.dtype))


def angles(e: torch.Tensor) -> torch.Tensor:
    diff = F.normalize(e[None, :, :] - e[:, None, :], p=2, dim=2)  # diff[j, i] = e_i - e_j
    return torch.bmm(diff, diff.transpose(1, 2)).flatten()


def rkd_losses(f_s: torch.Tensor, f_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    s, t = f_s.flatten(1), f_t.flatten(1)
    with torch.no_grad():
        d_t = pairwise_distances(t)
        d_t = d_t / d_t[d_t > 0].mean()
        a_t = angles(t)
    d_s = pairwise_distances(s)
    d_s = d_s / d_s[d_s > 0].mean()
    return F.smooth_l1_loss(d_s, d_t), F.smooth_l1_loss(angles(s), a_t)


class RKD(kdbench.Distiller):
    needs_pre_logits = True

    def __init__(self, w_d: float = 25.0, w_a: float = 50.0, beta: float = 1.0, ce_weight: float = 1.0):
        super().__init__()
        self.w_d, self.w_a, self.beta, self.ce_weight = float(w_d), float(w_a), float(beta), float(ce_weight)

    def loss_terms(self, batch: kdbench.Batch):
        dist, angle = rkd_losses(batch.student.pre_logits.float(), batch.teacher.pre_logits.float())
        return {
            "ce": self.ce_weight * F.cross_entropy(batch.student.logits, batch.targets),
            "rkd_distance": self.beta * self.w_d * dist,
            "rkd_angle": self.beta * self.w_a * angle,
        }


@kdbench.hookimpl
def register_methods(register):
    register(kdbench.Method(
        "rkd", RKD, family="relations", summary="relational KD: match pairwise distances and triplet angles of the embeddings",
        paper="Park et al. 2019, arXiv:1904.05068",
    ))
