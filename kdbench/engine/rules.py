"""The teacher rules every distiller keeps, and their one wording.

A method uses the teacher only through ``batch.teacher`` (the host runs it
frozen, in eval mode, without gradients): it never registers the teacher's
(or the student's) parameters as its own, never gives the teacher gradients
or puts it in training mode, never changes it. The training loop enforces
them on every cell (:class:`TeacherGuard`: ownership at set-up, the rest
after the first step of each phase) and fails the cell with
:class:`TeacherRuleError`; ``kdbench.testing.check_method`` raises the same
messages as a ``ContractError``.
"""
from __future__ import annotations

import torch
from torch import nn


class TeacherRuleError(RuntimeError):
    """A method broke the teacher rules; the message says which and how to keep them."""


def ownership_problem(name: str, distiller: nn.Module, student: nn.Module, teacher: nn.Module | None) -> str | None:
    """Why the distiller owns parameters that are not its own (the teacher's, the student's), or None."""
    teacher_ids = {id(p) for p in teacher.parameters()} if teacher is not None else set()
    student_ids = {id(p) for p in student.parameters()}
    owned = [n for n, p in distiller.named_parameters(remove_duplicate=False) if id(p) in teacher_ids]
    if owned:
        return (f"method {name!r} registers the teacher's parameters as its own ({owned[0]}, ...): the optimiser "
                "would train the teacher. Use batch.teacher (the host's teacher outputs) instead of keeping the teacher.")
    owned = [n for n, p in distiller.named_parameters(remove_duplicate=False) if id(p) in student_ids]
    if owned:
        return (f"method {name!r} registers the student's parameters as its own ({owned[0]}, ...): they would be "
                "counted as extra parameters and optimised twice. Do not keep the student as an attribute.")
    return None


def gradient_problem(name: str, teacher: nn.Module) -> str | None:
    """Why the teacher is not frozen after a step (it got gradients, or can get them), or None."""
    leaked = [n for n, p in teacher.named_parameters() if p.grad is not None]
    if leaked:
        return (f"method {name!r} leaks gradients into the teacher ({len(leaked)} tensors, e.g. {leaked[0]}): "
                "the teacher must be used only through batch.teacher, without gradients")
    trainable = [n for n, p in teacher.named_parameters() if p.requires_grad]
    if trainable:
        return f"method {name!r} made teacher parameters trainable again ({trainable[0]}, ...)"
    return None


def mode_problem(name: str, teacher: nn.Module) -> str | None:
    if teacher.training or any(m.training for m in teacher.modules()):
        return f"method {name!r} put the teacher in training mode: its BatchNorm statistics would drift"
    return None


def changed_problem(name: str, before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> str | None:
    changed = [k for k, v in after.items() if k in before and not _equal(v, before[k])]
    if changed:
        return f"method {name!r} changed the teacher during training ({changed[0]}, ...): the teacher must stay frozen"
    return None


def _equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.is_floating_point() and a.shape == b.shape:
        return torch.allclose(a, b, rtol=0.0, atol=0.0, equal_nan=True)
    return torch.equal(a, b)


def _buffers(teacher: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in teacher.named_buffers()}


class TeacherGuard:
    """The rules on one training run: ownership when made (after ``setup``), the teacher's state after a step.

    Only the teacher's buffers (BatchNorm statistics: small) are kept to compare; its parameters cannot move
    without gradients, which :func:`gradient_problem` catches.
    """

    def __init__(self, name: str, distiller: nn.Module, student: nn.Module, teacher: nn.Module | None):
        self.name, self.teacher = name, teacher
        problem = ownership_problem(name, distiller, student, teacher)
        if problem:
            raise TeacherRuleError(problem)
        if teacher is not None:
            for p in teacher.parameters():  # gradients left from the teacher's own training are not the method's
                p.grad = None
        self.before = _buffers(teacher) if teacher is not None else {}

    def after_step(self) -> None:
        if self.teacher is None:
            return
        for problem in (gradient_problem(self.name, self.teacher), mode_problem(self.name, self.teacher),
                        changed_problem(self.name, self.before, _buffers(self.teacher))):
            if problem:
                raise TeacherRuleError(problem)
