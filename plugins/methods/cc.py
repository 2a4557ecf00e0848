"""``cc``: correlation congruence (Peng, Jin, Liu, Li, Wu, Liu, Zhou & Zhang 2019,
"Correlation Congruence for Knowledge Distillation", ICCV 2019, arXiv:1904.01802).

Beyond matching each sample's embedding (instance congruence), CC matches the
correlations between samples. Both pooled penultimate features go through a
trainable linear embedding to 128 dimensions, e_S and e_T; with
δ_i = |e_S(x_i) - e_T(x_i)| (element-wise), the loss correlates the
discrepancies of neighbouring samples in the batch:

    L_CC = (1 / (N-1)) Σ_{i=1}^{N-1} Σ_d δ_{i,d} · δ_{i+1,d}
    L    = ce_weight · CE + beta · L_CC

This is the authors' code as they shared it with RepDistiller (its
``distiller_zoo/CC.py``: "The authors nicely shared the code with me"), which
kdbench follows over the paper's text: the paper writes the correlation as a
kernel matrix over the batch (a Taylor-expanded Gaussian RBF) compared
between the two networks. The two embeddings are extra modules (trained,
never deployed); the CRD benchmark's CC numbers come from this code.

Source of the defaults: RepDistiller (HobbitLong/RepDistiller)
``train_student.py`` (``LinearEmbed`` on ``feat[-1]``, the pooled features,
``--feat_dim 128``), ``helper/loops.py`` and ``scripts/run_cifar_distill.sh``
(``--distill correlation -a 0 -b 0.02``): beta=0.02, CE weight 1, no KL.
Any pair with pooled features applies (CNN or ViT).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import kdbench


def correlation_congruence(e_s: torch.Tensor, e_t: torch.Tensor) -> torch.Tensor:
    delta = (e_s - e_t).abs()
    return (delta[:-1] * delta[1:]).sum(1).mean()


class CC(kdbench.Distiller):
    needs_pre_logits = True

    def __init__(self, beta: float = 0.02, ce_weight: float = 1.0, feat_dim: int = 128):
        super().__init__()
        if beta < 0 or feat_dim < 1:
            raise kdbench.ConfigError("cc: beta must be >= 0 and feat_dim >= 1")
        self.beta, self.ce_weight, self.feat_dim = float(beta), float(ce_weight), int(feat_dim)

    def setup(self, info: kdbench.PairInfo) -> None:
        self.embed_s = nn.Linear(info.student_dim, self.feat_dim)
        self.embed_t = nn.Linear(info.teacher_dim, self.feat_dim)

    def loss_terms(self, batch: kdbench.Batch):
        if batch.student.pre_logits.shape[0] < 2:
            raise kdbench.ConfigError("cc correlates neighbouring samples: it needs batches of at least 2")
        e_s = self.embed_s(batch.student.pre_logits.flatten(1))
        e_t = self.embed_t(batch.teacher.pre_logits.float().flatten(1))
        return {"ce": self.ce_weight * F.cross_entropy(batch.student.logits, batch.targets),
                "cc": self.beta * correlation_congruence(e_s, e_t)}


@kdbench.hookimpl
def register_methods(register):
    register(kdbench.Method(
        "cc", CC, family="relations",
        summary="correlation congruence: correlate neighbouring samples' embedding discrepancies (authors' code)",
        paper="Peng et al. 2019, ICCV, arXiv:1904.01802",
    ))
