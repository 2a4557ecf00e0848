"""ReviewKD (Chen et al. CVPR 2021) against a numpy computation of the review (ABF fusion, deep to
shallow) and of the hierarchical context loss, and the contract check.

ABF at level i: x = BN(W1 s_i); [a, b] = sigmoid(Wa [x, up(r)] + ba); r_i = a x + b up(r);
y_i = BN(conv3x3(resize(r_i, teacher size))). HCL(y, t) = (mse + Σ_l w_l mse(pool_l)) / (1 + Σ_l w_l),
w = ½, ¼, ⅛ for pool sizes 4, 2, 1 smaller than the map. BatchNorms in eval mode (fresh statistics).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import kdbench
from kdbench.testing import check_method, make_host

from _feature_numpy import avg_pool_to, bn_eval, conv2d, cross_entropy, nearest_to, sigmoid

rng = np.random.default_rng(22)


@pytest.fixture(scope="module")
def host():
    return make_host()


def f32(a):
    return torch.tensor(a, dtype=torch.float32)


def hcl(y, t):
    loss, w, tot = np.mean((y - t) ** 2), 1.0, 1.0
    for size in (4, 2, 1):
        if size >= y.shape[2]:
            continue
        w /= 2
        loss += w * np.mean((avg_pool_to(y, size) - avg_pool_to(t, size)) ** 2)
        tot += w
    return loss / tot


def test_reviewkd_matches_the_review_and_hcl_by_hand(host):
    n = 2
    s_feats = [rng.normal(size=(n, 2, 4, 4)), rng.normal(size=(n, 3, 2, 2))]
    s_pool = rng.normal(size=(n, 4))
    t_feats = [rng.normal(size=(n, 3, 8, 8)), rng.normal(size=(n, 2, 2, 2))]  # level 0: the teacher map is larger
    t_pool = rng.normal(size=(n, 5))
    d = host.methods.get("reviewkd").build({"weight": 5.0, "warmup": 20})
    d.student_stages, d.teacher_stages = (1, 2), (1, 2)
    d.setup(kdbench.PairInfo(3, 10, [torch.Size(f.shape) for f in s_feats], [torch.Size(f.shape) for f in t_feats],
                             student_dim=4, teacher_dim=5))
    d.eval()
    mid = min(512, 4)
    params = []
    for k, abf in enumerate(d.abfs):
        w1 = rng.normal(size=abf.conv1[0].weight.shape[:2])
        w2 = rng.normal(size=abf.conv2[0].weight.shape)
        p = {"w1": w1, "w2": w2}
        with torch.no_grad():
            abf.conv1[0].weight.copy_(f32(w1)[:, :, None, None])
            abf.conv2[0].weight.copy_(f32(w2))
            if abf.att_conv is not None:
                p["wa"], p["ba"] = rng.normal(size=(2, 2 * mid)), rng.normal(size=2)
                abf.att_conv[0].weight.copy_(f32(p["wa"])[:, :, None, None])
                abf.att_conv[0].bias.copy_(f32(p["ba"]))
        params.append(p)
    assert [abf.att_conv is not None for abf in d.abfs] == [True, True, False]  # the deepest level fuses nothing

    levels = s_feats + [s_pool[:, :, None, None]]
    targets = t_feats + [t_pool[:, :, None, None]]
    outs, residual = [None] * 3, None
    for k in (2, 1, 0):
        p, s = params[k], levels[k]
        x = bn_eval(np.einsum("oc,nchw->nohw", p["w1"], s))
        if residual is not None:
            up = nearest_to(residual, s.shape[2:])
            z = sigmoid(np.einsum("oc,nchw->nohw", p["wa"], np.concatenate([x, up], 1)) + p["ba"][None, :, None, None])
            x = x * z[:, 0:1] + up * z[:, 1:2]
        size = targets[k].shape[2:]
        if x.shape[2:] != size:
            x = nearest_to(x, size)
        outs[k] = bn_eval(conv2d(x, p["w2"], padding=1))
        residual = x
    expected = sum(hcl(y, t) for y, t in zip(outs, targets))

    def batch(epoch):
        return kdbench.Batch(
            torch.zeros(n, 3, 8, 8), torch.tensor([0, 2]), torch.arange(n),
            kdbench.Outputs(f32(rng.normal(size=(n, 3))), [f32(x) for x in s_feats], f32(s_pool)),
            kdbench.Outputs(f32(rng.normal(size=(n, 3))), [f32(x) for x in t_feats], f32(t_pool)), epoch, 0)

    b = batch(epoch=30)
    terms = d.loss_terms(b)
    assert set(terms) == {"ce", "reviewkd"}
    assert terms["reviewkd"].item() == pytest.approx(5.0 * expected, rel=1e-5)
    assert terms["ce"].item() == pytest.approx(cross_entropy(b.student.logits.numpy(), [0, 2]), rel=1e-5)
    # warm-up: the authors' min(epoch / 20, 1) with 0-based epochs
    assert d.loss_terms(batch(epoch=5))["reviewkd"].item() == pytest.approx(5.0 * 5 / 20 * expected, rel=1e-5)
    assert d.loss_terms(batch(epoch=0))["reviewkd"].item() == 0.0


def test_reviewkd_taps_the_teachers_pre_relu_features_only(host):
    d = host.methods.get("reviewkd").build({})
    assert d.teacher_preact and not d.student_preact and d.needs_pre_logits


def test_contract(host):
    report = check_method("reviewkd", host=host, end_to_end=False, epoch=25)
    assert set(report.terms) == {"ce", "reviewkd"} and report.terms["reviewkd"] > 0 and report.extra_params > 0
