"""``srd``: softmax regression representation learning (Yang, Martinez, Bulat &
Tzimiropoulos 2021, "Knowledge Distillation via Softmax Regression Representation
Learning", ICLR 2021; the authors name it SRD in their code, torchdistill calls it SRRL).

The student's final feature map goes through a connector r (1×1 conv, BN,
ReLU) to the teacher's width. Two losses train it: feature matching, between
the channel means (the pooled features) of r(f_S) and of the teacher's map;
and softmax regression, which passes r(f_S) through the *teacher's* frozen
head (pooling and classifier) and asks for the teacher's own logits:

    L_FM = (1/NC) Σ_{n,c} (mean_hw r(f_S)_{n,c} - mean_hw f_T_{n,c})²
    L_SR = (1/NK) Σ_{n,k} (h_T(r(f_S))_{n,k} - z_T_{n,k})²
    L    = ce_weight · CE + beta · (fm_weight · L_FM + sr_weight · L_SR)

The maps are those the heads pool (``Outputs.final_map``: for a WRN, after
its final BN-ReLU); the teacher's head is lent by the host for the step
(``needs_head``), frozen: gradients flow through it into the connector and
the student, never into the teacher. The connector is an extra module
(initialised N(0, 2/C_out), unit BN), never deployed.

Source of the defaults: the authors' code jingyang2017/SRD_ossl (built on
RepDistiller): ``distiller_zoo/AIN.py`` (``transfer_conv``, ``statm_loss``),
``train_student.py`` (connector on ``feat[-2]``, teacher channels) and
``helper/loops.py`` (supervised ``train_distill``: ``statm_loss +
F.mse_loss(logit_tc, logit_t)``; its semi-supervised loop and ``srdv2``
weight the feature term ×10) with ``runs/run_kd_ssl.sh`` (``--distill srd
-a 0 -b 1``): beta=1, fm_weight 1, sr_weight 1, CE weight 1, no KL. The
authors' ICLR code (jingyang2017/KD_SRRL, ``train_imagenet_distillation.py``,
ImageNet only) has the same loss and ``--weight 1`` with the
``imagenet-r34-r18`` recipe. Not to be confused with torchdistill's ``SRDLoss``, which is Miles &
Mikolajczyk's "Understanding the Role of the Projector in Knowledge
Distillation" (AAAI 2024), a different method. kdbench follows the code's logit MSE for
L_SR. Refused: a model whose classifier is not one linear layer on
average-pooled features.
"""
from __future__ import annotations

import math

import torch.nn.functional as F
from torch import nn

import kdbench

from ._common import linear_classifier


class SRD(kdbench.Distiller):
    needs_head = True
    needs_pre_logits = True  # for the pooled widths (PairInfo.student_dim/teacher_dim)

    def __init__(self, beta: float = 1.0, fm_weight: float = 1.0, sr_weight: float = 1.0, ce_weight: float = 1.0):
        super().__init__()
        if min(beta, fm_weight, sr_weight) < 0:
            raise kdbench.ConfigError("srd: beta, fm_weight and sr_weight must be >= 0")
        self.beta, self.fm_weight, self.sr_weight, self.ce_weight = float(beta), float(fm_weight), float(sr_weight), float(ce_weight)

    def check_pair(self, student, teacher):
        if teacher is None:
            raise kdbench.NotApplicableError("srd needs a teacher")
        linear_classifier(teacher, "srd", "teacher")
        for role, model in (("student", student), ("teacher", teacher)):
            if not hasattr(model, "forward_features") or not hasattr(model, "forward_head"):
                raise kdbench.NotApplicableError(f"srd needs the {role}'s forward_features/forward_head (timm)")

    def setup(self, info: kdbench.PairInfo) -> None:
        # the heads pool their final maps on average: the pooled widths are the maps' channels
        conv, bn = nn.Conv2d(info.student_dim, info.teacher_dim, 1, bias=False), nn.BatchNorm2d(info.teacher_dim)
        nn.init.normal_(conv.weight, 0.0, math.sqrt(2.0 / info.teacher_dim))
        self.connector = nn.Sequential(conv, bn, nn.ReLU())

    def loss_terms(self, batch: kdbench.Batch):
        f_s, f_t = batch.student.final_map, batch.teacher.final_map.float()
        r = self.connector(f_s)
        fm = (r.mean((2, 3)) - f_t.mean((2, 3))).pow(2).mean()
        sr = F.mse_loss(batch.teacher.head(r), batch.teacher.logits.float())
        return {"ce": self.ce_weight * F.cross_entropy(batch.student.logits, batch.targets),
                "srd_fm": self.beta * self.fm_weight * fm, "srd_sr": self.beta * self.sr_weight * sr}


@kdbench.hookimpl
def register_methods(register):
    register(kdbench.Method(
        "srd", SRD, family="features",
        summary="softmax regression distillation: connector to the teacher's width, feature match + teacher's head on it",
        paper="Yang et al. 2021, ICLR (openreview.net/forum?id=ZzwDy_wiWv)",
    ))
