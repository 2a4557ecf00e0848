"""``fitnet``: FitNets, hint-based training (Romero et al. 2015, "FitNets: Hints for
Thin Deep Nets", ICLR 2015, arXiv:1412.6550).

A *hint* layer of the teacher guides a *guided* layer of the student through a
trainable regressor r that maps the student's feature map to the teacher's
shape; the hint loss is the squared error between them:

    L_HT = || u_hint(x) - r(v_guided(x)) ||²      (mean over elements here)

The regressor is RepDistiller's convolutional one (``ConvReg``): a conv to the
teacher's channels whose geometry absorbs the spatial difference (3×3 stride 2
when the student map is twice as large, 4×4 stride-2 transposed conv when half
as large, a (1+Hs-Ht)×(1+Ws-Wt) conv when larger, 1×1 when equal), then
BatchNorm and ReLU (the hint is a post-ReLU map). kdbench adds one case
RepDistiller rejects: a student map smaller than the teacher's by another
factor gets a 3×3 conv and bilinear up-sampling. The regressor is an extra
module: trained, counted in ``extra_params``, never deployed.

Two modes:

- ``mode=joint`` (default), the CRD benchmark recipe (RepDistiller
  ``--distill hint -a 0 -b 100``): ``CE + hint_weight · L_HT`` from the first
  step, no KL term.
- ``mode=two_stage``, the paper's stage-wise training (its Algorithm 1):
  during the first ``hint_epochs`` epochs only ``hint_weight · L_HT`` is
  minimised, so only the student's layers up to the guided layer and the
  regressor learn; afterwards the whole student is trained with KD,
  ``(1 - alpha) · CE + alpha · T² · KL`` (the ``kd`` method's loss). The paper
  tunes the soft-target weight and anneals it during training; here it is
  constant (``alpha``). Stage one's epochs come out of the recipe's epochs and
  share its lr schedule (RepDistiller runs its two-stage methods' 30
  pre-training epochs before the 240).

Defaults: hint_weight=100, guided/hint layer = stage 2 of both models
(RepDistiller ``hint_layer=2``: the second residual stage of the CIFAR
ResNets/WRNs, one of the middle stages of timm CNNs); T=4, alpha=0.9 for the
KD stage (the benchmark's KD settings); hint_epochs=30 (RepDistiller's
``init_epochs``; lower it for short runs).

Spatial hints need comparable maps: a CNN/ViT mix is refused before training.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import kdbench

from ._common import num_stages, require_spatial_pair


class ConvRegressor(nn.Module):
    """Maps a student map (Cs, Hs, Ws) to the teacher's (Ct, Ht, Wt): conv, BatchNorm, ReLU."""

    def __init__(self, s_shape: torch.Size, t_shape: torch.Size):
        super().__init__()
        (_, cs, hs, ws), (_, ct, ht, wt) = s_shape, t_shape
        self.size = (ht, wt)
        self.resize = False
        if hs == 2 * ht:
            self.conv = nn.Conv2d(cs, ct, kernel_size=3, stride=2, padding=1)
        elif hs * 2 == ht:
            self.conv = nn.ConvTranspose2d(cs, ct, kernel_size=4, stride=2, padding=1)
        elif hs >= ht and ws >= wt:
            self.conv = nn.Conv2d(cs, ct, kernel_size=(1 + hs - ht, 1 + ws - wt))
        else:  # kdbench extension: smaller student map by another factor
            self.conv = nn.Conv2d(cs, ct, kernel_size=3, padding=1)
            self.resize = True
        self.bn = nn.BatchNorm2d(ct)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.resize:
            x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False)
        return F.relu(self.bn(x))


class FitNet(kdbench.Distiller):
    def __init__(
        self, mode: str = "joint", hint_weight: float = 100.0, student_stage: int = 2, teacher_stage: int = 2,
        hint_epochs: int = 30, T: float = 4.0, alpha: float = 0.9,
    ):
        super().__init__()
        if mode not in ("joint", "two_stage"):
            raise kdbench.ConfigError(f"fitnet: mode must be 'joint' or 'two_stage', got {mode!r}")
        if hint_weight <= 0 or T <= 0 or not 0 <= alpha <= 1 or hint_epochs < 0:
            raise kdbench.ConfigError("fitnet: hint_weight and T must be positive, alpha in [0, 1], hint_epochs >= 0")
        self.mode, self.hint_weight, self.hint_epochs = mode, float(hint_weight), int(hint_epochs)
        self.T, self.alpha = float(T), float(alpha)
        self.student_stages, self.teacher_stages = (int(student_stage),), (int(teacher_stage),)

    def check_pair(self, student, teacher):
        require_spatial_pair("fitnet", student, teacher)
        for role, model, stage in (("student", student, self.student_stages[0]), ("teacher", teacher, self.teacher_stages[0])):
            n = num_stages(model, "fitnet")
            if not -n <= stage < n:
                raise kdbench.NotApplicableError(f"fitnet: {role} stage {stage} does not exist ({n} feature stages)")

    def setup(self, info: kdbench.PairInfo) -> None:
        (s_shape,), (t_shape,) = info.student_shapes, info.teacher_shapes
        if len(s_shape) != 4 or len(t_shape) != 4:
            raise kdbench.NotApplicableError(f"fitnet needs NCHW maps, got {tuple(s_shape)} and {tuple(t_shape)}")
        self.regressor = ConvRegressor(s_shape, t_shape)

    def hint_loss(self, batch: kdbench.Batch) -> torch.Tensor:
        return F.mse_loss(self.regressor(batch.student.features[0]), batch.teacher.features[0].float())

    def loss_terms(self, batch: kdbench.Batch):
        if self.mode == "joint":
            return {"ce": F.cross_entropy(batch.student.logits, batch.targets),
                    "hint": self.hint_weight * self.hint_loss(batch)}
        if batch.epoch < self.hint_epochs:  # stage 1: hints only
            return {"hint": self.hint_weight * self.hint_loss(batch)}
        log_p_s = F.log_softmax(batch.student.logits / self.T, dim=1)
        log_p_t = F.log_softmax(batch.teacher.logits.float() / self.T, dim=1)
        kl = F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * self.T ** 2
        return {"ce": (1 - self.alpha) * F.cross_entropy(batch.student.logits, batch.targets), "kd": self.alpha * kl}


@kdbench.hookimpl
def register_methods(register):
    register(kdbench.Method(
        "fitnet", FitNet, family="features", taps=True,
        summary="FitNets hints: conv regressor + L2 to a teacher stage (joint, or the paper's two-stage hints→KD)",
        paper="Romero et al. 2015, arXiv:1412.6550",
    ))
