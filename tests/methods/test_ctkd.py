"""CTKD (Li et al. AAAI 2023): the KD loss at the learned temperature, the gradient reversal and the
cosine curriculum of lambda, against hand computations; and the contract check, end to end."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import kdbench
from kdbench.testing import check_method, make_host

rng = np.random.default_rng(11)
S, T_ = rng.normal(size=(4, 5)) * 2, rng.normal(size=(4, 5)) * 3
Y = np.array([1, 0, 4, 2])


@pytest.fixture(scope="module")
def host():
    return make_host()


def softmax(z, tau=1.0):
    e = np.exp(z / tau - (z / tau).max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def kd(tau):
    ps, pt = softmax(S, tau), softmax(T_, tau)
    return np.mean((pt * np.log(pt / ps)).sum(axis=1)) * tau**2


def batch(epoch):
    s = torch.tensor(S, dtype=torch.float32, requires_grad=True)
    return s, kdbench.Batch(torch.zeros(4, 3, 4, 4), torch.tensor(Y), torch.arange(4), kdbench.Outputs(s),
                            kdbench.Outputs(torch.tensor(T_, dtype=torch.float32)), epoch, 0)


def built(host, **options):
    d = host.methods.get("ctkd").build(options)
    d.setup(kdbench.PairInfo(5, 100, [], []))
    return d


def test_loss_at_the_learned_temperature(host):
    d = built(host)
    tau = 1.0 + 20.0 / (1.0 + math.exp(-1.0))  # theta starts at 1: t_start + t_end * sigmoid(1)
    _, b = batch(epoch=0)
    terms = d.loss_terms(b)
    assert terms["kd"].item() == pytest.approx(0.9 * kd(tau), rel=1e-5)
    ce = np.mean(-np.log(softmax(S)[np.arange(4), Y]))
    assert terms["ce"].item() == pytest.approx(0.1 * ce, rel=1e-5)


def test_cosine_curriculum_of_lambda(host):
    d = built(host)
    for epoch in range(0, 14):  # host epochs are 0-based; the authors' epoch is epoch + 1, capped at 10
        i = min(epoch + 1, 10)
        assert d.lam(epoch) == pytest.approx((1 - math.cos(math.pi * i / 10)) / 2, abs=1e-12)
    assert d.lam(9) == pytest.approx(1.0) and d.lam(30) == pytest.approx(1.0)
    # the authors' CosineDecay(max=0, min=-1, loops=10) is the gradient multiplier: -lambda
    auth = lambda i: (math.cos(i * math.pi / 10) + 1) * 0.5 * (0 - (-1)) + (-1)  # noqa: E731
    assert all(auth(min(e + 1, 10)) == pytest.approx(-d.lam(e)) for e in range(12))  # the code caps i at the loops


def test_gradient_reversal_makes_the_temperature_ascend_the_kd_loss(host):
    """d loss / d theta through the layer is -lambda times the plain derivative of the KD term."""
    for epoch in (0, 4, 20):
        d = built(host)
        _, b = batch(epoch)
        d.loss_terms(b)["kd"].backward()
        got = d.temperature.theta.grad.item()
        # the plain derivative, by central differences of the hand-computed loss in theta
        def loss(theta):
            return 0.9 * kd(1.0 + 20.0 / (1.0 + math.exp(-theta)))
        h = 1e-5
        plain = (loss(1.0 + h) - loss(1.0 - h)) / (2 * h)
        assert got == pytest.approx(-d.lam(epoch) * plain, rel=1e-3, abs=1e-7)


def test_contract_end_to_end(kdbench_env, kdbench_host):
    host = kdbench_host()
    report = check_method("ctkd", host=host)  # one short cell through the runner into MLflow
    assert report.extra_params == 1 and report.extra_trainable == ["temperature.theta"]
    assert report.cell.status == "FINISHED"
