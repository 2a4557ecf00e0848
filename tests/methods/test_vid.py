"""VID (Ahn et al. CVPR 2019) against a numpy computation of its Gaussian negative log-likelihood,
and the contract check.

L_VID = mean (t - mu(s))² / (2 sigma²) + ½ log sigma²,  sigma² = log(1 + e^alpha) + eps,
mu = W3 · relu(W2 · relu(W1 · s)) per pixel (1×1 convolutions), the larger map average-pooled first.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import kdbench
from kdbench.testing import check_method, make_host

from _feature_numpy import avg_pool_to, cross_entropy, relu

rng = np.random.default_rng(21)
LOGITS_S, LOGITS_T, LABELS = rng.normal(size=(2, 4)), rng.normal(size=(2, 4)), [1, 3]


@pytest.fixture(scope="module")
def host():
    return make_host()


def f32(a):
    return torch.tensor(a, dtype=torch.float32)


def test_vid_matches_the_gaussian_likelihood_by_hand(host):
    fs = [rng.normal(size=(2, 3, 4, 4)), rng.normal(size=(2, 2, 2, 2))]
    ft = [rng.normal(size=(2, 5, 2, 2)), rng.normal(size=(2, 3, 2, 2))]  # stage 1: the student's map is larger
    d = host.methods.get("vid").build({"beta": 2.0, "init_var": 5.0})
    d.student_stages, d.teacher_stages = (1, 2), (1, 2)  # what check_pair would choose
    d.setup(kdbench.PairInfo(4, 10, [torch.Size(f.shape) for f in fs], [torch.Size(f.shape) for f in ft]))
    weights, alphas = [], []
    for i, (s, t) in enumerate(zip(fs, ft)):
        cs, ct = s.shape[1], t.shape[1]
        w = [rng.normal(size=(ct, cs)), rng.normal(size=(ct, ct)), rng.normal(size=(ct, ct))]
        a = rng.normal(size=ct)
        with torch.no_grad():
            for conv, wi in zip([d.regressors[i][0], d.regressors[i][2], d.regressors[i][4]], w):
                conv.weight.copy_(f32(wi)[:, :, None, None])
            d.log_scales[i].copy_(f32(a))
        weights.append(w)
        alphas.append(a)

    # the initial variance is init_var
    fresh = host.methods.get("vid").build({"init_var": 5.0})
    fresh.student_stages, fresh.teacher_stages = (1,), (1,)
    fresh.setup(kdbench.PairInfo(4, 10, [torch.Size(fs[1].shape)], [torch.Size(ft[1].shape)]))
    assert math.log1p(math.exp(fresh.log_scales[0][0].item())) + 1e-5 == pytest.approx(5.0, rel=1e-6)

    expected = 0.0
    for s, t, (w1, w2, w3), a in zip(fs, ft, weights, alphas):
        if s.shape[2] > t.shape[2]:
            s = avg_pool_to(s, t.shape[2])
        h = np.einsum("oc,nchw->nohw", w1, s)
        h = np.einsum("oc,nchw->nohw", w2, relu(h))
        mu = np.einsum("oc,nchw->nohw", w3, relu(h))
        var = np.log1p(np.exp(a)) + 1e-5
        expected += np.mean((t - mu) ** 2 / (2 * var[None, :, None, None]) + 0.5 * np.log(var)[None, :, None, None])
    batch = kdbench.Batch(torch.zeros(2, 3, 8, 8), torch.tensor(LABELS), torch.arange(2),
                          kdbench.Outputs(f32(LOGITS_S), [f32(x) for x in fs]),
                          kdbench.Outputs(f32(LOGITS_T), [f32(x) for x in ft]), 0, 0)
    terms = d.loss_terms(batch)
    assert set(terms) == {"ce", "vid"}
    assert terms["vid"].item() == pytest.approx(2.0 * expected, rel=1e-5)
    assert terms["ce"].item() == pytest.approx(cross_entropy(LOGITS_S, LABELS), rel=1e-5)


def test_vid_taps_every_stage_after_the_stem():
    import timm

    import kdbench_plugins.cifar_models  # noqa: F401
    d = kdbench.testing.make_host().methods.get("vid").build({})
    d.check_pair(timm.create_model("resnet8", num_classes=10), timm.create_model("vgg8", num_classes=10))
    assert list(d.student_stages) == [1, 2, 3] and list(d.teacher_stages) == [2, 3, 4]
    vit = timm.create_model("test_vit", num_classes=10, img_size=32)
    with pytest.raises(kdbench.NotApplicableError, match="vision transformer"):
        d.check_pair(vit, timm.create_model("resnet8", num_classes=10))


def test_contract(host):
    report = check_method("vid", host=host, end_to_end=False)
    assert set(report.terms) == {"ce", "vid"} and report.extra_params > 0
