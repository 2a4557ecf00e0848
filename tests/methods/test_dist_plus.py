"""DIST+ (Huang et al. TPAMI 2025, torchdistill's DISTPlusLoss with the channel term as 1 - rho)
against a numpy computation, its refusal of pairs whose last stages differ, and the contract check."""
from __future__ import annotations

import numpy as np
import pytest
import timm
import torch

import kdbench
from kdbench.testing import check_method, make_host

rng = np.random.default_rng(19)
B, C, K, H = 4, 5, 3, 2
ZS, ZT = rng.normal(size=(B, C)) * 2, rng.normal(size=(B, C)) * 2
FS, FT = rng.normal(size=(B, K, H, H)), rng.normal(size=(B, K, H, H))
Y = np.array([0, 1, 4, 2])


@pytest.fixture(scope="module")
def host():
    return make_host()


def softmax(z, tau):
    e = np.exp(z / tau - (z / tau).max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def rho(a, b):
    return np.corrcoef(a, b)[0, 1]


def test_dist_plus_matches_the_formula_by_hand(host):
    beta, gamma, iota, kappa, tau, weight = 2.0, 2.0, 1.0, 1.0, 1.0, 2.0
    ys, yt = softmax(ZS, tau), softmax(ZT, tau)
    inter = 1 - np.mean([rho(ys[i], yt[i]) for i in range(B)])
    intra = 1 - np.mean([rho(ys[:, c], yt[:, c]) for c in range(C)])
    channel = 1 - np.mean([rho(FS[b, :, h, w], FT[b, :, h, w]) for b in range(B) for h in range(H) for w in range(H)])
    a_s, a_t = FS.sum(axis=1).reshape(B, -1), FT.sum(axis=1).reshape(B, -1)
    spatial = 1 - np.mean([rho(a_s[:, p], a_t[:, p]) for p in range(H * H)])
    f = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
    batch = kdbench.Batch(torch.zeros(B, 3, 4, 4), torch.tensor(Y), torch.arange(B), kdbench.Outputs(f(ZS), [f(FS)]),
                          kdbench.Outputs(f(ZT), [f(FT)]), 0, 0)
    d = host.methods.get("dist_plus").build({})
    d.setup(kdbench.PairInfo(C, 10, [torch.Size(FS.shape)], [torch.Size(FT.shape)]))
    terms = d.loss_terms(batch)
    assert terms["dist_inter"].item() == pytest.approx(weight * tau**2 * beta * inter, rel=1e-5)
    assert terms["dist_intra"].item() == pytest.approx(weight * tau**2 * gamma * intra, rel=1e-5)
    assert terms["dist_channel"].item() == pytest.approx(weight * iota * channel, rel=1e-5)
    assert terms["dist_spatial"].item() == pytest.approx(weight * kappa * spatial, rel=1e-5)
    ce = np.mean(-np.log(softmax(ZS, 1.0)[np.arange(B), Y]))
    assert terms["ce"].item() == pytest.approx(ce, rel=1e-5)


def test_refuses_pairs_whose_last_stages_differ(host):
    import kdbench_plugins.cifar_models  # noqa: F401

    d = host.methods.get("dist_plus").build({})
    with pytest.raises(kdbench.NotApplicableError, match="64 channels .* teacher's 128"):
        d.check_pair(timm.create_model("wrn_40_1", num_classes=10), timm.create_model("wrn_40_2", num_classes=10))
    d.check_pair(timm.create_model("resnet8x4", num_classes=10), timm.create_model("resnet32x4", num_classes=10))
    with pytest.raises(kdbench.NotApplicableError, match="channels"):
        check_method("dist_plus", host=host, end_to_end=False)  # tiny: 96 → 64 channels


def test_contract_same_width_pair_and_with_the_connector(host):
    same = kdbench.ModelPair("r8", "resnet8", "resnet8")
    report = check_method("dist_plus", host=host, pair=same, end_to_end=False)
    assert report.extra_params == 0 and {"dist_channel", "dist_spatial"} <= set(report.terms)
    report = check_method("dist_plus", host=host, options={"connector": True}, end_to_end=False)
    assert report.extra_params > 0  # the 1×1 conv + BN adapter on the tiny pair
