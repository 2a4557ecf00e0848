"""WTTM (Zheng & Yang ICLR 2024) against a numpy computation of its loss, and the contract check.

L = ce_weight * CE + beta * mean_i U_i * KL(p_T^gamma / U || softmax(z_s)),  U_i = sum_c p_T,ic^gamma.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import kdbench
from kdbench.testing import check_method, make_host

rng = np.random.default_rng(5)
S, T_ = rng.normal(size=(5, 7)) * 2, rng.normal(size=(5, 7)) * 3
Y = np.array([0, 6, 2, 3, 1])


@pytest.fixture(scope="module")
def host():
    return make_host()


def softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_wttm_matches_the_formula_by_hand(host):
    gamma, beta = 0.2, 4.0
    powered = softmax(T_) ** gamma
    u = powered.sum(axis=1)
    target = powered / u[:, None]
    kl = (target * np.log(target / softmax(S))).sum(axis=1)
    f = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
    batch = kdbench.Batch(torch.zeros(5, 3, 4, 4), torch.tensor(Y), torch.arange(5), kdbench.Outputs(f(S)),
                          kdbench.Outputs(f(T_)), 0, 0)
    terms = host.methods.get("wttm").build({}).loss_terms(batch)
    assert set(terms) == {"ce", "wttm"}
    assert terms["wttm"].item() == pytest.approx(beta * np.mean(u * kl), rel=1e-5)
    assert np.all(u > 1)  # gamma < 1: the weight grows with the teacher's smoothness
    ce = np.mean(-np.log(softmax(S)[np.arange(5), Y]))
    assert terms["ce"].item() == pytest.approx(ce, rel=1e-5)


def test_contract(host):
    report = check_method("wttm", host=host, end_to_end=False)
    assert report.extra_params == 0 and report.student_grad_norm > 0
