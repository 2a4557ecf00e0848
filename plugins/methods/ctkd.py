"""``ctkd``: curriculum temperature for knowledge distillation (Li, Li, Yang, Zhao,
Song, Luo, Li & Yang, "Curriculum Temperature for Knowledge Distillation",
AAAI 2023, arXiv:2211.16231), on vanilla KD.

The KD temperature is learned, adversarially: a learnable scalar θ gives
τ = t_start + t_end · sigmoid(θ), and reaches the loss through a gradient
reversal layer, identity forward and gradient × (−λ) backward. The student
minimises the KD loss; θ, optimised with it, therefore *maximises* it, λ
setting how hard. λ follows an easy-to-hard cosine curriculum over the first
``curriculum_epochs`` epochs, then stays at ``lambda_max``:

    λ(e) = λ_min + (λ_max − λ_min) · (1 − cos(π · min(e, E) / E)) / 2,   e = 1, 2, … (1-based epoch)
    L    = ce_weight · CE(z_s, y) + kd_weight · τ² · KL(softmax(z_t/τ) || softmax(z_s/τ))

(KL summed over classes, averaged over the batch). The temperature module
(one parameter, ``extra_params`` = 1) is trained by the host's optimiser
with the student, weight decay included, as in the authors' code where it is
part of the trainable list.

Source: zhengli97/CTKD (commit 7d52522): ``models/temp_global.py``
(``Global_T``: θ initialised to 1, ``GradientReversalFunction``: gradient ×
λ), ``helper/loops.py`` (τ = t_start + t_end·sigmoid(θ)), ``train_student.py``
(``CosineDecay`` evaluated once per epoch at the 1-based epoch). The code's
λ runs from ``decay_max`` 0 down to ``decay_min`` −1 and multiplies the
gradient directly; here λ runs from 0 up to 1 and the layer multiplies by −λ,
the paper's convention: the same gradients. Defaults are its CIFAR-100 script
``scripts/run_cifar_distill.sh``: ``-r 0.1 -a 0.9`` (CE 0.1, KD 0.9),
``--t_start 1 --t_end 20`` (parser defaults), ``--cosine_decay 1
--decay_max 0 --decay_min -1 --decay_loops 10``, batch 64, lr 0.05 (the
RepDistiller schedule, 240 epochs; the script reports the best epoch).
ImageNet (``scripts/run_imagenet_distill.sh``): CE 1, KD 1, ``--decay_loops 5``.
The curriculum is a number of epochs, not a share of the run, so it needs no
run length.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

import kdbench


class _ReverseGradient(torch.autograd.Function):
    """Identity forward; backward multiplies the gradient by ``-lam``."""

    @staticmethod
    def forward(ctx, x, lam):
        ctx.lam = lam
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return -ctx.lam * grad, None


def reverse_gradient(x: torch.Tensor, lam: float) -> torch.Tensor:
    return _ReverseGradient.apply(x, float(lam))


class GlobalTemperature(nn.Module):
    """The learnable temperature: τ = t_start + t_end · sigmoid(θ), θ behind a gradient reversal."""

    def __init__(self, t_start: float, t_end: float, init: float = 1.0):
        super().__init__()
        self.t_start, self.t_end = t_start, t_end
        self.theta = nn.Parameter(torch.full((1,), float(init)))

    def forward(self, lam: float) -> torch.Tensor:
        return self.t_start + self.t_end * torch.sigmoid(reverse_gradient(self.theta, lam))


def cosine_lambda(epoch: int, epochs: int, lam_min: float, lam_max: float) -> float:
    """λ at a 1-based ``epoch`` of a cosine ramp from ``lam_min`` to ``lam_max`` over ``epochs`` epochs."""
    i = min(max(epoch, 0), epochs)
    return lam_min + (lam_max - lam_min) * (1.0 - math.cos(math.pi * i / epochs)) / 2.0


class CTKD(kdbench.Distiller):
    def __init__(self, t_start: float = 1.0, t_end: float = 20.0, lambda_min: float = 0.0, lambda_max: float = 1.0,
                 curriculum_epochs: int = 10, ce_weight: float = 0.1, kd_weight: float = 0.9):
        super().__init__()
        if t_start <= 0 or t_end < 0:
            raise kdbench.ConfigError("ctkd: t_start must be positive and t_end >= 0 (τ = t_start + t_end·sigmoid(θ))")
        if curriculum_epochs < 1:
            raise kdbench.ConfigError(f"ctkd: curriculum_epochs must be at least 1, got {curriculum_epochs}")
        self.t_start, self.t_end = float(t_start), float(t_end)
        self.lambda_min, self.lambda_max, self.curriculum_epochs = float(lambda_min), float(lambda_max), int(curriculum_epochs)
        self.ce_weight, self.kd_weight = float(ce_weight), float(kd_weight)

    def check_pair(self, student, teacher):
        if teacher is None:
            raise kdbench.NotApplicableError("ctkd distils the teacher's logits: the pair needs a teacher")

    def setup(self, info: kdbench.PairInfo):
        self.temperature = GlobalTemperature(self.t_start, self.t_end)

    def lam(self, epoch: int) -> float:
        """λ during the host's 0-based ``epoch`` (the authors' epoch ``epoch + 1``)."""
        return cosine_lambda(epoch + 1, self.curriculum_epochs, self.lambda_min, self.lambda_max)

    def loss_terms(self, batch: kdbench.Batch):
        z_s, z_t = batch.student.logits, batch.teacher.logits.float()
        tau = self.temperature(self.lam(batch.epoch))
        log_p_s = F.log_softmax(z_s.float() / tau, dim=1)
        log_p_t = F.log_softmax(z_t / tau, dim=1)
        kl = F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * (tau * tau).squeeze()
        return {"ce": self.ce_weight * F.cross_entropy(z_s, batch.targets), "kd": self.kd_weight * kl}


@kdbench.hookimpl
def register_methods(register):
    register(kdbench.Method(
        "ctkd", CTKD, summary="curriculum temperature KD: a learnable temperature, trained adversarially through "
                              "gradient reversal with a cosine curriculum of λ",
        paper="Li et al. AAAI 2023, arXiv:2211.16231", family="logits",
    ))
