"""CC (Peng et al. ICCV 2019, the authors' code as shared with RepDistiller) against a numpy
computation, and the contract check.

e = W f + b (128-d linear embeddings of the pooled features), δ = |e_S - e_T|,
L_CC = (1/(N-1)) Σ_i Σ_d δ_{i,d} δ_{i+1,d}; L = CE + beta · L_CC.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import kdbench
from kdbench.testing import check_method, make_host

from _feature_numpy import cross_entropy

rng = np.random.default_rng(27)


@pytest.fixture(scope="module")
def host():
    return make_host()


def f32(a):
    return torch.tensor(a, dtype=torch.float32)


def test_cc_matches_the_correlation_of_discrepancies_by_hand(host):
    n, ds, dt, k = 4, 3, 5, 6
    fs, ft = rng.normal(size=(n, ds)), rng.normal(size=(n, dt))
    d = host.methods.get("cc").build({"feat_dim": k})
    assert d.beta == 0.02
    d.setup(kdbench.PairInfo(3, 10, [], [], student_dim=ds, teacher_dim=dt))
    ws, bs, wt, bt = rng.normal(size=(k, ds)), rng.normal(size=k), rng.normal(size=(k, dt)), rng.normal(size=k)
    with torch.no_grad():
        d.embed_s.weight.copy_(f32(ws)), d.embed_s.bias.copy_(f32(bs))
        d.embed_t.weight.copy_(f32(wt)), d.embed_t.bias.copy_(f32(bt))
    delta = np.abs((fs @ ws.T + bs) - (ft @ wt.T + bt))
    expected = sum(float(delta[i] @ delta[i + 1]) for i in range(n - 1)) / (n - 1)
    logits = rng.normal(size=(n, 3))
    batch = kdbench.Batch(torch.zeros(n, 3, 4, 4), torch.tensor([0, 1, 2, 0]), torch.arange(n),
                          kdbench.Outputs(f32(logits), [], f32(fs)), kdbench.Outputs(f32(logits), [], f32(ft)), 0, 0)
    terms = d.loss_terms(batch)
    assert set(terms) == {"ce", "cc"}
    assert terms["cc"].item() == pytest.approx(0.02 * expected, rel=1e-5)
    assert terms["ce"].item() == pytest.approx(cross_entropy(logits, [0, 1, 2, 0]), rel=1e-5)


def test_contract(host):
    report = check_method("cc", host=host, end_to_end=False)
    assert set(report.terms) == {"ce", "cc"} and report.extra_params > 0
