"""Logit standardization (Sun et al. CVPR 2024): ``lskd`` and the ``standardize`` option of kd and dkd,
against a numpy computation of the paper's formula; and the contract check.

Z(z) = (z - mean(z)) / (std(z) + 1e-7), std the unbiased (n - 1) one as torch's default in the authors' code.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import kdbench
from kdbench.testing import check_method, make_host

S = np.array([[1.0, 2.0, 0.5, -0.3], [0.0, -1.0, 3.0, 0.7], [2.2, 0.1, -0.4, 1.5]])
T_ = np.array([[2.0, 1.0, 0.0, -1.0], [0.5, 0.5, 2.0, 1.0], [3.0, -2.0, 0.0, 0.4]])
Y = np.array([1, 2, 0])


@pytest.fixture(scope="module")
def host():
    return make_host()


def zscore(z):
    return (z - z.mean(axis=1, keepdims=True)) / (z.std(axis=1, ddof=1, keepdims=True) + 1e-7)


def softmax(z, tau=1.0):
    e = np.exp(z / tau - (z / tau).max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def kl_rows(p, q):  # KL(p || q) per row
    return (p * np.log(p / q)).sum(axis=1)


def ce(z, y):
    return float(np.mean(-np.log(softmax(z)[np.arange(len(y)), y])))


def batch(s, t, y, epoch=0):
    s, t = torch.tensor(s, dtype=torch.float32), torch.tensor(t, dtype=torch.float32)
    return kdbench.Batch(torch.zeros(len(y), 3, 4, 4), torch.tensor(y), torch.arange(len(y)),
                         kdbench.Outputs(s), kdbench.Outputs(t), epoch=epoch, step=0)


def method(host, name, **options):
    return host.methods.get(name).build(options)


def test_lskd_is_kd_on_zscored_logits_with_the_authors_weights(host):
    tau = 2.0
    kd = np.mean(kl_rows(softmax(zscore(T_), tau), softmax(zscore(S), tau))) * tau**2
    terms = method(host, "lskd").loss_terms(batch(S, T_, Y))
    assert set(terms) == {"ce", "kd"}
    assert terms["kd"].item() == pytest.approx(9.0 * kd, rel=1e-5)
    assert terms["ce"].item() == pytest.approx(0.1 * ce(S, Y), rel=1e-5)  # the CE keeps the raw logits


def test_kd_standardize_option_keeps_alpha_mixing(host):
    tau, alpha = 3.0, 0.7
    kd = np.mean(kl_rows(softmax(zscore(T_), tau), softmax(zscore(S), tau))) * tau**2
    terms = method(host, "kd", T=tau, alpha=alpha, standardize=True).loss_terms(batch(S, T_, Y))
    assert terms["kd"].item() == pytest.approx(alpha * kd, rel=1e-5)
    assert terms["ce"].item() == pytest.approx((1 - alpha) * ce(S, Y), rel=1e-5)
    # standardization is invariant to a shift and a positive scale of each logit vector
    shifted = method(host, "kd", T=tau, alpha=alpha, standardize=True).loss_terms(batch(S * 3.0 + 1.5, T_ - 2.0, Y))
    assert shifted["kd"].item() == pytest.approx(terms["kd"].item(), rel=1e-4)
    plain = method(host, "kd", T=tau, alpha=alpha).loss_terms(batch(S, T_, Y))
    assert abs(plain["kd"].item() - terms["kd"].item()) > 1e-3


def test_dkd_standardize_option_matches_tckd_nckd_on_zscored_logits(host):
    tau, alpha, beta = 2.0, 9.0, 72.0
    zs, zt = zscore(S), zscore(T_)
    tckd = nckd = 0.0
    for s, t, y in zip(zs, zt, Y):
        ps, pt = softmax(s[None], tau)[0], softmax(t[None], tau)[0]
        bs, bt = np.array([ps[y], 1 - ps[y]]), np.array([pt[y], 1 - pt[y]])
        tckd += float((bt * np.log(bt / bs)).sum())
        rest = [c for c in range(len(s)) if c != y]
        qs, qt = softmax(s[rest][None], tau)[0], softmax(t[rest][None], tau)[0]
        nckd += float((qt * np.log(qt / qs)).sum())
    tckd, nckd = tckd / len(Y) * tau**2, nckd / len(Y) * tau**2
    d = method(host, "dkd", standardize=True, T=tau, alpha=alpha, beta=beta, warmup=20)
    terms = d.loss_terms(batch(S, T_, Y, epoch=39))  # past the warm-up
    assert terms["tckd"].item() == pytest.approx(alpha * tckd, rel=1e-5)
    assert terms["nckd"].item() == pytest.approx(beta * nckd, rel=1e-5)
    assert terms["ce"].item() == pytest.approx(ce(S, Y), rel=1e-5)


@pytest.mark.parametrize("name,options", [("lskd", {}), ("kd", {"standardize": True}),
                                          ("dkd", {"standardize": True, "T": 2.0, "alpha": 9.0, "beta": 72.0})])
def test_contract(host, name, options):
    report = check_method(name, host=host, options=options, end_to_end=False)
    assert report.extra_params == 0 and report.student_grad_norm > 0


def test_registered_with_the_paper(host):
    m = host.methods.get("lskd")
    assert "2403.01427" in m.paper and m.family == "logits"
