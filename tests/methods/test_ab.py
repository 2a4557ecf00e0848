"""AB (Heo et al. AAAI 2019) against a numpy computation of the activation-boundary loss (the
pre-training phase), the CE-only training phase, and the contract check.

ℓ = Σ (r(s) + μ)² [r(s) > -μ, t <= 0] + (r(s) - μ)² [r(s) <= μ, t > 0];
L_AB = beta · Σ_i 2^(i-n+1) ℓ_i / N (beta = 3/1000), r the identity or conv + BN.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import kdbench
from kdbench.testing import check_method, make_host

from _feature_numpy import bn_eval, cross_entropy

rng = np.random.default_rng(26)


@pytest.fixture(scope="module")
def host():
    return make_host()


def f32(a):
    return torch.tensor(a, dtype=torch.float32)


def boundary(s, t, mu):
    return ((s + mu) ** 2 * ((s > -mu) & (t <= 0)) + (s - mu) ** 2 * ((s <= mu) & (t > 0))).sum()


def test_ab_matches_the_boundary_loss_by_hand(host):
    n, mu = 3, 1.0
    fs = [rng.normal(size=(n, 3, 2, 2)), rng.normal(size=(n, 2, 2, 2))]
    ft = [rng.normal(size=(n, 3, 2, 2)), rng.normal(size=(n, 4, 2, 2))]
    d = host.methods.get("ab").build({})
    assert (d.margin, d.beta, d.pretrain_epochs, d.pretrain_student) == (1.0, 3e-3, 30, True)
    d.student_stages, d.teacher_stages = (1, 2), (1, 2)
    d.setup(kdbench.PairInfo(3, 10, [torch.Size(f.shape) for f in fs], [torch.Size(f.shape) for f in ft]))
    d.eval()
    assert isinstance(d.connectors[0], torch.nn.Identity)  # same shape: no connector
    w = rng.normal(size=(4, 2))
    with torch.no_grad():
        d.connectors[1].conv.weight.copy_(f32(w)[:, :, None, None])
        d.connectors[1].conv.bias.zero_()
    r = [fs[0], bn_eval(np.einsum("oc,nchw->nohw", w, fs[1]))]
    expected = sum(2.0 ** (i - 2 + 1) * boundary(r[i], ft[i], mu) / n for i in range(2)) * 3 / 1000
    logits = rng.normal(size=(n, 3))
    batch = kdbench.Batch(torch.zeros(n, 3, 4, 4), torch.tensor([0, 1, 2]), torch.arange(n),
                          kdbench.Outputs(f32(logits), [f32(x) for x in fs]),
                          kdbench.Outputs(f32(logits), [f32(x) for x in ft]), 0, 0)
    pre = d.pretrain_terms(batch)
    assert set(pre) == {"ab"} and pre["ab"].item() == pytest.approx(expected, rel=1e-5)
    d.end_pretrain()
    assert not any(p.requires_grad for p in d.parameters())
    main = d.loss_terms(batch)
    assert set(main) == {"ce"} and main["ce"].item() == pytest.approx(cross_entropy(logits, [0, 1, 2]), rel=1e-5)


def test_ab_uses_pre_relu_features_of_both_models(host):
    d = host.methods.get("ab").build({})
    assert d.student_preact and d.teacher_preact


def test_contract(host):
    report = check_method("ab", host=host, end_to_end=False)
    assert set(report.terms) == {"ce"} and report.extra_params > 0
