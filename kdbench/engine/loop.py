"""The one training loop. Methods supply loss terms; everything else is here.

:func:`train` is the loop. The pieces it is made of are public so that
:mod:`kdbench.testing` checks methods with the loop's own steps:
:func:`setup_distiller` (the probe pass, :class:`PairInfo`, ``setup``),
:func:`trainable_params`, :func:`forward_terms` (one forward pass, the loss
terms) and :func:`optimizer_step` (backward, clipping, the update).
"""
from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.data import DataLoader

from kdbench.core.api import Batch, DataBundle, Distiller, Outputs, PairInfo
from kdbench.core.config import Recipe
from kdbench.engine.evaluate import evaluate
from kdbench.engine.models import forward_with_taps, tap_options
from kdbench.engine.rules import TeacherGuard


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or Inf; the cell stops at that step."""


@dataclass
class EpochResult:
    epoch: int  # 1-based, as logged (MLflow step)
    train_loss: float
    train_top1: float
    test_top1: float
    test_top5: float
    test_loss: float
    lr: float
    seconds: float
    terms: dict[str, float] = field(default_factory=dict)
    phase: str = "train"  # "pretrain": an epoch of the distiller's pre-training phase (no evaluation: test_* are NaN)


@dataclass
class TrainResult:
    history: list[EpochResult]
    seconds: float
    pretrain: list[EpochResult] = field(default_factory=list)  # the pre-training phase's epochs, if any

    @property
    def last(self) -> EpochResult:
        return self.history[-1]

    @property
    def best(self) -> EpochResult:
        return max(self.history, key=lambda r: (r.test_top1, -r.epoch))


SYNC_EVERY = 50  # on an accelerator, the host reads the step's figures (NaN check, progress) this often


class _Tally:
    """An epoch's loss, loss terms and accuracy, summed where the training runs and read on the host only
    when asked: a per-step ``.item()`` would make the host wait for an accelerator at every step. The
    first step with a non-finite loss is remembered on the device (its index and values) until read."""

    def __init__(self, device: torch.device, check_every: int):
        dtype = torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64
        self.check_every, self.seen = check_every, 0
        self.loss = torch.zeros((), device=device, dtype=dtype)
        self.correct = torch.zeros((), device=device, dtype=torch.int64)
        self.terms: dict[str, torch.Tensor] = {}
        self.bad_step = torch.full((), -1, device=device, dtype=torch.int64)
        self.bad_values: torch.Tensor | None = None

    def add(self, loss: torch.Tensor, terms: dict[str, torch.Tensor], logits: torch.Tensor,
            targets: torch.Tensor, step: int) -> None:
        n = targets.size(0)
        self.seen += n
        loss = loss.detach()
        self.loss += loss.to(self.loss.dtype) * n
        for k, v in terms.items():
            self.terms[k] = self.terms.get(k, 0.0) + v.detach().to(self.loss.dtype) * n
        self.correct += (logits.detach().argmax(1) == targets).sum()
        values = torch.stack([loss.float()] + [v.detach().float() for v in terms.values()])
        first = ~torch.isfinite(loss) & (self.bad_step < 0)
        self.bad_step = torch.where(first, step, self.bad_step)
        self.bad_values = values if self.bad_values is None else torch.where(first, values, self.bad_values)

    def due(self, step: int) -> bool:
        return step % self.check_every == 0

    def raise_if_nonfinite(self, epoch: int, pretrain: bool) -> None:
        step = int(self.bad_step)
        if step < 0:
            return
        loss, *parts = self.bad_values.tolist()
        names = ", ".join(f"{k}={v:.4g}" for k, v in zip(self.terms, parts))
        where = "pre-training " if pretrain else ""  # the main phase keeps the message people grep for
        raise NonFiniteLossError(f"{where}loss is {loss} at epoch {epoch + 1}, step {step} ({names})")

    def read(self) -> tuple[float, float, dict[str, float]]:
        """(mean loss, top-1 % on the training batches, mean of each term): the epoch's one host read."""
        seen = max(1, self.seen)
        return (float(self.loss) / seen, 100.0 * int(self.correct) / seen,
                {k: float(v) / seen for k, v in self.terms.items()})


def make_optimizer(params: list[nn.Parameter], recipe: Recipe, lr: float | None = None) -> torch.optim.Optimizer:
    lr = recipe.lr if lr is None else lr
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=lr, momentum=recipe.momentum, nesterov=recipe.nesterov and recipe.momentum > 0,
            weight_decay=recipe.weight_decay,
        )
    return torch.optim.AdamW(params, lr=lr, weight_decay=recipe.weight_decay)


def lr_factor(step: int, steps_per_epoch: int, recipe: Recipe) -> float:
    """Multiplier of the base lr at an optimisation step (per-step schedule)."""
    warmup = recipe.warmup_epochs * steps_per_epoch
    if step < warmup:
        return (step + 1) / warmup
    if recipe.schedule == "constant":
        return 1.0
    if recipe.schedule == "step":
        epoch = step // steps_per_epoch
        return recipe.gamma ** sum(epoch >= m for m in recipe.milestones)
    total = recipe.epochs * steps_per_epoch
    progress = (step - warmup) / max(1.0, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _autocast(device: torch.device, recipe: Recipe) -> tuple[Callable[[], contextlib.AbstractContextManager], torch.amp.GradScaler | None]:
    if device.type != "cuda" or not recipe.amp:
        return contextlib.nullcontext, None
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    return (lambda: torch.autocast("cuda", dtype=dtype)), scaler


def train_targets(dataset) -> torch.Tensor | None:
    """Every training label, when the dataset keeps them in memory (``targets``/``labels``), else None."""
    for ds in (dataset, getattr(dataset, "base", None)):
        for attr in ("targets", "labels"):
            values = getattr(ds, attr, None) if ds is not None else None
            if values is not None and len(values) == len(dataset):
                return torch.as_tensor(values, dtype=torch.long)
    return None


def _split_views(images) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """A batch of one view, or of several (a train split yielding ``[view0, view1, ...]``): (first, others)."""
    if isinstance(images, (list, tuple)):
        return images[0], list(images[1:])
    return images, []


def _views(others, student, teacher, distiller, targets, indices, epoch, step, device, memory_format) -> list[Batch]:
    """``Batch.views`` for a distiller that ``uses_views``: the models' outputs on the further views."""
    if not distiller.uses_views:
        return []
    views = []
    for images in others:
        images = images.to(device, non_blocking=True, memory_format=memory_format)
        s_out = forward_with_taps(student, images, distiller.student_stages, **tap_options(distiller))
        t_out = None
        if teacher is not None and distiller.needs_teacher:
            with torch.no_grad():
                t_out = forward_with_taps(teacher, images, distiller.teacher_stages, **tap_options(distiller, teacher=True))
        views.append(Batch(images, targets, indices, s_out, t_out, epoch, step))
    return views


def setup_distiller(distiller: Distiller, student: nn.Module, teacher: nn.Module | None, data: DataBundle,
                    device: torch.device) -> PairInfo:
    """A probe pass tells the method the feature shapes for its extra modules: ``setup``, then onto ``device``."""
    probe, probe_views = _split_views(next(iter(DataLoader(data.train, batch_size=2)))[0])
    probe = probe.to(device)
    with torch.no_grad():
        was_training = student.training
        student.eval()
        s_probe = forward_with_taps(student, probe, distiller.student_stages, **tap_options(distiller))
        t_probe = (forward_with_taps(teacher, probe, distiller.teacher_stages, **tap_options(distiller, teacher=True))
                   if teacher is not None else None)
        student.train(was_training)
    info = PairInfo(
        num_classes=data.num_classes, num_train=len(data.train),
        student_shapes=[f.shape for f in s_probe.features],
        teacher_shapes=[f.shape for f in t_probe.features] if t_probe else [],
        student_dim=s_probe.pre_logits.shape[1] if s_probe.pre_logits is not None else None,
        teacher_dim=t_probe.pre_logits.shape[1] if t_probe and t_probe.pre_logits is not None else None,
        train_targets=train_targets(data.train), num_views=1 + len(probe_views),
    )
    distiller.setup(info)
    distiller.to(device)
    return info


def trainable_params(student: nn.Module, distiller: Distiller, pretrain: bool = False) -> list[nn.Parameter]:
    """What the optimiser updates: the student's parameters (unless it sits out the pre-training) and the method's."""
    student_learns = not pretrain or distiller.pretrain_student
    return ([p for p in student.parameters() if p.requires_grad] if student_learns else []) + [
        p for p in distiller.parameters() if p.requires_grad]


def forward_terms(
    student: nn.Module, teacher: nn.Module | None, distiller: Distiller, images, targets: torch.Tensor,
    indices: torch.Tensor, epoch: int, step: int, *, pretrain: bool = False,
    device: torch.device = torch.device("cpu"), memory_format: torch.memory_format = torch.contiguous_format,
) -> tuple[Outputs, dict[str, torch.Tensor]]:
    """One forward pass of a training batch (``images``: a tensor, or a list of views): the student's outputs
    and the distiller's named loss terms (``pretrain_terms`` in the pre-training phase). The teacher runs
    without gradients."""
    images, others = _split_views(images)
    images = images.to(device, non_blocking=True, memory_format=memory_format)
    with torch.set_grad_enabled(not pretrain or distiller.pretrain_student):
        s_out = forward_with_taps(student, images, distiller.student_stages, **tap_options(distiller))
        views = _views(others, student, teacher, distiller, targets, indices, epoch, step, device, memory_format)
    t_out = None
    if teacher is not None and distiller.needs_teacher:
        with torch.no_grad():
            t_out = forward_with_taps(teacher, images, distiller.teacher_stages, **tap_options(distiller, teacher=True))
    loss_fn = distiller.pretrain_terms if pretrain else distiller.loss_terms
    return s_out, loss_fn(Batch(images, targets, indices, s_out, t_out, epoch, step, views))


def optimizer_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, params: list[nn.Parameter],
                   grad_clip: float | None = None, scaler: torch.amp.GradScaler | None = None) -> None:
    """Backward from ``loss`` (through the AMP ``scaler`` if any), clip the gradients' norm, update."""
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
    else:
        loss.backward()
    if grad_clip is not None:
        nn.utils.clip_grad_norm_(params, grad_clip)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()


def train(
    student: nn.Module,
    distiller: Distiller,
    teacher: nn.Module | None,
    data: DataBundle,
    recipe: Recipe,
    device: torch.device,
    generator: torch.Generator,
    on_step: Callable[[int, float], None] | None = None,
    on_epoch: Callable[[EpochResult], None] | None = None,
    name: str | None = None,
) -> TrainResult:
    """Train ``student`` with ``distiller``'s loss terms; evaluate after every epoch.

    The teacher rules (:mod:`kdbench.engine.rules`) are enforced: ``TeacherRuleError`` names the method
    (``name``, else the distiller's class) and what it did.
    """
    train_loader = DataLoader(
        data.train, batch_size=recipe.batch_size, shuffle=True, drop_last=True,
        generator=generator, num_workers=recipe.workers, pin_memory=device.type == "cuda",
    )
    test_loader = DataLoader(data.test, batch_size=recipe.eval_batch_size, shuffle=False, num_workers=recipe.workers)
    memory_format = torch.channels_last if device.type == "cuda" and recipe.channels_last else torch.contiguous_format
    student.to(device, memory_format=memory_format)
    if teacher is not None:
        teacher.to(device, memory_format=memory_format).eval().requires_grad_(False)

    setup_distiller(distiller, student, teacher, data, device)
    guard = TeacherGuard(name or type(distiller).__name__, distiller, student, teacher)

    steps_per_epoch = len(train_loader)
    check_every = 1 if device.type == "cpu" else SYNC_EVERY
    autocast, scaler = _autocast(device, recipe)
    history: list[EpochResult] = []
    pretrain: list[EpochResult] = []
    start = time.perf_counter()
    # Two phases through the same loop: the distiller's pre-training (when it has one: its own loss,
    # its own modules and, if it says so, the student; constant lr, no evaluation), then training.
    phases = ([("pretrain", distiller.pretrain_epochs)] if distiller.pretrain_epochs > 0 else []) + [("train", recipe.epochs)]
    for phase, epochs in phases:
        pre = phase == "pretrain"
        if not pre:
            distiller.end_pretrain()
        student_learns = not pre or distiller.pretrain_student
        params = trainable_params(student, distiller, pretrain=pre)
        optimizer = make_optimizer(params, recipe, lr=distiller.pretrain_lr if pre else None)
        schedule = (lambda s: 1.0) if pre else (lambda s: lr_factor(s, steps_per_epoch, recipe))
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        step = 0
        for epoch in range(epochs):
            t0 = time.perf_counter()
            student.train(student_learns)
            distiller.train()
            tally = _Tally(device, check_every)
            lr = optimizer.param_groups[0]["lr"]
            for images, targets, indices in train_loader:
                targets, indices = targets.to(device, non_blocking=True), indices.to(device, non_blocking=True)
                with autocast():
                    s_out, terms = forward_terms(student, teacher, distiller, images, targets, indices, epoch, step,
                                                 pretrain=pre, device=device, memory_format=memory_format)
                    loss = sum(terms.values())
                tally.add(loss, terms, s_out.logits, targets, step)
                if tally.due(step):  # every step on a CPU (before the update); every few on an accelerator
                    tally.raise_if_nonfinite(epoch, pre)
                lr = optimizer.param_groups[0]["lr"]
                optimizer_step(loss, optimizer, params, recipe.grad_clip, scaler)
                if step == 0:  # the teacher is still frozen, in eval mode and unchanged after each phase's first step
                    guard.after_step()
                scheduler.step()
                step += 1
                if on_step is not None and not pre and (step % check_every == 0 or step % steps_per_epoch == 0):
                    on_step(step, loss.item())
            tally.raise_if_nonfinite(epoch, pre)
            train_loss, train_top1, term_means = tally.read()
            test = None if pre else evaluate(student, test_loader, device, autocast, memory_format)
            result = EpochResult(
                epoch=epoch + 1, train_loss=train_loss, train_top1=train_top1,
                test_top1=test.top1 if test else math.nan, test_top5=test.top5 if test else math.nan,
                test_loss=test.loss if test else math.nan, lr=lr, seconds=time.perf_counter() - t0,
                terms=term_means, phase=phase,
            )
            (pretrain if pre else history).append(result)
            if on_epoch is not None:
                on_epoch(result)
    return TrainResult(history, time.perf_counter() - start, pretrain)
