"""Vanilla KD's loss against a hand computation of Hinton et al.'s formula."""
from __future__ import annotations

import math

import torch

import kdbench
from kdbench_plugins.methods.kd import KD


def _softmax(row, T):
    exps = [math.exp(v / T) for v in row]
    total = sum(exps)
    return [e / total for e in exps]


def test_kd_loss_matches_the_formula_on_a_hand_made_example():
    s = [[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]]
    t = [[2.0, 1.0, 0.0], [0.5, 0.5, 2.0]]
    y = [1, 2]
    T, alpha = 4.0, 0.9
    # KL(p_t || p_s) at temperature T, times T^2, averaged over the batch
    kl = 0.0
    for srow, trow in zip(s, t):
        ps, pt = _softmax(srow, T), _softmax(trow, T)
        kl += sum(q * math.log(q / p) for p, q in zip(ps, pt))
    kl = kl / len(s) * T * T
    ce = sum(-math.log(_softmax(srow, 1.0)[label]) for srow, label in zip(s, y)) / len(s)
    expected = alpha * kl + (1 - alpha) * ce

    student = torch.tensor(s, requires_grad=True)
    batch = kdbench.Batch(
        images=torch.zeros(2, 3, 4, 4), targets=torch.tensor(y), indices=torch.arange(2),
        student=kdbench.Outputs(student), teacher=kdbench.Outputs(torch.tensor(t)), epoch=0, step=0,
    )
    terms = KD(T=T, alpha=alpha).loss_terms(batch)
    assert set(terms) == {"ce", "kd"}
    assert math.isclose(sum(terms.values()).item(), expected, rel_tol=1e-5)
    assert math.isclose(terms["kd"].item(), alpha * kl, rel_tol=1e-5)
    assert math.isclose(terms["ce"].item(), (1 - alpha) * ce, rel_tol=1e-5)


def test_kd_gradient_reaches_the_student_only():
    student = torch.randn(4, 5, requires_grad=True)
    teacher = torch.randn(4, 5, requires_grad=True)
    batch = kdbench.Batch(
        images=torch.zeros(4, 3, 4, 4), targets=torch.tensor([0, 1, 2, 3]), indices=torch.arange(4),
        student=kdbench.Outputs(student), teacher=kdbench.Outputs(teacher.detach()), epoch=0, step=0,
    )
    sum(KD().loss_terms(batch).values()).backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert teacher.grad is None


def test_kd_rejects_impossible_options():
    import pytest

    with pytest.raises(kdbench.ConfigError, match="alpha must be in"):
        KD(alpha=1.5)
    with pytest.raises(kdbench.ConfigError, match="T must be positive"):
        KD(T=0)
