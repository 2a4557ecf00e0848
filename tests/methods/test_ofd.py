"""OFD (Heo et al. ICCV 2019) against a scipy/numpy computation of the margins and the partial L2
distance, the pre-ReLU taps it needs, its refusals, and the contract check.

m_c = beta - |gamma| φ(beta/|gamma|) / Φ(-beta/|gamma|) if Φ(-beta/|gamma|) > 0.001 else -3|gamma|;
d = Σ_{c,h,w} (r(s) - max(t, m))² [r(s) > max(t, m) or t > 0] / N;  L = CE + w Σ_i d_i / 2^(n-1-i).
"""
from __future__ import annotations


import numpy as np
import pytest
import timm
import torch
from scipy.stats import norm

import kdbench
import kdbench_plugins.cifar_models  # noqa: F401  (registers the CIFAR networks)
from kdbench.testing import check_method, make_host

from _feature_numpy import avg_pool_to, bn_eval, cross_entropy

rng = np.random.default_rng(23)


@pytest.fixture(scope="module")
def host():
    return make_host()


def f32(a):
    return torch.tensor(a, dtype=torch.float32)


def margin_by_hand(gamma, beta):
    out = []
    for g, b in zip(np.abs(gamma), beta):
        if g == 0:
            out.append(min(b, 0.0))  # the formula's limit: a constant response b
        elif norm.cdf(-b / g) > 0.001:
            out.append(b - g * norm.pdf(b / g) / norm.cdf(-b / g))
        else:
            out.append(-3 * g)
    return np.array(out)


def test_margins_come_from_the_teachers_bn_before_relu(host):
    teacher, student = timm.create_model("resnet8", num_classes=10), timm.create_model("resnet8", num_classes=10)
    expected = []
    with torch.no_grad():
        for layer in (teacher.layer1, teacher.layer2, teacher.layer3):
            bn = layer[-1].bn2
            gamma, beta = rng.normal(size=bn.num_features), rng.normal(size=bn.num_features)
            gamma[:3], beta[:3] = [0.0, 0.0, 0.1], [-0.5, 0.7, 2.0]  # zero scale (both signs); Φ(-20) < 0.001
            bn.weight.copy_(f32(gamma)), bn.bias.copy_(f32(beta))
            expected.append(margin_by_hand(gamma, beta))
    d = host.methods.get("ofd").build({})
    d.check_pair(student, teacher)
    assert list(d.teacher_stages) == [1, 2, 3]
    for k, m in enumerate(expected):
        got = getattr(d, f"margin{k}").flatten().numpy()
        np.testing.assert_allclose(got, m, rtol=1e-5, atol=1e-7)
    assert expected[0][2] == pytest.approx(-0.3) and expected[0][0] == -0.5 and expected[0][1] == 0.0
    # nothing of the teacher is kept: no submodule, no parameter, only the margin buffers
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in d.modules())


def test_ofd_matches_the_partial_l2_by_hand(host):
    n = 2
    fs = [rng.normal(size=(n, 2, 2, 2)), rng.normal(size=(n, 3, 2, 2))]
    ft = [rng.normal(size=(n, 3, 4, 4)), rng.normal(size=(n, 2, 2, 2))]  # stage 0: the teacher's map is pooled
    margins = [-np.abs(rng.normal(size=3)), -np.abs(rng.normal(size=2))]
    d = host.methods.get("ofd").build({"weight": 1e-3})
    d.student_stages, d.teacher_stages = (1, 2), (1, 2)
    for k, m in enumerate(margins):
        d.register_buffer(f"margin{k}", f32(m).view(1, -1, 1, 1))
    d.setup(kdbench.PairInfo(3, 10, [torch.Size(f.shape) for f in fs], [torch.Size(f.shape) for f in ft]))
    d.eval()
    ws = []
    for conn, s, t in zip(d.connectors, fs, ft):
        w = rng.normal(size=(t.shape[1], s.shape[1]))
        with torch.no_grad():
            conn[0].weight.copy_(f32(w)[:, :, None, None])
        ws.append(w)
    total = 0.0
    for i, (s, t, m, w) in enumerate(zip(fs, ft, margins, ws)):
        r = bn_eval(np.einsum("oc,nchw->nohw", w, s))
        t = avg_pool_to(t, r.shape[2]) if t.shape[2] != r.shape[2] else t
        target = np.maximum(t, m[None, :, None, None])
        mask = (r > target) | (t > 0)
        total += ((r - target) ** 2 * mask).sum() / n / 2 ** (1 - i)
    logits = rng.normal(size=(n, 3))
    batch = kdbench.Batch(torch.zeros(n, 3, 8, 8), torch.tensor([1, 0]), torch.arange(n),
                          kdbench.Outputs(f32(logits), [f32(x) for x in fs]),
                          kdbench.Outputs(f32(rng.normal(size=(n, 3))), [f32(x) for x in ft]), 0, 0)
    terms = d.loss_terms(batch)
    assert set(terms) == {"ce", "ofd"}
    assert terms["ofd"].item() == pytest.approx(1e-3 * total, rel=1e-5)
    assert terms["ce"].item() == pytest.approx(cross_entropy(logits, [1, 0]), rel=1e-5)


@pytest.mark.parametrize("arch", ["resnet8", "resnet50_cifar", "vgg8", "shufflev1", "shufflev2", "test_resnet"])
def test_pre_relu_taps_are_the_maps_before_the_stage_relu(arch):
    from kdbench.engine.models import forward_with_taps

    torch.manual_seed(0)
    model = timm.create_model(arch, num_classes=10).eval()
    with torch.no_grad():  # timm zero-initialises the last BN of its blocks: give every BN a random scale and shift
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.normal_(), m.bias.normal_()
    x = torch.randn(2, 3, 32, 32)
    taps = list(range(len(model.feature_info)))
    post = forward_with_taps(model, x, taps).features
    pre = forward_with_taps(model, x, taps, preact=True).features
    for a, b in zip(post, pre):
        assert (b < 0).any()
        torch.testing.assert_close(a, torch.relu(b))


def test_wrn_pre_relu_taps_are_the_next_batchnorm_of_the_stage_output():
    from kdbench.engine.models import forward_with_taps

    model = timm.create_model("wrn_16_2", num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    post = forward_with_taps(model, x, [1, 2, 3]).features
    pre = forward_with_taps(model, x, [1, 2, 3], preact=True).features
    for f, b, bn in zip(post, pre, model.get_bn_before_relu()):
        torch.testing.assert_close(b, bn(f))


def test_ofd_refuses_teachers_it_cannot_serve(host):
    d = host.methods.get("ofd").build({})
    student = timm.create_model("resnet8", num_classes=10)
    with pytest.raises(kdbench.NotApplicableError, match="BatchNorm before"):
        d.check_pair(student, timm.create_model("shufflev1", num_classes=10))  # as in mdistiller: no margins
    with pytest.raises(kdbench.NotApplicableError, match="vision transformer"):
        d.check_pair(timm.create_model("test_vit", num_classes=10, img_size=32), student)

    class Plain(torch.nn.Module):  # a feature API without pre-activation taps, not a timm model
        feature_info = [{"num_chs": 3, "reduction": 1, "module": "a"}, {"num_chs": 3, "reduction": 2, "module": "b"}]

        def forward_intermediates(self, x, indices=None):
            return x, [x]

    with pytest.raises(kdbench.NotApplicableError, match="pre-ReLU"):
        d.check_pair(Plain(), student)


def test_contract(host):
    # tiny pair: a timm ResNet teacher (BN before ReLU: the last block's bn2; pre-ReLU taps by hooks) and a timm
    # EfficientNet student (linear bottlenecks: already pre-activation)
    report = check_method("ofd", host=host, end_to_end=False)
    assert set(report.terms) == {"ce", "ofd"} and report.terms["ofd"] > 0 and report.extra_params > 0
