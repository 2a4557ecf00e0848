"""``dist_plus``: DIST+, DIST's relation matching extended from the logits to the
features (Huang, You, Wang, Qian & Xu, "DIST+: Knowledge Distillation From a
Stronger Adaptive Teacher", IEEE TPAMI 47(7), 2025, doi:10.1109/TPAMI.2025.3554235).

The authors have not released DIST+ code; the public definition is
torchdistill's ``DISTPlusLoss`` (yoshitomo-matsubara/torchdistill, commit
3e4373c, ``torchdistill/losses/mid_level.py``, added in 125e988) with its
ImageNet config ``configs/sample/ilsvrc2012/dist_plus/resnet18_from_resnet34.yaml``.
With ρ the Pearson correlation, Y = softmax(Z/τ) (B × C) and F the last
stage's feature maps (B × C' × H × W) of student (S) and teacher (T):

    inter    = 1 − mean_i ρ(Y_S[i, :], Y_T[i, :])                 (DIST, ``plugins/methods/dist.py``)
    intra    = 1 − mean_c ρ(Y_S[:, c], Y_T[:, c])
    channel  = 1 − mean_{b,h,w} ρ(F_S[b, :, h, w], F_T[b, :, h, w])   (across channels, at each position)
    spatial  = 1 − mean_{h,w} ρ(A_S[:, h, w], A_T[:, h, w]),  A = Σ_c F   (across the batch, at each position)
    L        = ce_weight · CE + weight · (τ² (beta · inter + gamma · intra) + iota · channel + kappa · spatial)

Where this differs from torchdistill: its ``channel_relation`` returns the
mean correlation itself, without the ``1 −`` that its inter, intra and
spatial terms carry, so minimising it would push the student's channels to
*anti*-correlate with the teacher's; the paper's description (DIST's
relation loss extended to the feature level) is the ``1 − ρ`` form used here.
The paper's other component, teacher acclimation, has no public definition
and is not part of this method. Pearson correlations use DIST's 1e-8 guard.

Defaults are that ImageNet config (ResNet-34 → ResNet-18, layer4 maps): beta 2,
gamma 2, iota 1, kappa 1, tau 1, loss weight 2, CE weight 1. No CIFAR-100
recipe is public. The channel term compares the two maps channel by
channel, so both last stages must have the same width and resolution
(ResNet-34/18: 512 × 7 × 7); ``check_pair`` refuses other pairs unless
``connector=true``, a kdbench adapter outside the definition (a 1×1
convolution + BatchNorm from the student's width to the teacher's, trained
with the student, and average pooling of the larger map to the smaller).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import kdbench

from ._common import num_stages, pool_to_common_size
from .dist import dist_terms, pearson_rows


def _last_stage(model: nn.Module, method: str) -> tuple[int, int]:
    num_stages(model, method)
    entry = model.feature_info[-1]
    get = entry.get if isinstance(entry, dict) else (lambda k: getattr(entry, k, None))
    return int(get("num_chs")), int(get("reduction"))


def channel_relation(f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
    """1 − mean over (b, h, w) of the correlation across channels."""
    c = f_s.shape[1]
    rows_s = f_s.permute(0, 2, 3, 1).reshape(-1, c)
    rows_t = f_t.permute(0, 2, 3, 1).reshape(-1, f_t.shape[1])
    return 1 - pearson_rows(rows_s, rows_t).mean()


def spatial_relation(f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
    """1 − mean over positions of the correlation across the batch of the channel-summed maps."""
    a_s, a_t = f_s.sum(dim=1).flatten(1), f_t.sum(dim=1).flatten(1)  # (B, HW)
    return 1 - pearson_rows(a_s.t(), a_t.t()).mean()


class DISTPlus(kdbench.Distiller):
    student_stages = (-1,)
    teacher_stages = (-1,)

    def __init__(self, beta: float = 2.0, gamma: float = 2.0, iota: float = 1.0, kappa: float = 1.0, tau: float = 1.0,
                 weight: float = 2.0, ce_weight: float = 1.0, connector: bool = False):
        super().__init__()
        if tau <= 0:
            raise kdbench.ConfigError(f"dist_plus: tau must be positive, got {tau}")
        self.beta, self.gamma, self.iota, self.kappa, self.tau = float(beta), float(gamma), float(iota), float(kappa), float(tau)
        self.weight, self.ce_weight, self.connector = float(weight), float(ce_weight), bool(connector)

    def check_pair(self, student, teacher):
        if teacher is None:
            raise kdbench.NotApplicableError("dist_plus needs a teacher")
        (c_s, r_s), (c_t, r_t) = _last_stage(student, "dist_plus"), _last_stage(teacher, "dist_plus")
        if (c_s, r_s) != (c_t, r_t) and not self.connector:
            raise kdbench.NotApplicableError(
                f"dist_plus correlates the last stages' maps channel by channel, but the student's has {c_s} channels "
                f"at stride {r_s} and the teacher's {c_t} at stride {r_t}; DIST+ defines no adapter "
                "(dist_plus(connector=true) adds kdbench's 1×1 conv + BN and pooling; dist matches logits only)"
            )

    def setup(self, info: kdbench.PairInfo):
        (s,), (t,) = info.student_shapes, info.teacher_shapes
        if len(s) != 4 or len(t) != 4:
            raise kdbench.NotApplicableError(f"dist_plus needs (B, C, H, W) feature maps, got {tuple(s)} and {tuple(t)}")
        if s[1] != t[1] or s[2:] != t[2:]:
            if not self.connector:
                raise kdbench.NotApplicableError(
                    f"dist_plus: last-stage maps differ ({tuple(s[1:])} vs {tuple(t[1:])}); use connector=true"
                )
            self.regressor = nn.Sequential(nn.Conv2d(int(s[1]), int(t[1]), 1, bias=False), nn.BatchNorm2d(int(t[1])))

    def loss_terms(self, batch: kdbench.Batch):
        z_s, z_t = batch.student.logits.float(), batch.teacher.logits.float()
        f_s, f_t = batch.student.features[0].float(), batch.teacher.features[0].float()
        if hasattr(self, "regressor"):
            f_s, f_t = pool_to_common_size(self.regressor(f_s), f_t)
        inter, intra = dist_terms(z_s, z_t, self.tau)
        w, scale = self.weight, self.tau ** 2
        return {
            "ce": self.ce_weight * F.cross_entropy(batch.student.logits, batch.targets),
            "dist_inter": w * scale * self.beta * inter,
            "dist_intra": w * scale * self.gamma * intra,
            "dist_channel": w * self.iota * channel_relation(f_s, f_t),
            "dist_spatial": w * self.kappa * spatial_relation(f_s, f_t),
        }


@kdbench.hookimpl
def register_methods(register):
    register(kdbench.Method(
        "dist_plus", DISTPlus,
        summary="DIST+: DIST's inter/intra-class correlation match plus channel and spatial correlations of the "
                "last-stage features (torchdistill's definition)",
        paper="Huang et al. TPAMI 2025, doi:10.1109/TPAMI.2025.3554235", family="logits", taps=True,
    ))
