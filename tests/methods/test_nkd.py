"""NKD (Yang et al. ICCV 2023) against a numpy computation of its loss, and the contract check.

L = CE - mean_i T_it log S_it - gamma tau^2 mean_i sum_{c != t} That_ic log Shat_ic,
with That, Shat the softmax at tau over the non-target logits only.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import kdbench
from kdbench.testing import check_method, make_host

rng = np.random.default_rng(13)
S, T_ = rng.normal(size=(4, 5)) * 2, rng.normal(size=(4, 5)) * 3
Y = np.array([3, 0, 4, 3])


@pytest.fixture(scope="module")
def host():
    return make_host()


def softmax(v, tau=1.0):
    e = np.exp(v / tau - np.max(v / tau))
    return e / e.sum()


def test_nkd_matches_the_formula_by_hand(host):
    tau, gamma = 3.0, 3.5
    target = non = ce = 0.0
    for s, t, y in zip(S, T_, Y):
        target += -softmax(t)[y] * np.log(softmax(s)[y])
        rest = [c for c in range(5) if c != y]
        non += -(softmax(t[rest], tau) * np.log(softmax(s[rest], tau))).sum()
        ce += -np.log(softmax(s)[y])
    target, non, ce = target / 4, gamma * tau**2 * non / 4, ce / 4
    f = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
    batch = kdbench.Batch(torch.zeros(4, 3, 4, 4), torch.tensor(Y), torch.arange(4), kdbench.Outputs(f(S)),
                          kdbench.Outputs(f(T_)), 0, 0)
    terms = host.methods.get("nkd").build({}).loss_terms(batch)
    assert set(terms) == {"ce", "nkd_target", "nkd_non_target"}
    assert terms["nkd_target"].item() == pytest.approx(target, rel=1e-5)
    assert terms["nkd_non_target"].item() == pytest.approx(non, rel=1e-5)
    assert terms["ce"].item() == pytest.approx(ce, rel=1e-5)


def test_contract(host):
    report = check_method("nkd", host=host, end_to_end=False)
    assert report.extra_params == 0 and report.student_grad_norm > 0
