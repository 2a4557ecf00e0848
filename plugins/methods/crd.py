"""``crd`` and ``crd_kd``: contrastive representation distillation (Tian, Krishnan &
Isola 2020, "Contrastive Representation Distillation", ICLR 2020, arXiv:1910.10699).

The student learns a representation from which the teacher's representation of
the *same* image can be told apart from that of other images. Both
penultimate features (the pooled features the classifier sees) go through
trainable linear embedding heads to a 128-d L2-normalised space, s and t.
Each side keeps a memory bank of N×128 embeddings (N = training-set size),
updated after every step at the batch's sample indices with momentum 0.5:

    m_i ← normalise(0.5 · m_i + 0.5 · v_i)

For an anchor i, K negatives j are drawn and scored as

    h(i, j) = exp(<anchor_i, m_j> / τ) / Z,   Z = N · mean(exp(<·,·>/τ)) on the first batch

and the loss is the paper's NCE objective (its Eq. 18, noise distribution
uniform, P_n = 1/N), with the positive in column 0:

    L = -(1/B) Σ_i [ log h_i0 / (h_i0 + K/N) + Σ_j log (K/N) / (h_ij + K/N) ]

computed in both directions — student anchor against the teacher bank and
teacher anchor against the student bank — and summed. Gradients reach the
student and both heads; the banks are state (momentum-updated buffers), the
teacher is frozen.

Negatives follow RepDistiller's default (``mode='exact'``): the positive is the
sample itself and the K negatives are drawn from samples of *other classes*
(without replacement when enough exist, with replacement otherwise). When the
training labels are not available in memory, negatives are drawn uniformly
from every other sample. K = min(16384, N - 1).

Defaults (RepDistiller, the CRD benchmark recipe ``--distill crd -a 0 -b 0.8``):
feat_dim=128, nce_k=16384, nce_t=0.07, nce_m=0.5, weight 0.8, CE weight 1, no
KL. ``crd_kd`` is the paper's "CRD+KD" row (``-a 1 -b 0.8``): the same plus a
KD term T²·KL at T=4 with weight 1.

Memory: two float32 banks of N×128 (2 × 50k × 128 × 4 B = 51 MB for CIFAR-100,
1.3 GB for ImageNet-1k) plus a B×(K+1)×128 gather per bank each step. Where
that does not fit, use ``crd_queue`` (a documented variant, not CRD).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

import kdbench

EPS = 1e-7  # RepDistiller's constant in the NCE ratio
DENSE_SAMPLING_LIMIT = 1 << 26  # B×N candidate matrix above which negatives are drawn by rejection


class Embed(nn.Module):
    """Linear head to the contrastive space, L2-normalised."""

    def __init__(self, dim_in: int, dim_out: int = 128):
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.linear(x.flatten(1)), dim=1)


def nce_loss(h: torch.Tensor, n_data: int) -> torch.Tensor:
    """Eq. 18 with a uniform noise distribution: column 0 is the positive, the rest the K negatives."""
    k = h.shape[1] - 1
    noise = k / n_data
    log_pos = torch.log(h[:, 0] / (h[:, 0] + noise + EPS))
    log_neg = torch.log(noise / (h[:, 1:] + noise + EPS))
    return -(log_pos.sum() + log_neg.sum()) / h.shape[0]


class CRD(kdbench.Distiller):
    needs_pre_logits = True

    def __init__(
        self, weight: float = 0.8, ce_weight: float = 1.0, kd_weight: float = 0.0, T: float = 4.0,
        feat_dim: int = 128, nce_k: int = 16384, nce_t: float = 0.07, nce_m: float = 0.5, negatives: str = "exact",
    ):
        super().__init__()
        if negatives not in ("exact", "uniform"):
            raise kdbench.ConfigError(f"crd: negatives must be 'exact' (other classes) or 'uniform', got {negatives!r}")
        if nce_k < 1 or feat_dim < 1 or nce_t <= 0 or not 0 <= nce_m < 1 or T <= 0:
            raise kdbench.ConfigError("crd: nce_k and feat_dim must be >= 1, nce_t and T > 0, nce_m in [0, 1)")
        self.weight, self.ce_weight, self.kd_weight, self.T = float(weight), float(ce_weight), float(kd_weight), float(T)
        self.feat_dim, self.nce_k, self.nce_t, self.nce_m = int(feat_dim), int(nce_k), float(nce_t), float(nce_m)
        self.negatives = negatives

    def setup(self, info: kdbench.PairInfo) -> None:
        if info.num_train < 2:
            raise kdbench.NotApplicableError("crd needs at least 2 training samples")
        self.n_data = info.num_train
        self.k = min(self.nce_k, self.n_data - 1)
        self.embed_s = Embed(info.student_dim, self.feat_dim)
        self.embed_t = Embed(info.teacher_dim, self.feat_dim)
        stdv = 1.0 / math.sqrt(self.feat_dim / 3)
        self.register_buffer("memory_s", torch.rand(self.n_data, self.feat_dim) * 2 * stdv - stdv)
        self.register_buffer("memory_t", torch.rand(self.n_data, self.feat_dim) * 2 * stdv - stdv)
        self.register_buffer("z_s", torch.tensor(-1.0))  # normalisation constants, set on the first batch
        self.register_buffer("z_t", torch.tensor(-1.0))
        targets = info.train_targets if self.negatives == "exact" else None
        self.register_buffer("train_targets", None if targets is None else targets.clone().long())

    # ------------------------------------------------------------------ sampling
    def sample_indices(self, index: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """(B, K+1) sample indices: column 0 the positive (the sample itself), then K negatives."""
        b, n, k = index.numel(), self.n_data, self.k
        labels = self.train_targets

        def allowed(cand: torch.Tensor) -> torch.Tensor:
            ok = cand != index[:, None]
            if labels is not None:
                ok &= labels[cand] != target[:, None]
            return ok

        if b * n <= DENSE_SAMPLING_LIMIT:
            cand = torch.arange(n, device=index.device).expand(b, n)
            ok = allowed(cand)
            empty = ok.sum(1) == 0  # every other sample shares the class: fall back to any other sample
            if empty.any():
                ok[empty] = cand[empty] != index[empty, None]
            keys = torch.rand(b, n, device=index.device).masked_fill(~ok, -1.0)
            neg = keys.topk(k, dim=1).indices  # uniform without replacement among the allowed
            short = ok.sum(1) < k  # fewer allowed than K: draw with replacement (RepDistiller's rule)
            if short.any():
                neg[short] = torch.multinomial(ok[short].float(), k, replacement=True)
        else:  # huge N: uniform with replacement, redraw the disallowed ones
            neg = torch.randint(n, (b, k), device=index.device)
            for _ in range(100):
                bad = ~allowed(neg)
                if not bad.any():
                    break
                neg[bad] = torch.randint(n, (int(bad.sum()),), device=index.device)
        return torch.cat([index[:, None], neg], dim=1)

    # ------------------------------------------------------------------ the contrast
    def contrast(self, v_s: torch.Tensor, v_t: torch.Tensor, index: torch.Tensor, idx: torch.Tensor):
        """Scores of each anchor against the other side's bank rows ``idx``; then the bank update."""
        b = v_s.shape[0]
        w_t = self.memory_t[idx.view(-1)].view(b, -1, self.feat_dim)
        w_s = self.memory_s[idx.view(-1)].view(b, -1, self.feat_dim)
        out_s = torch.exp(torch.bmm(w_t, v_s.unsqueeze(2)).squeeze(2) / self.nce_t)  # student anchor
        out_t = torch.exp(torch.bmm(w_s, v_t.unsqueeze(2)).squeeze(2) / self.nce_t)  # teacher anchor
        if self.z_s < 0:
            self.z_s.fill_(out_s.mean().item() * self.n_data)
        if self.z_t < 0:
            self.z_t.fill_(out_t.mean().item() * self.n_data)
        out_s, out_t = out_s / self.z_s, out_t / self.z_t
        with torch.no_grad():
            for bank, v in ((self.memory_s, v_s), (self.memory_t, v_t)):
                bank.index_copy_(0, index, F.normalize(bank[index] * self.nce_m + v.detach() * (1 - self.nce_m), dim=1))
        return out_s, out_t

    def crd_loss(self, f_s: torch.Tensor, f_t: torch.Tensor, index: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        with torch.autocast(f_s.device.type, enabled=False):  # exp(1/0.07) overflows fp16
            v_s, v_t = self.embed_s(f_s.float()), self.embed_t(f_t.float())
            idx = self.sample_indices(index, target)
            out_s, out_t = self.contrast(v_s, v_t, index, idx)
            return nce_loss(out_s, self.n_data) + nce_loss(out_t, self.n_data)

    def loss_terms(self, batch: kdbench.Batch):
        terms = {"ce": self.ce_weight * F.cross_entropy(batch.student.logits, batch.targets)}
        if self.kd_weight:
            log_p_s = F.log_softmax(batch.student.logits / self.T, dim=1)
            log_p_t = F.log_softmax(batch.teacher.logits.float() / self.T, dim=1)
            kl = F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * self.T ** 2
            terms["kd"] = self.kd_weight * kl
        terms["crd"] = self.weight * self.crd_loss(batch.student.pre_logits, batch.teacher.pre_logits, batch.indices, batch.targets)
        return terms


def crd_kd(
    weight: float = 0.8, ce_weight: float = 1.0, kd_weight: float = 1.0, T: float = 4.0, feat_dim: int = 128,
    nce_k: int = 16384, nce_t: float = 0.07, nce_m: float = 0.5, negatives: str = "exact",
) -> CRD:
    """CRD+KD: the CRD paper's combination (RepDistiller ``--distill crd -a 1 -b 0.8``)."""
    return CRD(weight, ce_weight, kd_weight, T, feat_dim, nce_k, nce_t, nce_m, negatives)


@kdbench.hookimpl
def register_methods(register):
    register(kdbench.Method(
        "crd", CRD, family="contrastive", summary="contrastive representation distillation: NCE against N×128 momentum memory banks",
        paper="Tian et al. 2020, arXiv:1910.10699",
    ))
    register(kdbench.Method(
        "crd_kd", crd_kd, family="contrastive", summary="CRD + KD (the CRD paper's CRD+KD row: CE + KL(T=4) + 0.8·CRD)",
        paper="Tian et al. 2020, arXiv:1910.10699",
    ))
