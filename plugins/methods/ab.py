"""``ab``: activation boundaries (Heo, Lee, Yun & Choi 2019, "Knowledge Transfer via
Distillation of Activation Boundaries Formed by Hidden Neurons", AAAI 2019,
arXiv:1811.03233).

A ReLU neuron's activation *boundary* separates the inputs that activate it
from those that do not. AB transfers those boundaries: for every stage after
the stem, the student's pre-ReLU map through a connector r is pushed, with a
margin μ, to the side of zero the teacher's pre-ReLU response t is on (the
paper's alternative, differentiable L2 loss):

    ℓ(s, t) = Σ (r(s) + μ)² · [r(s) > -μ and t <= 0]  +  (r(s) - μ)² · [r(s) <= μ and t > 0]
    L_AB   = Σ_i 2^(i - n + 1) · ℓ_i / N · 3/1000          (stage i of n, the deepest weighted most)

AB is an initialisation: a pre-training phase minimises L_AB, training the
student's layers and the connectors (``pretrain_student``), then the student
is trained on the task alone (cross-entropy); the connectors are frozen and
unused from then on. A connector is the identity when the two maps have the
same channels and size, otherwise RepDistiller's ``ConvReg`` without its ReLU
(a convolution shaped like FitNet's regressor, then BatchNorm). They are
extra modules, never deployed.

Source of the defaults: RepDistiller (HobbitLong/RepDistiller)
``distiller_zoo/AB.py`` (the authors' loss, bhheo/AB_distillation, as
RepDistiller credits it: margin 1, stage weights 2^(i-n+1), /N, ×3/1000),
``models/util.py`` (``Connector``), ``helper/pretrain.py`` (30 init epochs on
the connectors and the student's feature modules, pre-ReLU features of both
models, the student's lr) and ``helper/loops.py`` + ``run_cifar_distill.sh``
(``--distill abound -a 0 -b 1``: afterwards CE alone). Refused: a CNN/ViT
mix, or a model without pre-activation taps.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import kdbench

from ._common import deepest_common_stages, require_preact, require_spatial_pair, require_stages_resolved
from .fitnet import ConvRegressor


class Connector(ConvRegressor):
    """FitNet's regressor geometry, conv then BatchNorm, no ReLU (the target is a pre-ReLU map)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.resize:
            x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False)
        return self.bn(x)


def ab_boundary_loss(s: torch.Tensor, t: torch.Tensor, margin: float) -> torch.Tensor:
    """The alternative L2 loss on activation boundaries, summed over every element."""
    loss = ((s + margin) ** 2 * ((s > -margin) & (t <= 0)).to(s.dtype)
            + (s - margin) ** 2 * ((s <= margin) & (t > 0)).to(s.dtype))
    return loss.sum()


class AB(kdbench.Distiller):
    student_preact = True
    teacher_preact = True
    pretrain_student = True

    def __init__(self, margin: float = 1.0, beta: float = 3e-3, pretrain_epochs: int = 30, ce_weight: float = 1.0):
        super().__init__()
        if margin < 0 or beta < 0 or pretrain_epochs < 0:
            raise kdbench.ConfigError("ab: margin, beta and pretrain_epochs must be >= 0")
        self.margin, self.beta, self.pretrain_epochs, self.ce_weight = float(margin), float(beta), int(pretrain_epochs), float(ce_weight)
        self.student_stages, self.teacher_stages = (), ()

    def check_pair(self, student, teacher):
        require_spatial_pair("ab", student, teacher)
        require_preact("ab", student, teacher)
        self.student_stages, self.teacher_stages = deepest_common_stages(student, teacher, "ab")

    def setup(self, info: kdbench.PairInfo) -> None:
        require_stages_resolved("ab", self.student_stages)
        self.connectors = nn.ModuleList(
            nn.Identity() if (s[1], *s[2:]) == (t[1], *t[2:]) else Connector(s, t)
            for s, t in zip(info.student_shapes, info.teacher_shapes))

    def pretrain_terms(self, batch: kdbench.Batch):
        n, bsz = len(batch.student.features), batch.student.features[0].shape[0]
        loss = 0.0
        for i, (f_s, f_t, conn) in enumerate(zip(batch.student.features, batch.teacher.features, self.connectors)):
            loss = loss + 2.0 ** (i - n + 1) * ab_boundary_loss(conn(f_s), f_t.float(), self.margin) / bsz
        return {"ab": self.beta * loss}

    def end_pretrain(self) -> None:
        self.connectors.requires_grad_(False)  # an initialisation: the connectors are not used afterwards

    def loss_terms(self, batch: kdbench.Batch):
        return {"ce": self.ce_weight * F.cross_entropy(batch.student.logits, batch.targets)}


@kdbench.hookimpl
def register_methods(register):
    register(kdbench.Method(
        "ab", AB, family="features", taps=True,
        summary="activation boundaries: pre-train student + connectors to match the teacher's pre-ReLU signs, then CE",
        paper="Heo et al. 2019, AAAI, arXiv:1811.03233",
    ))
