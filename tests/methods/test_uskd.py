"""USKD (Yang et al. ICCV 2023), teacher-free, against a numpy computation of the authors' loss
(yzd-v/cls_KD, uskd.py), and the contract check."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import kdbench
from kdbench.testing import check_method, make_host

rng = np.random.default_rng(17)
N, C, D = 4, 6, 3
S = rng.normal(size=(N, C)) * 2
FEAT = rng.normal(size=(N, D, 2, 2))        # the penultimate stage's map
W, BIAS = rng.normal(size=(C, D)), rng.normal(size=C)
Y = np.array([2, 0, 5, 2])


@pytest.fixture(scope="module")
def host():
    return make_host()


def softmax(v):
    e = np.exp(v - v.max())
    return e / e.sum()


def test_uskd_matches_the_authors_loss_by_hand(host):
    alpha, beta, mu = 0.1, 0.1, 0.1
    s_t = np.array([softmax(s)[y] for s, y in zip(S, Y)])
    p_t = s_t**2 + 1 - np.mean(s_t**2)
    target = np.mean([-p * np.log(softmax(s)[y]) for p, s, y in zip(p_t, S, Y)])
    pooled = FEAT.mean(axis=(2, 3))
    weak_logits = pooled @ W.T + BIAS
    weak = non = 0.0
    for s, w, y in zip(S, weak_logits, Y):
        smooth = np.full(C, 0.1 / C)
        smooth[y] += 0.9
        log_w = np.log(softmax(w))
        weak += -(mu * smooth * log_w).sum()
        wp, log_s = softmax(w), np.log(softmax(s))
        score = wp / (1 - wp[y] + 1e-6) + log_s / (1 - log_s[y] + 1e-6)
        order = sorted(range(C), key=lambda c: -score[c])      # classes by descending score
        zipf = {c: 1.0 / (r + 1) for r, c in enumerate(order)}
        rest = [c for c in range(C) if c != y]
        z = np.array([zipf[c] for c in rest])
        z = z / z.sum()
        non += -(z * np.log(softmax(s[rest]))).sum()
    weak, non = weak / N, non / N
    ce = np.mean([-np.log(softmax(s)[y]) for s, y in zip(S, Y)])

    d = host.methods.get("uskd").build({})
    assert d.needs_teacher is False
    d.setup(kdbench.PairInfo(C, 100, [torch.Size((2, D, 2, 2))], []))
    with torch.no_grad():
        d.weak_head.weight.copy_(torch.tensor(W))
        d.weak_head.bias.copy_(torch.tensor(BIAS))
    f = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
    batch = kdbench.Batch(torch.zeros(N, 3, 4, 4), torch.tensor(Y), torch.arange(N),
                          kdbench.Outputs(f(S), [f(FEAT)]), None, 0, 0)
    terms = d.loss_terms(batch)
    assert terms["uskd_target"].item() == pytest.approx(alpha * target, rel=1e-5)
    assert terms["uskd_non_target"].item() == pytest.approx(beta * non, rel=1e-5)
    assert terms["uskd_weak"].item() == pytest.approx(weak, rel=1e-5)
    assert terms["ce"].item() == pytest.approx(ce, rel=1e-5)


def test_contract(host):
    report = check_method("uskd", host=host, end_to_end=False)
    assert report.extra_params > 0 and "weak_head.weight" in report.extra_trainable


def test_refuses_a_student_without_feature_taps(host):
    d = host.methods.get("uskd").build({})
    with pytest.raises(kdbench.NotApplicableError, match="feature_info"):
        d.check_pair(torch.nn.Linear(3, 3), None)
