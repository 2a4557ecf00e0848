"""``ofd``: a comprehensive overhaul of feature distillation (Heo, Kim, Yun, Park, Kwak &
Choi 2019, "A Comprehensive Overhaul of Feature Distillation", ICCV 2019, arXiv:1904.01866).

The student imitates the teacher's stage maps *before* their ReLU, through a
1×1 conv + BN connector r, with a partial L2 distance that ignores what the
teacher's ReLU would discard anyway. The teacher's negative responses are
replaced by a per-channel margin m_c, the expectation of the negative part of
the pre-ReLU response, computed from the teacher's BatchNorm before that ReLU
(its output is taken as N(beta_c, gamma_c²)):

    m_c = beta_c - |gamma_c| · φ(beta_c/|gamma_c|) / Φ(-beta_c/|gamma_c|)    if Φ(-beta_c/|gamma_c|) > 0.001
        = -3 |gamma_c|                                                    otherwise
    t'  = max(t, m)
    d(s, t) = Σ_{c,h,w} (r(s) - t')² · [r(s) > t' or t > 0]                 (mean over the batch)
    L   = ce_weight · CE + weight · Σ_i d_i / 2^(n-1-i)        (stage i of n, the deepest weighted most)

(A channel whose gamma is 0 is the limit of the formula: m = beta if beta < 0,
else 0.) Margins are buffers computed once in ``check_pair`` from the
teacher's BatchNorm parameters: nothing of the teacher is kept. The BatchNorm
is the network's ``get_bn_before_relu()`` (RepDistiller's, mdistiller's and
the authors' convention, which kdbench's CIFAR networks implement: ResNets
the last block's last BN, WRNs the BN that next normalises the stage output,
VGG the block's last BN, MobileNetV2 the linear bottleneck's last BN;
ShuffleNets have none and are refused as teachers, as in mdistiller), or for
timm's ResNets the last block's ``bn2``/``bn3``. When the maps differ in size
the teacher's is average-pooled to the student's (mdistiller).

Source of the defaults: clovaai/overhaul-distillation, ``CIFAR-100/distiller.py``
(margin, partial L2, connectors initialised N(0, 2/(k²·C_out)) with unit BN,
stage weights 1/2^(n-1-i)) and ``train_with_distillation.py`` (``loss_CE +
loss_distill.sum() / batch_size / 1000``: weight 1e-3 on the batch-mean sum);
mdistiller ``mdistiller/distillers/OFD.py`` and ``engine/cfg.py``
(``OFD.LOSS.FEAT_WEIGHT 0.001``, ``CE_WEIGHT 1``, connector kernel 1; every
stage after the stem, aligned on the deepest common ones). The authors run
the teacher in train mode during distillation (its BN uses batch statistics);
kdbench's teacher is always in eval mode (the host's contract), so the
teacher maps here use its running statistics. The authors' CIFAR recipe
(200 epochs, batch 128, lr 0.1 Nesterov) is not the CRD one the suites use.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

import kdbench

from ._common import (
    deepest_common_stages, num_stages, require_preact, require_spatial_pair, require_stages_resolved, stage_channels,
)


def ofd_margin(gamma: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """Per-channel expectation of the negative part of N(beta, gamma²) (the authors' ``get_margin_from_BN``)."""
    out = []
    for g, b in zip(gamma.detach().double().abs().tolist(), beta.detach().double().tolist()):
        if g == 0.0:
            out.append(b if b < 0 else 0.0)
            continue
        cdf = 0.5 * math.erfc((b / g) / math.sqrt(2.0))  # Φ(-b/g)
        if cdf > 0.001:
            out.append(-g * math.exp(-((b / g) ** 2) / 2) / math.sqrt(2 * math.pi) / cdf + b)
        else:
            out.append(-3.0 * g)
    return torch.tensor(out, dtype=torch.float32)


def ofd_distance(s: torch.Tensor, t: torch.Tensor, margin: torch.Tensor) -> torch.Tensor:
    """Partial L2 between connector output ``s`` and pre-ReLU teacher map ``t``: summed over C, H, W, mean over N."""
    target = torch.max(t, margin)
    mask = ((s > target) | (t > 0)).to(s.dtype)
    return ((s - target) ** 2 * mask).sum() / s.shape[0]


def bn_before_relu(teacher: nn.Module, stages: list[int]) -> list[nn.BatchNorm2d]:
    """The teacher's BatchNorm before the final ReLU of each stage in ``stages`` (indices after the stem)."""
    n = num_stages(teacher, "ofd")
    if hasattr(teacher, "get_bn_before_relu"):
        try:
            bns = list(teacher.get_bn_before_relu())  # one per stage after the stem
        except NotImplementedError as exc:
            raise kdbench.NotApplicableError(f"ofd needs the teacher's BatchNorm before each stage's ReLU: {exc}") from exc
        if len(bns) != n - 1:
            raise kdbench.NotApplicableError(f"ofd: the teacher's get_bn_before_relu() gives {len(bns)} BatchNorms "
                                             f"for {n - 1} stages after the stem")
        return [bns[i - 1] for i in stages]
    if type(teacher).__module__ == "timm.models.resnet":
        out = []
        for i in stages:
            info = teacher.feature_info[i]
            block = teacher.get_submodule(info["module"] if isinstance(info, dict) else info.module)[-1]
            out.append(block.bn3 if hasattr(block, "bn3") else block.bn2)
        return out
    raise kdbench.NotApplicableError(
        f"ofd needs the teacher's BatchNorm before each stage's ReLU (its margins), but {type(teacher).__name__} has "
        "no get_bn_before_relu() and is not a timm ResNet")


class OFD(kdbench.Distiller):
    student_preact = True
    teacher_preact = True

    def __init__(self, weight: float = 1e-3, ce_weight: float = 1.0):
        super().__init__()
        if weight < 0:
            raise kdbench.ConfigError(f"ofd: weight must be >= 0, got {weight}")
        self.weight, self.ce_weight = float(weight), float(ce_weight)
        self.student_stages, self.teacher_stages = (), ()

    def check_pair(self, student, teacher):
        require_spatial_pair("ofd", student, teacher)
        require_preact("ofd", student, teacher)
        self.student_stages, self.teacher_stages = deepest_common_stages(student, teacher, "ofd")
        channels = stage_channels(teacher, "ofd")
        bns = bn_before_relu(teacher, list(self.teacher_stages))
        for i, bn in zip(self.teacher_stages, bns):
            if not isinstance(bn, nn.modules.batchnorm._BatchNorm) or bn.num_features != channels[i] or not bn.affine:
                raise kdbench.NotApplicableError(
                    f"ofd: the teacher's BatchNorm before stage {i}'s ReLU does not describe its {channels[i]} channels")
        # the margins only: the teacher's BatchNorms are read once, never kept
        for k, bn in enumerate(bns):
            self.register_buffer(f"margin{k}", ofd_margin(bn.weight, bn.bias).view(1, -1, 1, 1))

    def setup(self, info: kdbench.PairInfo) -> None:
        require_stages_resolved("ofd", self.student_stages)
        self.connectors = nn.ModuleList()
        for s, t in zip(info.student_shapes, info.teacher_shapes):
            conv, bn = nn.Conv2d(s[1], t[1], 1, bias=False), nn.BatchNorm2d(t[1])
            nn.init.normal_(conv.weight, 0.0, math.sqrt(2.0 / t[1]))  # N(0, 2/(k·k·C_out)), k = 1
            self.connectors.append(nn.Sequential(conv, bn))

    def loss_terms(self, batch: kdbench.Batch):
        n = len(batch.student.features)
        ofd = 0.0
        for i, (f_s, f_t) in enumerate(zip(batch.student.features, batch.teacher.features)):
            s = self.connectors[i](f_s)
            t = F.adaptive_avg_pool2d(f_t.float(), s.shape[-2:]) if f_t.shape[-2:] != s.shape[-2:] else f_t.float()
            ofd = ofd + ofd_distance(s, t, getattr(self, f"margin{i}")) / 2 ** (n - 1 - i)
        return {"ce": self.ce_weight * F.cross_entropy(batch.student.logits, batch.targets), "ofd": self.weight * ofd}


@kdbench.hookimpl
def register_methods(register):
    register(kdbench.Method(
        "ofd", OFD, family="features", taps=True,
        summary="overhaul of feature distillation: pre-ReLU features, teacher-BN margins, partial L2 via 1×1 connectors",
        paper="Heo et al. 2019, ICCV, arXiv:1904.01866",
    ))
