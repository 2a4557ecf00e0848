"""``at``: attention transfer (Zagoruyko & Komodakis 2017, "Paying More Attention to
Attention: Improving the Performance of Convolutional Neural Networks via
Attention Transfer", ICLR 2017, arXiv:1612.03928).

A stage's spatial attention map is the channel-wise mean of the activations to
the power p, flattened and L2-normalised: Q = vec(mean_c |A_c|^p) / ||·||₂.
The loss compares student and teacher maps at matching stages:

    L = CE + beta · Σ_stages mean( (Q_S - Q_T)² )

Defaults follow the CRD benchmark recipe (RepDistiller ``--distill attention
-a 0 -b 1000``, the authors' code's ``at_loss``): p=2, beta=1000, CE weight
1, no KL; the squared difference is averaged over batch and positions. The
paper writes the term as (beta/2)·Σ ||Q_S - Q_T||_p; its released code (and
RepDistiller) use the mean squared difference above.

Stages: every stage after the stem (RepDistiller's ``feat[1:-1]``), the deepest
min(n_s, n_t) - 1 of each model when the counts differ; when two maps differ
in size, the larger is average-pooled to the smaller (RepDistiller's rule).
Spatial maps of a CNN and a plain ViT are not comparable: refused before
training.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

import kdbench

from ._common import deepest_common_stages, pool_to_common_size, require_spatial_pair, require_stages_resolved


def attention_map(f: torch.Tensor, p: float) -> torch.Tensor:
    return F.normalize(f.pow(p).mean(1).flatten(1), dim=1)


class AT(kdbench.Distiller):
    def __init__(self, beta: float = 1000.0, p: float = 2.0, ce_weight: float = 1.0):
        super().__init__()
        if p <= 0:
            raise kdbench.ConfigError(f"at: p must be positive, got {p}")
        self.beta, self.p, self.ce_weight = float(beta), float(p), float(ce_weight)
        self.student_stages, self.teacher_stages = (), ()

    def check_pair(self, student, teacher):
        require_spatial_pair("at", student, teacher)
        self.student_stages, self.teacher_stages = deepest_common_stages(student, teacher, "at")

    def setup(self, info: kdbench.PairInfo) -> None:
        require_stages_resolved("at", self.student_stages)

    def loss_terms(self, batch: kdbench.Batch):
        at = 0.0
        for f_s, f_t in zip(batch.student.features, batch.teacher.features):
            f_s, f_t = pool_to_common_size(f_s, f_t.float())
            at = at + (attention_map(f_s, self.p) - attention_map(f_t, self.p)).pow(2).mean()
        return {"ce": self.ce_weight * F.cross_entropy(batch.student.logits, batch.targets), "at": self.beta * at}


@kdbench.hookimpl
def register_methods(register):
    register(kdbench.Method(
        "at", AT, family="features", taps=True, summary="attention transfer: match normalised spatial attention maps of every stage",
        paper="Zagoruyko & Komodakis 2017, arXiv:1612.03928",
    ))
