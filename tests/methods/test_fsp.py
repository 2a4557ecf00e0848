"""FSP (Yim et al. CVPR 2017) against a numpy computation of the FSP matrices and their L2 loss
(the pre-training phase), the CE-only training phase, the pairs it refuses, and the contract check.

G_ij = (1/HW) Σ_hw F¹_i F²_j between consecutive taps (larger map average-pooled);
pre-training: beta · Σ_pairs mean (G_S - G_T)²; training: CE.
"""
from __future__ import annotations

import numpy as np
import pytest
import timm
import torch

import kdbench
import kdbench_plugins.cifar_models  # noqa: F401
from kdbench.testing import check_method, make_host

from _feature_numpy import avg_pool_to, cross_entropy

rng = np.random.default_rng(25)


@pytest.fixture(scope="module")
def host():
    return make_host()


def f32(a):
    return torch.tensor(a, dtype=torch.float32)


def fsp(a, b):
    if a.shape[2] > b.shape[2]:
        a = avg_pool_to(a, b.shape[2])
    n, ca, h, w = a.shape
    g = np.zeros((n, b.shape[1], ca))
    for k in range(n):
        for j in range(b.shape[1]):
            for i in range(ca):
                g[k, j, i] = np.mean(a[k, i] * b[k, j])
    return g


def test_fsp_matches_the_flow_matrices_by_hand(host):
    n = 2
    shapes = [(n, 2, 4, 4), (n, 3, 4, 4), (n, 2, 2, 2)]
    s = [rng.normal(size=sh) for sh in shapes]
    t = [rng.normal(size=sh) for sh in shapes]
    expected = sum(np.mean((fsp(s[i], s[i + 1]) - fsp(t[i], t[i + 1])) ** 2) for i in range(2))
    d = host.methods.get("fsp").build({"beta": 2.0})
    logits = rng.normal(size=(n, 3))
    batch = kdbench.Batch(torch.zeros(n, 3, 4, 4), torch.tensor([0, 2]), torch.arange(n),
                          kdbench.Outputs(f32(logits), [f32(x) for x in s]),
                          kdbench.Outputs(f32(logits), [f32(x) for x in t]), 0, 0)
    pre = d.pretrain_terms(batch)
    assert set(pre) == {"fsp"} and pre["fsp"].item() == pytest.approx(2.0 * expected, rel=1e-5)
    main = d.loss_terms(batch)
    assert set(main) == {"ce"} and main["ce"].item() == pytest.approx(cross_entropy(logits, [0, 2]), rel=1e-5)
    assert d.pretrain_student and d.pretrain_epochs == 30


def test_fsp_needs_the_same_channels_at_every_tap(host):
    d = host.methods.get("fsp").build({})
    d.check_pair(timm.create_model("resnet8", num_classes=10), timm.create_model("resnet56", num_classes=10))
    assert list(d.student_stages) == [0, 1, 2, 3]  # the stem and every stage, as RepDistiller's feat[:-1]
    with pytest.raises(kdbench.NotApplicableError, match="same channels"):  # the CRD table's N/A
        d.check_pair(timm.create_model("wrn_40_1", num_classes=10), timm.create_model("wrn_40_2", num_classes=10))


def test_contract(host):
    report = check_method("fsp", host=host, end_to_end=False, pair="resnet20-resnet8")
    assert set(report.terms) == {"ce"} and report.extra_params == 0


def test_contract_with_kdbenchs_channel_adapter_on_the_tiny_pair(host):
    with pytest.raises(kdbench.NotApplicableError, match="connector=true"):
        check_method("fsp", host=host, end_to_end=False)  # tiny: the widths differ at every tap
    report = check_method("fsp", host=host, end_to_end=False, options={"connector": True})
    assert set(report.terms) == {"ce"} and report.extra_params > 0
