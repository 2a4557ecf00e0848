"""``nkd``: normalized knowledge distillation (Yang, Zeng, Yuan & Li, "From
Knowledge Distillation to Self-Knowledge Distillation: A Unified Approach with
Normalized Loss and Customized Soft Labels", ICCV 2023, arXiv:2303.13005).

NKD splits KD into the target class and the non-target classes and
*normalises* the non-target part: the non-target distributions are
renormalised among themselves before matching. With t the label,
S = softmax(z_s), T = softmax(z_t) (τ = 1), and Ŝ^τ, T̂^τ the softmax at τ over
the logits with the target class removed:

    L_target = − mean_i  T_i,t · log S_i,t
    L_non    = − γ · τ² · mean_i Σ_{c≠t} T̂^τ_i,c · log Ŝ^τ_i,c
    L        = CE(z_s, y) + L_target + L_non

(the teacher's target probability is a constant weight). This is the
authors' ``NKDLoss`` (yzd-v/cls_KD, commit 1e5d48f,
``mmcls/models/dis_losses/nkd.py``), added to the student's own
cross-entropy (weight 1) by ``mmcls/models/classifiers/distiller.py``.

Defaults are the authors' CIFAR-100 config,
``configs/distillers/cifar100/res34_distill_res18_cifar.py``: τ = 3,
γ = 3.5. ImageNet (``configs/distillers/imagenet/res34_distill_res18_img.py``):
τ = 1, γ = 1.5, trained with mmcls's ResNet-18 recipe (the config's base).
Hard labels only (the code's soft-label branch, for mixup-style targets, is
not reproduced: kdbench's targets are class indices).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

import kdbench


def drop_target(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The (N, C-1) logits of the non-target classes, in class order."""
    keep = torch.ones_like(logits, dtype=torch.bool).scatter_(1, targets.view(-1, 1), False)
    return logits[keep].view(logits.shape[0], -1)


class NKD(kdbench.Distiller):
    def __init__(self, temp: float = 3.0, gamma: float = 3.5, ce_weight: float = 1.0):
        super().__init__()
        if temp <= 0:
            raise kdbench.ConfigError(f"nkd: temp must be positive, got {temp}")
        self.temp, self.gamma, self.ce_weight = float(temp), float(gamma), float(ce_weight)

    def check_pair(self, student, teacher):
        if teacher is None:
            raise kdbench.NotApplicableError("nkd distils the teacher's logits: the pair needs a teacher (uskd is the teacher-free variant)")

    def loss_terms(self, batch: kdbench.Batch):
        z_s, z_t, y = batch.student.logits.float(), batch.teacher.logits.float(), batch.targets
        if z_s.shape[1] < 2:
            raise kdbench.ConfigError("nkd needs at least two classes (its second term is over the non-target classes)")
        log_s_target = F.log_softmax(z_s, dim=1).gather(1, y.view(-1, 1))
        t_target = F.softmax(z_t, dim=1).gather(1, y.view(-1, 1)).detach()
        target = -(t_target * log_s_target).mean()
        log_s_non = F.log_softmax(drop_target(z_s, y) / self.temp, dim=1)
        t_non = F.softmax(drop_target(z_t, y) / self.temp, dim=1)
        non = -self.gamma * self.temp ** 2 * (t_non * log_s_non).sum(dim=1).mean()
        return {
            "ce": self.ce_weight * F.cross_entropy(batch.student.logits, y),
            "nkd_target": target,
            "nkd_non_target": non,
        }


@kdbench.hookimpl
def register_methods(register):
    register(kdbench.Method(
        "nkd", NKD, summary="normalized KD: target-class term weighted by the teacher's probability plus the "
                            "normalised non-target distribution matched at τ (×γτ²)",
        paper="Yang et al. ICCV 2023, arXiv:2303.13005", family="logits",
    ))
