"""CAT-KD (Guo et al. CVPR 2023) against a numpy computation of the class-activation-map loss, and
the contract check.

M = W · f at every position (the classifier without its bias), pooled to R×R; optionally each class
map L2-normalised over its cells; L = CE + beta · mean (M_S - M_T)².
"""
from __future__ import annotations

import numpy as np
import pytest
import timm
import torch

import kdbench
from kdbench.testing import check_method, make_host

from _feature_numpy import avg_pool_to, cross_entropy

rng = np.random.default_rng(30)


@pytest.fixture(scope="module")
def host():
    return make_host()


def f32(a):
    return torch.tensor(a, dtype=torch.float32)


@pytest.mark.parametrize("normalize", [False, True])
def test_catkd_matches_the_cam_loss_by_hand(host, normalize):
    n, cs, ct, k, res = 2, 3, 4, 5, 2
    fs, ft = rng.normal(size=(n, cs, 4, 4)), rng.normal(size=(n, ct, 4, 4))
    ws, wt = rng.normal(size=(k, cs)), rng.normal(size=(k, ct))
    fc_s, fc_t = torch.nn.Linear(cs, k), torch.nn.Linear(ct, k).requires_grad_(False)
    with torch.no_grad():
        fc_s.weight.copy_(f32(ws)), fc_t.weight.copy_(f32(wt))
    cam_s = avg_pool_to(np.einsum("kc,nchw->nkhw", ws, fs), res)
    cam_t = avg_pool_to(np.einsum("kc,nchw->nkhw", wt, ft), res)
    if normalize:
        cam_s = cam_s / np.sqrt((cam_s ** 2).sum(axis=(2, 3), keepdims=True))
        cam_t = cam_t / np.sqrt((cam_t ** 2).sum(axis=(2, 3), keepdims=True))
    expected = np.mean((cam_s - cam_t) ** 2)
    d = host.methods.get("catkd").build({"beta": 15.0, "resolution": res, "normalize": normalize})
    logits = rng.normal(size=(n, k))
    batch = kdbench.Batch(torch.zeros(n, 3, 4, 4), torch.tensor([4, 1]), torch.arange(n),
                          kdbench.Outputs(f32(logits), final_map=f32(fs), classifier=fc_s),
                          kdbench.Outputs(f32(logits), final_map=f32(ft), classifier=fc_t), 0, 0)
    terms = d.loss_terms(batch)
    assert set(terms) == {"ce", "cat"}
    assert terms["cat"].item() == pytest.approx(15.0 * expected, rel=1e-5)
    assert terms["ce"].item() == pytest.approx(cross_entropy(logits, [4, 1]), rel=1e-5)
    terms["cat"].backward()
    assert fc_s.weight.grad is not None and fc_s.bias.grad is None  # CAMs train the student's classifier, no bias


def test_catkd_refuses_classifiers_that_are_not_linear_on_average_pooling(host):
    d = host.methods.get("catkd").build({})
    student = timm.create_model("test_resnet", num_classes=10)
    maxpooled = timm.create_model("test_resnet", num_classes=10, global_pool="max")
    with pytest.raises(kdbench.NotApplicableError, match="average-pooled"):
        d.check_pair(student, maxpooled)
    with pytest.raises(kdbench.NotApplicableError, match="classes"):
        d.check_pair(student, timm.create_model("test_resnet", num_classes=7))


def test_contract(host):
    report = check_method("catkd", host=host, end_to_end=False)
    assert set(report.terms) == {"ce", "cat"} and report.extra_params == 0
