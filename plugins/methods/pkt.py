"""``pkt``: probabilistic knowledge transfer (Passalis & Tefas 2018, "Learning Deep
Representations with Probabilistic Knowledge Transfer", ECCV 2018,
arXiv:1803.10837).

PKT matches the *distribution of pairwise similarities* within a batch rather
than the features themselves, so student and teacher widths may differ. With
cosine similarity as the kernel, mapped to [0, 1]:

    K_ij = (1 + cos(f_i, f_j)) / 2,    P_ij = K_ij / Σ_j K_ij   (per row, teacher: Q)
    L    = ce_weight · CE + beta · mean_ij( Q_ij · log((Q_ij + ε) / (P_ij + ε)) )

(the mean over all B² entries, ε = 1e-7; the diagonal is included), on the
penultimate features (the pooled features the classifier sees).

Defaults follow the CRD benchmark recipe (RepDistiller ``--distill pkt -a 0 -b
30000``, its loss taken from the authors' code): beta=30000, CE weight 1,
no KL.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

import kdbench

EPS = 1e-7


def pkt_loss(f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
    def conditional(f: torch.Tensor) -> torch.Tensor:
        f = f.flatten(1)
        f = f / (f.norm(dim=1, keepdim=True) + EPS)
        k = (f @ f.t() + 1.0) / 2.0
        return k / k.sum(dim=1, keepdim=True)

    p_s, p_t = conditional(f_s), conditional(f_t)
    return (p_t * torch.log((p_t + EPS) / (p_s + EPS))).mean()


class PKT(kdbench.Distiller):
    needs_pre_logits = True

    def __init__(self, beta: float = 30000.0, ce_weight: float = 1.0):
        super().__init__()
        self.beta, self.ce_weight = float(beta), float(ce_weight)

    def loss_terms(self, batch: kdbench.Batch):
        return {
            "ce": self.ce_weight * F.cross_entropy(batch.student.logits, batch.targets),
            "pkt": self.beta * pkt_loss(batch.student.pre_logits.float(), batch.teacher.pre_logits.float()),
        }


@kdbench.hookimpl
def register_methods(register):
    register(kdbench.Method(
        "pkt", PKT, family="relations", summary="probabilistic knowledge transfer: match in-batch cosine-similarity distributions",
        paper="Passalis & Tefas 2018, arXiv:1803.10837",
    ))
