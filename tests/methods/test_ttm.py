"""TTM (Zheng & Yang ICLR 2024) against a numpy computation of its loss, and the contract check.

L = ce_weight * CE + beta * mean_i KL(p_T^gamma / sum p_T^gamma || softmax(z_s)): no temperature on the student.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import kdbench
from kdbench.testing import check_method, make_host

rng = np.random.default_rng(3)
S, T_ = rng.normal(size=(4, 6)) * 2, rng.normal(size=(4, 6)) * 3
Y = np.array([0, 5, 2, 2])


@pytest.fixture(scope="module")
def host():
    return make_host()


def softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def ttm_by_hand(gamma):
    powered = softmax(T_) ** gamma
    target = powered / powered.sum(axis=1, keepdims=True)
    return np.mean((target * np.log(target / softmax(S))).sum(axis=1))


def batch():
    f = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
    return kdbench.Batch(torch.zeros(4, 3, 4, 4), torch.tensor(Y), torch.arange(4), kdbench.Outputs(f(S)),
                         kdbench.Outputs(f(T_)), 0, 0)


def test_ttm_matches_the_formula_by_hand(host):
    terms = host.methods.get("ttm").build({}).loss_terms(batch())
    assert set(terms) == {"ce", "ttm"}
    assert terms["ttm"].item() == pytest.approx(45.0 * ttm_by_hand(0.1), rel=1e-5)
    ce = np.mean(-np.log(softmax(S)[np.arange(4), Y]))
    assert terms["ce"].item() == pytest.approx(ce, rel=1e-5)
    other = host.methods.get("ttm").build({"gamma": 0.5, "beta": 2.0}).loss_terms(batch())
    assert other["ttm"].item() == pytest.approx(2.0 * ttm_by_hand(0.5), rel=1e-5)


def test_ttm_is_teacher_side_temperature_scaling(host):
    """The paper's identity: p_T^gamma renormalised is softmax(z_t / T) with T = 1/gamma."""
    gamma = 0.25
    e = np.exp(T_ / (1 / gamma) - (T_ / (1 / gamma)).max(axis=1, keepdims=True))
    target = e / e.sum(axis=1, keepdims=True)
    expected = np.mean((target * np.log(target / softmax(S))).sum(axis=1))
    terms = host.methods.get("ttm").build({"gamma": gamma, "beta": 1.0}).loss_terms(batch())
    assert terms["ttm"].item() == pytest.approx(expected, rel=1e-5)


def test_contract(host):
    report = check_method("ttm", host=host, end_to_end=False)
    assert report.extra_params == 0 and report.student_grad_norm > 0
    with pytest.raises(kdbench.ConfigError, match="gamma"):
        host.methods.get("ttm").build({"gamma": 0.0})
