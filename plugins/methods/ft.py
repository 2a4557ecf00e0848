"""``ft``: factor transfer (Kim, Park & Kwak 2018, "Paraphrasing Complex Network: Network
Compression via Factor Transfer", NeurIPS 2018, arXiv:1802.04977).

Two phases. First a *paraphraser* P (a convolutional auto-encoder on the
teacher's last stage map, bottleneck of ``rate`` × the teacher's channels) is
trained alone to reconstruct that map; then it is frozen, its encoder gives
the teacher's *factor* F_T = enc(t), and the student learns, through a
*translator* (three convolutions on its last stage map) producing F_S, to
match it:

    pre-training:  L_rec = | P(t) - t |                  (mean absolute error; kdbench's pre-training phase)
    training:      L     = ce_weight · CE + beta · mean | F_S/||F_S||₂ - F_T/||F_T||₂ |

with the factors flattened per image before the L2 normalisation (the
paper's Eq. 3 with p = 1). Paraphraser and translator are extra modules
(counted in ``extra_params``, never deployed); the student is not trained
during pre-training (it runs in eval mode, unused). When the two maps differ
in size, the larger factor is average-pooled to the smaller (RepDistiller).

Source of the defaults (``variant=authors``): the authors' code,
Jangho-Kim/Factor-Transfer-pytorch: ``Models/FeatureProjection.py``
(paraphraser and translator: 3×3 convolutions / transposed convolutions with
bias, LeakyReLU 0.1, no BatchNorm), ``train_Paraphraser.py`` (L1
reconstruction, ``--epoch 5`` run as epochs 0..5, i.e. 6 epochs, at the
recipe's lr) and ``train_student.py`` (``--beta 500``, ``--rate 0.5``, L1
between the flattened, L2-normalised factors, plus CE). Their public recipe
is the CIFAR-10 one; they publish no CIFAR-100 script.

``variant=repdistiller`` is the CRD benchmark's reimplementation
(HobbitLong/RepDistiller ``distiller_zoo/FT.py``, ``models/util.py``,
``helper/pretrain.py``, ``scripts/run_cifar_distill.sh``), which produced the
CIFAR-100 numbers of the ``cifar100-standard`` suite: the factor is the
L2-normalised channel mean of the squared factor map (an attention-transfer
style map, not the paper's flattened factor), beta 200, BatchNorm in the
translator, MSE reconstruction, 30 pre-training epochs at lr 0.01
(RepDistiller uses 0.01 for ResNet/WRN students and the student's own lr
otherwise: set ``pretrain_lr`` per pair). Options left at None take the
variant's value. Refused: a CNN/ViT mix.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import kdbench

from ._common import pool_to_common_size, require_spatial_pair

VARIANTS = {
    # variant: beta, pre-training epochs, pre-training lr (None: the recipe's), factor, translator BN, reconstruction
    "authors": (500.0, 6, None, "flat", False, "l1"),
    "repdistiller": (200.0, 30, 0.01, "spatial", True, "mse"),
}


def _conv_stack(channels: list[int], transposed: bool, bn: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    conv = nn.ConvTranspose2d if transposed else nn.Conv2d
    for c_in, c_out in zip(channels[:-1], channels[1:]):
        layers.append(conv(c_in, c_out, 3, 1, 1))
        if bn:
            layers.append(nn.BatchNorm2d(c_out))
        layers.append(nn.LeakyReLU(0.1))
    return nn.Sequential(*layers)


class Paraphraser(nn.Module):
    """Auto-encoder on the teacher's map: C → C → kC → kC (factor) → kC → C → C."""

    def __init__(self, channels: int, factor_channels: int):
        super().__init__()
        self.encoder = _conv_stack([channels, channels, factor_channels, factor_channels], False, False)
        self.decoder = _conv_stack([factor_channels, factor_channels, channels, channels], True, False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


def factor_vector(factor: torch.Tensor, kind: str) -> torch.Tensor:
    """The normalised factor compared by the FT loss: flattened (the paper) or RepDistiller's channel-mean map."""
    v = factor.flatten(1) if kind == "flat" else factor.pow(2).mean(1).flatten(1)
    return F.normalize(v, dim=1)


class FT(kdbench.Distiller):
    student_stages = (-1,)
    teacher_stages = (-1,)

    def __init__(self, variant: str = "authors", beta: float | None = None, rate: float = 0.5,
                 pretrain_epochs: int | None = None, pretrain_lr: float | None = None, ce_weight: float = 1.0):
        super().__init__()
        if variant not in VARIANTS:
            raise kdbench.ConfigError(f"ft: variant must be one of {sorted(VARIANTS)}, got {variant!r}")
        d_beta, d_epochs, d_lr, self.factor, self.translator_bn, self.reconstruction = VARIANTS[variant]
        self.variant = variant
        self.beta = float(d_beta if beta is None else beta)
        self.pretrain_epochs = int(d_epochs if pretrain_epochs is None else pretrain_epochs)
        self.pretrain_lr = d_lr if pretrain_lr is None else float(pretrain_lr)
        if self.beta < 0 or not 0 < rate <= 4 or self.pretrain_epochs < 0:
            raise kdbench.ConfigError("ft: beta must be >= 0, rate in (0, 4], pretrain_epochs >= 0")
        self.rate, self.ce_weight = float(rate), float(ce_weight)

    def check_pair(self, student, teacher):
        require_spatial_pair("ft", student, teacher)

    def setup(self, info: kdbench.PairInfo) -> None:
        (s_shape,), (t_shape,) = info.student_shapes, info.teacher_shapes
        if len(s_shape) != 4 or len(t_shape) != 4:
            raise kdbench.NotApplicableError(f"ft needs NCHW maps, got {tuple(s_shape)} and {tuple(t_shape)}")
        c_s, c_t = s_shape[1], t_shape[1]
        k = max(1, int(round(c_t * self.rate)))
        self.paraphraser = Paraphraser(c_t, k)
        self.translator = _conv_stack([c_s, c_s, k, k], False, self.translator_bn)

    def pretrain_terms(self, batch: kdbench.Batch):
        t = batch.teacher.features[0].float()
        rec = self.paraphraser(t)
        loss = F.l1_loss(rec, t) if self.reconstruction == "l1" else F.mse_loss(rec, t)
        return {"paraphraser": loss}

    def end_pretrain(self) -> None:
        self.paraphraser.requires_grad_(False)  # the teacher's factor extractor is fixed from now on

    def ft_loss(self, f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
        factor_s = self.translator(f_s)
        with torch.no_grad():
            factor_t = self.paraphraser.encoder(f_t)
        factor_s, factor_t = pool_to_common_size(factor_s, factor_t)
        return F.l1_loss(factor_vector(factor_s, self.factor), factor_vector(factor_t, self.factor))

    def loss_terms(self, batch: kdbench.Batch):
        ft = self.ft_loss(batch.student.features[0], batch.teacher.features[0].float())
        return {"ce": self.ce_weight * F.cross_entropy(batch.student.logits, batch.targets), "ft": self.beta * ft}


@kdbench.hookimpl
def register_methods(register):
    register(kdbench.Method(
        "ft", FT, family="features", taps=True,
        summary="factor transfer: paraphraser pre-trained on the teacher's last stage, then translator + L1 on factors",
        paper="Kim et al. 2018, NeurIPS, arXiv:1802.04977",
    ))
