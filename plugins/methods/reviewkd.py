"""``reviewkd``: knowledge review (Chen, Liu, Zhao & Jia 2021, "Distilling Knowledge via
Knowledge Review", CVPR 2021, arXiv:2104.09044).

Each teacher stage is matched not by the student's same stage alone but by a
fusion of that stage with every deeper one ("review"): starting from the
deepest level (the pooled feature as a 1×1 map), an attention-based fusion
module (ABF) at level i takes the student's map s_i through a 1×1 conv + BN,
fuses it with the residual r_{i+1} coming from the level below (resized to
s_i's size by nearest interpolation) using two sigmoid attention maps computed
from their concatenation,

    x_i = conv1(s_i);  [a, b] = sigmoid(conv_att([x_i, up(r_{i+1})]));  r_i = a·x_i + b·up(r_{i+1})

and produces y_i = conv2(r_i) (3×3 conv + BN, resized to the teacher map's
size) to imitate the teacher's level i. The loss is the hierarchical context
loss (HCL): at every level, the MSE between y_i and the teacher map plus the
MSEs after average-pooling both to 4×4, 2×2 and 1×1 (the sizes smaller than
the map), weighted 1, ½, ¼, ⅛ and normalised by their sum:

    L = ce_weight · CE + weight · min(epoch / warmup, 1) · Σ_levels HCL(y_i, t_i)

As in the authors' code, the teacher's stage maps are taken before their
final ReLU (``preact=True``), the student's after it (``student_preact=true``:
before it too, mdistiller's ImageNet setting ``STU_PREACT``), and the deepest
level is each model's pooled feature. ABF modules are extra modules (trained, counted
in ``extra_params``, never deployed); their hidden width is min(512, width of
the student's pooled feature).

Source of the defaults: dvlab-research/ReviewKD, ``CIFAR-100/train.py`` and
``CIFAR-100/model/reviewkd.py`` (ABF, HCL, the per-network channel and shape
lists that kdbench derives from the tapped shapes) and
``CIFAR-100/script/reviewKD.sh``: ``--kd-loss-weight 5.0`` (8.0 for
ResNet-32×4 → ShuffleNetV2, 0.6 for ResNet-56 → ResNet-20, 1.0 for ResNet-110
→ ResNet-32: set per pair in the ``cifar100-standard`` suite), warm-up 20
epochs (``--kd-warm-up``, counted from epoch 0 as the authors' loop does, so
the first epoch has no review term), CE weight 1, no KL; mdistiller's
``configs/cifar100/reviewkd.yaml`` (weight 5, warm-up 20) agrees. The
authors' CIFAR recipe itself differs from the CRD one (batch 128, lr 0.1 with
Nesterov, 0.02 for ShuffleNet/MobileNet students); kdbench's suites train
every method with the suite's recipe. Stages: every stage after the stem
(the deepest min(n_s, n_t) - 1 of each model when the counts differ). A
CNN/ViT mix, or a teacher without pre-activation taps, is refused. ImageNet
(mdistiller ``configs/imagenet/r34_r18/reviewkd.yaml``): weight 1, warm-up 1,
``student_preact``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import kdbench

from ._common import deepest_common_stages, require_preact, require_spatial_pair, require_stages_resolved


class ABF(nn.Module):
    """Attention-based fusion of a student level with the residual from the level below."""

    def __init__(self, c_in: int, c_mid: int, c_out: int, fuse: bool):
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(c_in, c_mid, 1, bias=False), nn.BatchNorm2d(c_mid))
        self.conv2 = nn.Sequential(nn.Conv2d(c_mid, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out))
        self.att_conv = nn.Sequential(nn.Conv2d(2 * c_mid, 2, 1), nn.Sigmoid()) if fuse else None
        nn.init.kaiming_uniform_(self.conv1[0].weight, a=1)
        nn.init.kaiming_uniform_(self.conv2[0].weight, a=1)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None, out_size: tuple[int, int]):
        h, w = x.shape[-2:]
        x = self.conv1(x)
        if self.att_conv is not None:
            residual = F.interpolate(residual, (h, w), mode="nearest")
            z = self.att_conv(torch.cat([x, residual], dim=1))
            x = x * z[:, 0:1] + residual * z[:, 1:2]
        if tuple(x.shape[-2:]) != tuple(out_size):
            x = F.interpolate(x, out_size, mode="nearest")
        return self.conv2(x), x


def hcl_loss(f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
    """Hierarchical context loss of one level: MSE at full size and pooled to 4, 2, 1 (those smaller than the map)."""
    loss, weight, total = F.mse_loss(f_s, f_t), 1.0, 1.0
    for size in (4, 2, 1):
        if size >= f_s.shape[2]:
            continue
        weight /= 2.0
        loss = loss + weight * F.mse_loss(F.adaptive_avg_pool2d(f_s, size), F.adaptive_avg_pool2d(f_t, size))
        total += weight
    return loss / total


class ReviewKD(kdbench.Distiller):
    needs_pre_logits = True
    teacher_preact = True

    def __init__(self, weight: float = 5.0, ce_weight: float = 1.0, warmup: int = 20, max_mid_channels: int = 512,
                 student_preact: bool = False):
        super().__init__()
        if weight < 0 or warmup < 0 or max_mid_channels < 1:
            raise kdbench.ConfigError("reviewkd: weight and warmup must be >= 0, max_mid_channels >= 1")
        self.weight, self.ce_weight, self.warmup = float(weight), float(ce_weight), int(warmup)
        self.student_preact = bool(student_preact)
        self.max_mid_channels = int(max_mid_channels)
        self.student_stages, self.teacher_stages = (), ()

    def check_pair(self, student, teacher):
        require_spatial_pair("reviewkd", student, teacher)
        require_preact("reviewkd", student if self.student_preact else None, teacher)
        self.student_stages, self.teacher_stages = deepest_common_stages(student, teacher, "reviewkd")

    def setup(self, info: kdbench.PairInfo) -> None:
        require_stages_resolved("reviewkd", self.student_stages)
        c_in = [s[1] for s in info.student_shapes] + [info.student_dim]
        c_out = [t[1] for t in info.teacher_shapes] + [info.teacher_dim]
        self.out_sizes = [tuple(t[2:]) for t in info.teacher_shapes] + [(1, 1)]
        c_mid = min(self.max_mid_channels, info.student_dim)
        # shallow to deep; the deepest (the pooled feature) starts the review and fuses nothing
        self.abfs = nn.ModuleList(ABF(i, c_mid, o, fuse=k < len(c_in) - 1) for k, (i, o) in enumerate(zip(c_in, c_out)))

    def review(self, student: kdbench.Outputs) -> list[torch.Tensor]:
        """The ABF outputs, shallow to deep, one per teacher level."""
        levels = list(student.features) + [student.pre_logits[:, :, None, None]]
        results: list[torch.Tensor] = []
        residual = None
        for k in reversed(range(len(levels))):
            out, residual = self.abfs[k](levels[k], residual, self.out_sizes[k])
            results.insert(0, out)
        return results

    def loss_terms(self, batch: kdbench.Batch):
        targets = list(batch.teacher.features) + [batch.teacher.pre_logits[:, :, None, None]]
        hcl = sum(hcl_loss(y, t.float()) for y, t in zip(self.review(batch.student), targets))
        ramp = min(batch.epoch / self.warmup, 1.0) if self.warmup > 0 else 1.0
        return {"ce": self.ce_weight * F.cross_entropy(batch.student.logits, batch.targets),
                "reviewkd": self.weight * ramp * hcl}


@kdbench.hookimpl
def register_methods(register):
    register(kdbench.Method(
        "reviewkd", ReviewKD, family="features", taps=True,
        summary="knowledge review: attention-fused student stages (deep to shallow) vs teacher stages, HCL loss",
        paper="Chen et al. 2021, CVPR, arXiv:2104.09044",
    ))
