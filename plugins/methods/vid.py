"""``vid``: variational information distillation (Ahn, Hu, Damianou, Lawrence & Dai 2019,
"Variational Information Distillation for Knowledge Transfer", CVPR 2019, arXiv:1904.05835).

VID maximises a variational lower bound on the mutual information between a
teacher map t and the student map s of the same stage: the teacher's
activations are modelled as a Gaussian whose mean mu(s) a small network
predicts from the student's map and whose variance is learned per channel,

    sigma_c² = softplus(alpha_c) + eps
    L_VID    = mean_{n,c,h,w} [ (t - mu(s))² / (2 sigma_c²) + ½ log sigma_c² ]   (per stage; constant dropped)
    L        = ce_weight · CE + beta · Σ_stages L_VID

mu is RepDistiller's regressor (three 1×1 convolutions without bias, ReLU
between them, hidden width = the teacher's channels); alpha starts where
sigma² = ``init_var``. Regressors and variances are extra modules: trained,
counted in ``extra_params``, never deployed. When the two maps differ in size,
the larger is average-pooled to the smaller (RepDistiller's rule).

Source of the defaults: RepDistiller (HobbitLong/RepDistiller, the CRD
benchmark), ``distiller_zoo/VID.py`` (the authors' code, ssahn0215/
variational-information-distillation, as RepDistiller credits it) and
``scripts/run_cifar_distill.sh`` (``--distill vid -a 0 -b 1``): beta=1, CE
weight 1, no KL, init_var=5, eps=1e-5, every stage after the stem
(``feat[1:-1]``; kdbench: the deepest min(n_s, n_t) - 1 stages of each model
when the counts differ); mdistiller's ``configs/cifar100/vid.yaml`` uses the
same. A CNN/ViT mix is refused before training.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

import kdbench

from ._common import deepest_common_stages, pool_to_common_size, require_spatial_pair, require_stages_resolved


def vid_regressor(c_in: int, c_mid: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_mid, 1, bias=False), nn.ReLU(),
        nn.Conv2d(c_mid, c_mid, 1, bias=False), nn.ReLU(),
        nn.Conv2d(c_mid, c_out, 1, bias=False),
    )


class VID(kdbench.Distiller):
    def __init__(self, beta: float = 1.0, ce_weight: float = 1.0, init_var: float = 5.0, eps: float = 1e-5):
        super().__init__()
        if beta < 0 or init_var <= eps or eps <= 0:
            raise kdbench.ConfigError(f"vid: beta must be >= 0 and init_var > eps > 0, got beta={beta}, "
                                      f"init_var={init_var}, eps={eps}")
        self.beta, self.ce_weight, self.init_var, self.eps = float(beta), float(ce_weight), float(init_var), float(eps)
        self.student_stages, self.teacher_stages = (), ()

    def check_pair(self, student, teacher):
        require_spatial_pair("vid", student, teacher)
        self.student_stages, self.teacher_stages = deepest_common_stages(student, teacher, "vid")

    def setup(self, info: kdbench.PairInfo) -> None:
        require_stages_resolved("vid", self.student_stages)
        start = math.log(math.expm1(self.init_var - self.eps))  # softplus(start) + eps = init_var
        self.regressors = nn.ModuleList()
        self.log_scales = nn.ParameterList()
        for s, t in zip(info.student_shapes, info.teacher_shapes):
            self.regressors.append(vid_regressor(s[1], t[1], t[1]))
            self.log_scales.append(nn.Parameter(torch.full((t[1],), start)))

    def vid_loss(self, i: int, f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
        f_s, f_t = pool_to_common_size(f_s, f_t)
        mean = self.regressors[i](f_s)
        var = (F.softplus(self.log_scales[i]) + self.eps).view(1, -1, 1, 1)
        return (0.5 * ((mean - f_t) ** 2 / var + torch.log(var))).mean()

    def loss_terms(self, batch: kdbench.Batch):
        vid = sum(self.vid_loss(i, f_s, f_t.float())
                  for i, (f_s, f_t) in enumerate(zip(batch.student.features, batch.teacher.features)))
        return {"ce": self.ce_weight * F.cross_entropy(batch.student.logits, batch.targets), "vid": self.beta * vid}


@kdbench.hookimpl
def register_methods(register):
    register(kdbench.Method(
        "vid", VID, family="features", taps=True,
        summary="variational information distillation: Gaussian likelihood of every teacher stage given the student's",
        paper="Ahn et al. 2019, CVPR, arXiv:1904.05835",
    ))
