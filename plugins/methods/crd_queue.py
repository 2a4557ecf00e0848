"""``crd_queue``: a memory-light *variant* of contrastive representation distillation.

Not CRD. CRD (Tian et al. 2020, arXiv:1910.10699; see ``crd``) keeps two
memory banks of N×128 embeddings, one row per training sample; on large
datasets they do not fit (users of the reference code report running out of
memory on ImageNet-scale and larger sets). This variant keeps CRD's
embedding heads (linear to a 128-d L2-normalised space for student and
teacher, on the penultimate features) and its two directions, but replaces
the banks and the NCE estimator:

- negatives are the other samples of the batch plus a FIFO queue of the last
  ``queue_size`` embeddings of each side (MoCo-style, He et al. 2020),
  detached; queue entries of the anchor's own sample are masked out;
- the loss is InfoNCE (cross-entropy of the positive among 1 + negatives at
  temperature τ), student anchor against teacher keys plus teacher anchor
  against student keys. CRD's NCE with a fixed normaliser Z assumes negatives
  drawn uniformly from a bank over the whole dataset, which a queue is not.

Memory: 2 × queue_size × 128 floats (4 MB at the default) whatever N is.
In-batch keys carry gradients (both heads and the student learn from both
directions), as in symmetric InfoNCE.

Defaults: weight 0.8 and CE weight 1 (CRD's benchmark weights), feat_dim=128,
nce_t=0.07 (CRD's), queue_size=4096 (capped at N). These are kdbench's
choices for the variant, not a published recipe: compare it with ``crd``
before trusting it on a new dataset.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

import kdbench
from kdbench_plugins.methods.crd import Embed  # CRD's embedding head, shared


class CRDQueue(kdbench.Distiller):
    needs_pre_logits = True

    def __init__(self, weight: float = 0.8, ce_weight: float = 1.0, feat_dim: int = 128, queue_size: int = 4096,
                 nce_t: float = 0.07):
        super().__init__()
        if queue_size < 0 or feat_dim < 1 or nce_t <= 0:
            raise kdbench.ConfigError("crd_queue: queue_size >= 0, feat_dim >= 1 and nce_t > 0 are required")
        self.weight, self.ce_weight = float(weight), float(ce_weight)
        self.feat_dim, self.queue_size, self.nce_t = int(feat_dim), int(queue_size), float(nce_t)

    def setup(self, info: kdbench.PairInfo) -> None:
        self.embed_s = Embed(info.student_dim, self.feat_dim)
        self.embed_t = Embed(info.teacher_dim, self.feat_dim)
        q = min(self.queue_size, info.num_train)
        self.register_buffer("queue_s", torch.zeros(q, self.feat_dim))
        self.register_buffer("queue_t", torch.zeros(q, self.feat_dim))
        self.register_buffer("queue_index", torch.full((q,), -1, dtype=torch.long))  # -1: empty slot
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    def info_nce(self, anchor: torch.Tensor, keys: torch.Tensor, queue: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of key i among [batch keys, queue] for anchor i."""
        logits = torch.cat([anchor @ keys.t(), anchor @ queue.t()], dim=1) / self.nce_t
        b = anchor.shape[0]
        stale = (self.queue_index[None, :] == index[:, None]) | (self.queue_index[None, :] < 0)
        mask = torch.cat([torch.zeros(b, b, dtype=torch.bool, device=anchor.device), stale], dim=1)
        logits = logits.masked_fill(mask, float("-inf"))
        return F.cross_entropy(logits, torch.arange(b, device=anchor.device))

    @torch.no_grad()
    def enqueue(self, v_s: torch.Tensor, v_t: torch.Tensor, index: torch.Tensor) -> None:
        q = self.queue_index.numel()
        if q == 0:
            return
        slots = (self.queue_ptr + torch.arange(v_s.shape[0], device=v_s.device)) % q
        self.queue_s[slots], self.queue_t[slots], self.queue_index[slots] = v_s.detach(), v_t.detach(), index
        self.queue_ptr.copy_((self.queue_ptr + v_s.shape[0]) % q)

    def loss_terms(self, batch: kdbench.Batch):
        with torch.autocast(batch.images.device.type, enabled=False):
            v_s = self.embed_s(batch.student.pre_logits.float())
            v_t = self.embed_t(batch.teacher.pre_logits.float())
            # snapshots: the queues are updated in place below, before backward
            queue_s, queue_t = self.queue_s.clone(), self.queue_t.clone()
            loss = (self.info_nce(v_s, v_t, queue_t, batch.indices)
                    + self.info_nce(v_t, v_s, queue_s, batch.indices))
        self.enqueue(v_s, v_t, batch.indices)
        return {"ce": self.ce_weight * F.cross_entropy(batch.student.logits, batch.targets), "crd_queue": self.weight * loss}


@kdbench.hookimpl
def register_methods(register):
    register(kdbench.Method(
        "crd_queue", CRDQueue, family="contrastive",
        summary="memory-light CRD variant (not CRD): InfoNCE with in-batch + FIFO-queue negatives, no N×128 banks",
        paper="variant of Tian et al. 2020, arXiv:1910.10699 (queue as in He et al. 2020, arXiv:1911.05722)",
    ))
