"""``kdsvd``: self-supervised knowledge distillation using singular value decomposition
(Lee, Kim & Song 2018, "Self-supervised Knowledge Distillation Using Singular Value
Decomposition", ECCV 2018, arXiv:1807.06819).

Each stage map (C×H×W) is read as an HW×C matrix and compressed by a
truncated SVD: its first right singular vectors v_k (C-dimensional) carry the
map's dominant channel patterns, scaled by the (normalised) singular values.
Singular vectors have arbitrary signs and the student's come in a different
order, so the student keeps k+3 vectors and, for each teacher vector, the one
with the largest |cosine|, signed to agree. The knowledge is the relation
between consecutive stages, a Gaussian RBF between every pair of channel
entries of their vectors,

    ṽ = v · σ_T  (student and teacher vectors both scaled by the teacher's normalised singular values)
    R^(i)_{c,c',k} = exp(-(ṽ^(i)_{c,k} - ṽ^(i-1)_{c',k})² / 8)
    L = ce_weight · CE + beta · Σ_{i>=1} Σ_{c,c',k} (R_S^(i) - R_T^(i))² / N

(non-finite values from degenerate decompositions are zeroed; a student map
is perturbed by a fixed pattern of relative size 1e-6 before its SVD, so that
repeated singular values, e.g. of dead channels, do not turn the gradient into
NaN). The sign of a
singular vector is arbitrary, and the teacher's relations depend on it: kdbench
fixes it (the entry of largest magnitude is positive) where the authors' code
keeps whatever the SVD routine returns, so that the loss does not change with
the device or the library. Comparing
channel entries needs the same channels in both networks at every stage:
other pairs are refused, unless ``connector=true``, a kdbench adapter that is
not part of the method: a trainable 1×1 convolution (no bias) maps each
student stage to the teacher's channels before its SVD.

Source of the defaults: RepDistiller (HobbitLong/RepDistiller)
``distiller_zoo/KDSVD.py``, a port of the authors' TensorFlow code
(sseung0703/SSKD_SVD): k=1, student k+3 vectors, RBF width 8, every stage
after the stem (``feat[1:-1]``); kdbench follows its HW×C reading of the map
(the authors'; mdistiller's port reshapes to (C·H)×W instead);
mdistiller ``configs/cifar100/kdsvd.yaml``/``engine/cfg.py``: beta
(``FEAT_WEIGHT``) 1, CE weight 1. Not in the CRD table; no CIFAR-100 numbers
for these pairs are published by the authors.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import kdbench

from ._common import deepest_common_stages, require_spatial_pair, require_stages_resolved, stage_channels


def _finite(x: torch.Tensor) -> torch.Tensor:
    return torch.where(torch.isfinite(x), x, torch.zeros_like(x))


_PATTERNS: dict[tuple, torch.Tensor] = {}
JITTER = 1e-6  # relative size of the fixed perturbation that keeps the SVD's gradient finite


def _pattern(rows: int, cols: int, device: torch.device) -> torch.Tensor:
    key = (rows, cols, str(device))
    if key not in _PATTERNS:
        g = torch.Generator().manual_seed(0)
        _PATTERNS[key] = torch.randn(rows, cols, generator=g).to(device)
    return _PATTERNS[key]


def truncated_svd(feat: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(σ, V) of the HW×C matrix of each map, the first ``n``: σ (N, n) and V (N, C, n) L2-normalised."""
    b, c, h, w = feat.shape
    x = feat.reshape(b, c, h * w).transpose(1, 2).float()
    if x.requires_grad:
        # repeated (e.g. zero: dead channels, a rank-limited map) singular values make the SVD's backward
        # 0·inf = NaN even for the vectors not kept; a fixed perturbation of relative size 1e-6 separates them
        scale = x.detach().abs().amax(dim=(1, 2), keepdim=True).clamp_min(1e-12)
        x = x + JITTER * scale * _pattern(h * w, c, x.device)
    _, s, vh = torch.linalg.svd(x, full_matrices=False)
    s, v = _finite(s), _finite(vh.transpose(1, 2))[:, :, :n]
    # a singular vector's sign is arbitrary (it differs between SVD routines and devices): make the entry of
    # largest magnitude positive, so that the teacher's relations, hence the loss, are well defined
    top = v.abs().argmax(dim=1, keepdim=True)
    v = v * torch.where(torch.gather(v, 1, top) < 0, -1.0, 1.0)
    return F.normalize(s[:, :n], dim=1), F.normalize(v, dim=1)


def align_singular_vectors(v_s: torch.Tensor, v_t: torch.Tensor) -> torch.Tensor:
    """For each teacher vector, the student vector of largest |cosine|, with the sign of that cosine."""
    cosine = torch.matmul(v_s.transpose(1, 2), v_t)  # (N, n_s, n_t)
    best = cosine.abs().max(dim=1, keepdim=True).values
    mask = torch.where(cosine.abs() == best, torch.sign(cosine), torch.zeros_like(cosine))
    return torch.matmul(v_s, mask)


def kdsvd_loss(g_s: list[torch.Tensor], g_t: list[torch.Tensor], k: int) -> torch.Tensor:
    total, prev_s, prev_t = 0.0, None, None
    for f_s, f_t in zip(g_s, g_t):
        s_t, v_t = truncated_svd(f_t, k)
        _, v_s = truncated_svd(f_s, k + 3)
        v_s = align_singular_vectors(v_s, v_t)
        v_t, v_s = v_t * s_t.unsqueeze(1), v_s * s_t.unsqueeze(1)
        if prev_s is not None:
            rbf_s = torch.exp(-(v_s.unsqueeze(2) - prev_s.unsqueeze(1)).pow(2) / 8)
            rbf_t = torch.exp(-(v_t.unsqueeze(2) - prev_t.unsqueeze(1)).pow(2) / 8)
            total = total + _finite((rbf_s - rbf_t.detach()).pow(2)).sum()
        prev_s, prev_t = v_s, v_t
    return total / g_s[0].shape[0]


class KDSVD(kdbench.Distiller):
    def __init__(self, beta: float = 1.0, k: int = 1, ce_weight: float = 1.0, connector: bool = False):
        super().__init__()
        if beta < 0 or k < 1:
            raise kdbench.ConfigError("kdsvd: beta must be >= 0 and k >= 1")
        self.beta, self.k, self.ce_weight, self.connector = float(beta), int(k), float(ce_weight), bool(connector)
        self.student_stages, self.teacher_stages = (), ()

    def check_pair(self, student, teacher):
        require_spatial_pair("kdsvd", student, teacher)
        s_idx, t_idx = deepest_common_stages(student, teacher, "kdsvd")
        if len(s_idx) < 2:
            raise kdbench.NotApplicableError("kdsvd relates consecutive stages: it needs two stages after the stem")
        c_s, c_t = stage_channels(student, "kdsvd"), stage_channels(teacher, "kdsvd")
        if [c_s[i] for i in s_idx] != [c_t[i] for i in t_idx] and not self.connector:
            raise kdbench.NotApplicableError(
                f"kdsvd compares singular vectors channel by channel and needs the same channels at every stage; the "
                f"student's are {[c_s[i] for i in s_idx]}, the teacher's {[c_t[i] for i in t_idx]} "
                "(kdsvd(connector=true) adapts the channels: a kdbench extension)")
        self.student_stages, self.teacher_stages = s_idx, t_idx

    def setup(self, info: kdbench.PairInfo) -> None:
        require_stages_resolved("kdsvd", self.student_stages)
        if self.connector:
            self.connectors = nn.ModuleList(
                nn.Identity() if s[1] == t[1] else nn.Conv2d(s[1], t[1], 1, bias=False)
                for s, t in zip(info.student_shapes, info.teacher_shapes))

    def loss_terms(self, batch: kdbench.Batch):
        g_s = list(batch.student.features)
        if self.connector:
            g_s = [conn(f) for conn, f in zip(self.connectors, g_s)]
        with torch.autocast(batch.images.device.type, enabled=False):  # the SVD needs float32
            loss = kdsvd_loss([f.float() for f in g_s], [f.float() for f in batch.teacher.features], self.k)
        return {"ce": self.ce_weight * F.cross_entropy(batch.student.logits, batch.targets), "kdsvd": self.beta * loss}


@kdbench.hookimpl
def register_methods(register):
    register(kdbench.Method(
        "kdsvd", KDSVD, family="relations", taps=True,
        summary="SVD distillation: RBF relations between consecutive stages' leading singular vectors",
        paper="Lee et al. 2018, ECCV, arXiv:1807.06819",
    ))
