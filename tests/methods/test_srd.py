"""SRD (Yang et al. ICLR 2021, the authors' SRD_ossl code) against a numpy computation, and the
contract check.

r = ReLU(BN(W f_S)) (1×1 connector), L_FM = mean_{n,c} (mean_hw r - mean_hw f_T)²,
L_SR = mean_{n,k} (W_T mean_hw r + b_T - z_T)²;  L = CE + beta (fm_weight L_FM + sr_weight L_SR).
"""
from __future__ import annotations

import numpy as np
import pytest
import timm
import torch

import kdbench
from kdbench.testing import check_method, make_host

from _feature_numpy import bn_eval, cross_entropy, relu

rng = np.random.default_rng(29)


@pytest.fixture(scope="module")
def host():
    return make_host()


def f32(a):
    return torch.tensor(a, dtype=torch.float32)


def test_srd_matches_feature_and_softmax_regression_by_hand(host):
    n, cs, ct, k = 3, 4, 5, 6
    fs, ft = rng.normal(size=(n, cs, 2, 2)), rng.normal(size=(n, ct, 2, 2))
    w, wt, bt = rng.normal(size=(ct, cs)), rng.normal(size=(k, ct)), rng.normal(size=k)
    z_t, z_s = rng.normal(size=(n, k)), rng.normal(size=(n, k))
    d = host.methods.get("srd").build({"beta": 2.0, "fm_weight": 3.0})
    d.setup(kdbench.PairInfo(k, 10, [], [], student_dim=cs, teacher_dim=ct))
    d.eval()
    with torch.no_grad():
        d.connector[0].weight.copy_(f32(w)[:, :, None, None])
    fc = torch.nn.Linear(ct, k).requires_grad_(False)
    with torch.no_grad():
        fc.weight.copy_(f32(wt)), fc.bias.copy_(f32(bt))
    r = relu(bn_eval(np.einsum("oc,nchw->nohw", w, fs)))
    fm = np.mean((r.mean((2, 3)) - ft.mean((2, 3))) ** 2)
    sr = np.mean((r.mean((2, 3)) @ wt.T + bt - z_t) ** 2)
    head = lambda m: fc(m.mean((2, 3)))  # noqa: E731  (a timm head: average pooling, then the classifier)
    batch = kdbench.Batch(torch.zeros(n, 3, 4, 4), torch.tensor([0, 5, 2]), torch.arange(n),
                          kdbench.Outputs(f32(z_s), final_map=f32(fs)),
                          kdbench.Outputs(f32(z_t), final_map=f32(ft), head=head, classifier=fc), 0, 0)
    terms = d.loss_terms(batch)
    assert set(terms) == {"ce", "srd_fm", "srd_sr"}
    assert terms["srd_fm"].item() == pytest.approx(2.0 * 3.0 * fm, rel=1e-5)
    assert terms["srd_sr"].item() == pytest.approx(2.0 * sr, rel=1e-5)
    assert terms["ce"].item() == pytest.approx(cross_entropy(z_s, [0, 5, 2]), rel=1e-5)
    terms["srd_sr"].backward()
    assert d.connector[0].weight.grad is not None and fc.weight.grad is None  # through the teacher's head, not into it


def test_srd_refuses_a_teacher_without_a_linear_classifier(host):
    teacher = timm.create_model("test_resnet", num_classes=10)
    teacher.reset_classifier(0)  # no classifier left
    with pytest.raises(kdbench.NotApplicableError, match="classifier"):
        host.methods.get("srd").build({}).check_pair(timm.create_model("test_resnet", num_classes=10), teacher)


def test_contract(host):
    report = check_method("srd", host=host, end_to_end=False)
    assert set(report.terms) == {"ce", "srd_fm", "srd_sr"} and report.extra_params > 0
