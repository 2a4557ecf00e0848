"""``lskd``: KD with logit standardization (Sun, Ren, Li, Wang & Cao, "Logit
Standardization in Knowledge Distillation", CVPR 2024, arXiv:2403.01427).

The teacher's and the student's logits are z-scored per sample before the
softmax, so the student matches the teacher's logit *relations* rather than
their range: with Z(z) = (z - mean(z)) / (std(z) + 1e-7) (unbiased standard
deviation over the classes) and T the base temperature,

    L = ce_weight · CE(z_s, y) + kd_weight · T² · KL(softmax(Z(z_t)/T) || softmax(Z(z_s)/T))

(KL summed over classes, averaged over the batch). This is ``kd`` with
``standardize=true`` and the authors' weights, which are not alpha-mixed.

Defaults are the authors' CIFAR-100 recipe, sunshangquan/logit-standardization-KD
(commit f6e5aa5): ``tools/train.py --logit-stand --base-temp 2 --kd-weight 9``
with ``mdistiller/engine/cfg.py``'s CE weight 0.1 (README, "KD+Ours"). Their
logs name per-pair settings (``logs/KD/kd,TEACHER,STUDENT,BASE_TEMP,KD_WEIGHT.txt``):
base temperature 3 for VGG-13→VGG-8 and VGG-13/WRN-40-2→MobileNet-V2,
ResNet-32x4→WRN-16-2/WRN-40-2; 4 with KD weight 12 for ResNet-110→ResNet-20;
3 with KD weight 1 for ResNet-50→MobileNet-V2 (``cifar100-standard`` sets them
per pair). The reported numbers are the best epoch of 240 (their logs' ``best_acc``).
"""
from __future__ import annotations

import kdbench

from .kd import KD


class LSKD(KD):
    def __init__(self, T: float = 2.0, ce_weight: float = 0.1, kd_weight: float = 9.0):
        super().__init__(T=T, alpha=0.0, standardize=True)
        if ce_weight < 0 or kd_weight < 0:
            raise kdbench.ConfigError("lskd: ce_weight and kd_weight must be >= 0")
        self.ce_weight, self.kd_weight = float(ce_weight), float(kd_weight)


@kdbench.hookimpl
def register_methods(register):
    register(kdbench.Method(
        "lskd", LSKD, summary="KD on z-scored logits (logit standardization), base temperature 2, KD weight 9",
        paper="Sun et al. CVPR 2024, arXiv:2403.01427", family="logits",
    ))
