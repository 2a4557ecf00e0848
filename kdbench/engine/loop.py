"""The one training loop. Methods supply loss terms; everything else is here."""
from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.data import DataLoader

from kdbench.core.api import Batch, DataBundle, Distiller, PairInfo
from kdbench.core.config import Recipe
from kdbench.engine.evaluate import evaluate
from kdbench.engine.models import forward_with_taps


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


@dataclass
class TrainResult:
    history: list[EpochResult]
    seconds: float

    @property
    def last(self) -> EpochResult:
        return self.history[-1]

    @property
    def best(self) -> EpochResult:
        return max(self.history, key=lambda r: (r.test_top1, -r.epoch))


def make_optimizer(params: list[nn.Parameter], recipe: Recipe) -> torch.optim.Optimizer:
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=recipe.lr, momentum=recipe.momentum, nesterov=recipe.nesterov and recipe.momentum > 0,
            weight_decay=recipe.weight_decay,
        )
    return torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay)


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


def _train_targets(dataset) -> torch.Tensor | None:
    """Every training label, when the dataset keeps them in memory (``targets``/``labels``), else None."""
    for ds in (dataset, getattr(dataset, "base", None)):
        for attr in ("targets", "labels"):
            values = getattr(ds, attr, None) if ds is not None else None
            if values is not None and len(values) == len(dataset):
                return torch.as_tensor(values, dtype=torch.long)
    return None


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
) -> TrainResult:
    """Train ``student`` with ``distiller``'s loss terms; evaluate after every epoch."""
    train_loader = DataLoader(
        data.train, batch_size=recipe.batch_size, shuffle=True, drop_last=True,
        generator=generator, num_workers=recipe.workers, pin_memory=device.type == "cuda",
    )
    test_loader = DataLoader(data.test, batch_size=recipe.eval_batch_size, shuffle=False, num_workers=recipe.workers)
    memory_format = torch.channels_last if device.type == "cuda" and recipe.channels_last else torch.contiguous_format
    student.to(device, memory_format=memory_format)
    if teacher is not None:
        teacher.to(device, memory_format=memory_format).eval().requires_grad_(False)

    # A probe pass tells the method the feature shapes for its extra modules.
    probe = next(iter(DataLoader(data.train, batch_size=2)))[0].to(device)
    with torch.no_grad():
        was_training = student.training
        student.eval()
        pre_logits = distiller.needs_pre_logits
        s_probe = forward_with_taps(student, probe, distiller.student_stages, pre_logits)
        t_probe = forward_with_taps(teacher, probe, distiller.teacher_stages, pre_logits) if teacher is not None else None
        student.train(was_training)
    distiller.setup(PairInfo(
        num_classes=data.num_classes, num_train=len(data.train),
        student_shapes=[f.shape for f in s_probe.features],
        teacher_shapes=[f.shape for f in t_probe.features] if t_probe else [],
        student_dim=s_probe.pre_logits.shape[1] if s_probe.pre_logits is not None else None,
        teacher_dim=t_probe.pre_logits.shape[1] if t_probe and t_probe.pre_logits is not None else None,
        train_targets=_train_targets(data.train),
    ))
    distiller.to(device)

    params = [p for p in student.parameters() if p.requires_grad] + [p for p in distiller.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, recipe)
    steps_per_epoch = len(train_loader)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, steps_per_epoch, recipe))
    autocast, scaler = _autocast(device, recipe)

    history: list[EpochResult] = []
    start = time.perf_counter()
    step = 0
    for epoch in range(recipe.epochs):
        t0 = time.perf_counter()
        student.train()
        distiller.train()
        loss_sum, correct, seen = 0.0, 0, 0
        term_sums: dict[str, float] = {}
        lr = optimizer.param_groups[0]["lr"]
        for images, targets, indices in train_loader:
            images = images.to(device, non_blocking=True, memory_format=memory_format)
            targets, indices = targets.to(device, non_blocking=True), indices.to(device, non_blocking=True)
            with autocast():
                s_out = forward_with_taps(student, images, distiller.student_stages, distiller.needs_pre_logits)
                t_out = None
                if teacher is not None and distiller.needs_teacher:
                    with torch.no_grad():
                        t_out = forward_with_taps(teacher, images, distiller.teacher_stages, distiller.needs_pre_logits)
                terms = distiller.loss_terms(Batch(images, targets, indices, s_out, t_out, epoch, step))
                loss = sum(terms.values())
            if not torch.isfinite(loss):
                parts = ", ".join(f"{k}={v.item():.4g}" for k, v in terms.items())
                raise NonFiniteLossError(f"loss is {loss.item()} at epoch {epoch + 1}, step {step} ({parts})")
            optimizer.zero_grad(set_to_none=True)
            lr = optimizer.param_groups[0]["lr"]
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
            else:
                loss.backward()
            if recipe.grad_clip is not None:
                nn.utils.clip_grad_norm_(params, recipe.grad_clip)
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            scheduler.step()

            n = targets.size(0)
            loss_sum += loss.item() * n
            for k, v in terms.items():
                term_sums[k] = term_sums.get(k, 0.0) + v.item() * n
            correct += (s_out.logits.argmax(1) == targets).sum().item()
            seen += n
            step += 1
            if on_step is not None:
                on_step(step, loss.item())

        test = evaluate(student, test_loader, device, autocast, memory_format)
        result = EpochResult(
            epoch=epoch + 1, train_loss=loss_sum / seen, train_top1=100.0 * correct / seen,
            test_top1=test.top1, test_top5=test.top5, test_loss=test.loss, lr=lr,
            seconds=time.perf_counter() - t0, terms={k: v / seen for k, v in term_sums.items()},
        )
        history.append(result)
        if on_epoch is not None:
            on_epoch(result)
    return TrainResult(history, time.perf_counter() - start)
