"""``catkd``: class attention transfer (Guo, Yan, Li & Lin 2023, "Class Attention
Transfer Based Knowledge Distillation", CVPR 2023, arXiv:2304.12777).

A CNN whose classifier is a linear layer W on globally average-pooled
features is, equivalently, a 1×1 convolution with W followed by the pooling:
that convolution's output is the class activation maps (CAMs), one map per
class, M_k = Σ_c W_{k,c} f_c. CAT-KD transfers the teacher's CAMs: both
models' CAMs are average-pooled to a small resolution R×R and compared,

    M_S, M_T = pool_R(W_S · f_S), pool_R(W_T · f_T)    (f: the map each head pools)
    L = ce_weight · CE + beta · mean (φ(M_S) - φ(M_T))²

with φ the identity, or with ``normalize`` the L2 normalisation of each
class map over its R×R cells. Gradients reach the student's classifier
through its CAMs; the teacher's classifier (lent by the host for the step,
``needs_head``) is frozen. No extra modules.

Source of the defaults: the authors' code GzyAftermath/CAT-KD (built on
mdistiller), ``mdistiller/distillers/CAT_KD.py`` (``CAT_loss``: adaptive
average pooling, optional ``F.normalize`` over the spatial dims, MSE) and
``configs/cifar100/CAT_KD/res32x4_res8x4.yaml``: beta (``CAT_loss_weight``)
15, CAM resolution 2, no normalisation, CE weight 1 (CAT-KD, not "only CAT").
Other pairs' configs differ (set per pair in the ``cifar100-standard``
suite): ResNet-56→20 0.7, ResNet-110→32 1.8, WRN-40-2→16-2 12, WRN-40-2→40-1
1.5, VGG-13→8 4.5 (resolution 2, not normalised); VGG-13→MobileNetV2 15 and
ResNet-50→MobileNetV2 40 (resolution 2, normalised); ResNet-32×4→ShuffleV1/V2
600 and WRN-40-2→ShuffleV1 80 (resolution 4, normalised); ImageNet
ResNet-34→18: 0.5, resolution 4. The authors' teacher CAMs drop the
classifier's bias (their converted ``conv_test`` layer has none) and their
students are built with a bias-free 1×1-conv classifier; kdbench keeps the
student's timm classifier (with its bias) and computes both CAMs without the
bias, as theirs are. Refused: a model whose classifier is not one linear
layer on average-pooled features.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

import kdbench

from ._common import as_linear, linear_classifier


def class_activation_maps(final_map: torch.Tensor, classifier: torch.nn.Linear) -> torch.Tensor:
    """(N, K, H, W): the classifier's weights applied at every position of the map (no bias)."""
    return torch.einsum("nchw,kc->nkhw", final_map, classifier.weight.to(final_map.dtype))


class CATKD(kdbench.Distiller):
    needs_head = True

    def __init__(self, beta: float = 15.0, resolution: int = 2, normalize: bool = False, ce_weight: float = 1.0):
        super().__init__()
        if beta < 0 or resolution < 1:
            raise kdbench.ConfigError("catkd: beta must be >= 0 and resolution >= 1")
        self.beta, self.resolution, self.normalize, self.ce_weight = float(beta), int(resolution), bool(normalize), float(ce_weight)

    def check_pair(self, student, teacher):
        if teacher is None:
            raise kdbench.NotApplicableError("catkd needs a teacher")
        s_head = linear_classifier(student, "catkd", "student")
        t_head = linear_classifier(teacher, "catkd", "teacher")
        if s_head.out_features != t_head.out_features:
            raise kdbench.NotApplicableError(
                f"catkd compares class maps class by class: the student has {s_head.out_features} classes, "
                f"the teacher {t_head.out_features}")

    def cat_loss(self, cam_s: torch.Tensor, cam_t: torch.Tensor) -> torch.Tensor:
        cam_s = F.adaptive_avg_pool2d(cam_s, self.resolution)
        cam_t = F.adaptive_avg_pool2d(cam_t, self.resolution)
        if self.normalize:
            cam_s, cam_t = F.normalize(cam_s, dim=(2, 3)), F.normalize(cam_t, dim=(2, 3))
        return F.mse_loss(cam_s, cam_t)

    def loss_terms(self, batch: kdbench.Batch):
        cam_s = class_activation_maps(batch.student.final_map, as_linear(batch.student.classifier))
        with torch.no_grad():
            cam_t = class_activation_maps(batch.teacher.final_map.float(), as_linear(batch.teacher.classifier)).float()
        return {"ce": self.ce_weight * F.cross_entropy(batch.student.logits, batch.targets),
                "cat": self.beta * self.cat_loss(cam_s, cam_t)}


@kdbench.hookimpl
def register_methods(register):
    register(kdbench.Method(
        "catkd", CATKD, family="features",
        summary="class attention transfer: match pooled class activation maps (classifier weights on the final map)",
        paper="Guo et al. 2023, CVPR, arXiv:2304.12777",
    ))
