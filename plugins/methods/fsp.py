"""``fsp``: flow of solution procedure (Yim, Joo, Bae & Kim 2017, "A Gift from Knowledge
Distillation: Fast Optimization, Network Minimization and Transfer Learning", CVPR 2017).

The "flow" between two consecutive feature maps F¹ (C₁×H×W) and F² (C₂×H×W)
is their FSP matrix, the spatial mean of channel products,

    G_{ij}(x) = (1/HW) Σ_{h,w} F¹_{i,h,w}(x) · F²_{j,h,w}(x)

(the larger map average-pooled to the smaller when the sizes differ). The
student is first trained to reproduce the teacher's FSP matrices of every
pair of consecutive taps (the stem and each stage),

    pre-training:  L_FSP = beta · Σ_pairs mean_{n,i,j} (G_S - G_T)²

and then trained on the task alone (cross-entropy), as the paper's two
stages. The pre-training phase trains the student itself (``pretrain_student``);
FSP has no extra modules. FSP matrices compare channel by channel, so both
networks need the same number of taps with the same channels at each;
other pairs are refused (RepDistiller raises for them; the CRD table has no
FSP entry for WRN-40-2 → WRN-40-1) unless ``connector=true``, a kdbench
adapter that is not part of the method: a trainable 1×1 convolution (no bias)
maps each student tap to the teacher's channels before its FSP matrices are
taken (trained with the student during pre-training, unused afterwards).

Source of the defaults: RepDistiller (HobbitLong/RepDistiller)
``distiller_zoo/FSP.py`` (FSP matrices of ``feat[:-1]``: the stem and every
stage), ``helper/pretrain.py`` (30 ``--init_epochs`` of the unweighted FSP
sum on the student's feature modules at the student's lr; kdbench's
``beta=1``) and ``train_student.py``/``helper/loops.py`` (then CE only:
``--distill fsp -a 0`` and no further FSP term, so ``-b 50`` in
``scripts/run_cifar_distill.sh`` has no effect). The paper has no public code.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import kdbench

from ._common import num_stages, require_spatial_pair, stage_channels


def fsp_matrix(bottom: torch.Tensor, top: torch.Tensor) -> torch.Tensor:
    """(N, C_top, C_bottom): the spatial mean of products of the two maps' channels."""
    hb, ht = bottom.shape[2], top.shape[2]
    if hb > ht:
        bottom = F.adaptive_avg_pool2d(bottom, top.shape[-2:])
    elif hb < ht:
        top = F.adaptive_avg_pool2d(top, bottom.shape[-2:])
    return torch.einsum("nthw,nbhw->ntb", top, bottom) / (bottom.shape[2] * bottom.shape[3])


class FSP(kdbench.Distiller):
    pretrain_student = True

    def __init__(self, beta: float = 1.0, pretrain_epochs: int = 30, ce_weight: float = 1.0, connector: bool = False):
        super().__init__()
        if beta < 0 or pretrain_epochs < 0:
            raise kdbench.ConfigError("fsp: beta and pretrain_epochs must be >= 0")
        self.beta, self.pretrain_epochs, self.ce_weight = float(beta), int(pretrain_epochs), float(ce_weight)
        self.connector = bool(connector)
        self.student_stages, self.teacher_stages = (), ()

    def check_pair(self, student, teacher):
        require_spatial_pair("fsp", student, teacher)
        c_s, c_t = stage_channels(student, "fsp"), stage_channels(teacher, "fsp")
        if len(c_s) != len(c_t) or (c_s != c_t and not self.connector):
            raise kdbench.NotApplicableError(
                f"fsp compares FSP matrices channel by channel and needs the same taps with the same channels in both "
                f"networks; the student's are {c_s}, the teacher's {c_t}"
                + ("" if len(c_s) != len(c_t) else " (fsp(connector=true) adapts the channels: a kdbench extension)"))
        n = num_stages(student, "fsp")
        self.student_stages = self.teacher_stages = tuple(range(n))

    def setup(self, info: kdbench.PairInfo) -> None:
        if self.connector:
            self.connectors = nn.ModuleList(
                nn.Identity() if s[1] == t[1] else nn.Conv2d(s[1], t[1], 1, bias=False)
                for s, t in zip(info.student_shapes, info.teacher_shapes))

    def end_pretrain(self) -> None:
        if self.connector:
            self.connectors.requires_grad_(False)

    def pretrain_terms(self, batch: kdbench.Batch):
        g_s, g_t = list(batch.student.features), [f.float() for f in batch.teacher.features]
        if self.connector:
            g_s = [conn(f) for conn, f in zip(self.connectors, g_s)]
        loss = sum((fsp_matrix(g_s[i], g_s[i + 1]) - fsp_matrix(g_t[i], g_t[i + 1])).pow(2).mean()
                   for i in range(len(g_s) - 1))
        return {"fsp": self.beta * loss}

    def loss_terms(self, batch: kdbench.Batch):
        return {"ce": self.ce_weight * F.cross_entropy(batch.student.logits, batch.targets)}


@kdbench.hookimpl
def register_methods(register):
    register(kdbench.Method(
        "fsp", FSP, family="relations", taps=True,
        summary="flow of solution procedure: pre-train the student on the teacher's inter-stage FSP matrices, then CE",
        paper="Yim et al. 2017, CVPR",
    ))
