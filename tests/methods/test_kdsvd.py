"""KDSVD (Lee et al. ECCV 2018; RepDistiller's port) against a numpy computation (numpy's own SVD),
the pairs it refuses, and the contract check.

Per map: SVD of the HW×C matrix; teacher: first k right singular vectors (sign: largest entry
positive) and normalised singular values σ; student: first k+3, each teacher vector matched by the
student vector of largest |cos|, signed; ṽ = v σ_T; R = exp(-(ṽ^(i)_c - ṽ^(i-1)_c')² / 8);
L = CE + beta Σ_{i>=1} Σ (R_S - R_T)² / N.
"""
from __future__ import annotations

import numpy as np
import pytest
import timm
import torch

import kdbench
import kdbench_plugins.cifar_models  # noqa: F401
from kdbench.testing import check_method, make_host

from _feature_numpy import cross_entropy

rng = np.random.default_rng(28)


@pytest.fixture(scope="module")
def host():
    return make_host()


def f32(a):
    return torch.tensor(a, dtype=torch.float32)


def svd_np(f, n):
    sig, vs = [], []
    for img in f:
        c = img.shape[0]
        _, s, vh = np.linalg.svd(img.reshape(c, -1).T, full_matrices=False)
        v = vh.T[:, :n].copy()
        for j in range(v.shape[1]):
            if v[np.argmax(np.abs(v[:, j])), j] < 0:
                v[:, j] *= -1
        sig.append(s[:n] / np.linalg.norm(s[:n]))
        vs.append(v)
    return np.array(sig), np.array(vs)


def kdsvd_np(gs, gt, k):
    total, prev_s, prev_t = 0.0, None, None
    for fs, ft in zip(gs, gt):
        s_t, v_t = svd_np(ft, k)
        _, v_s = svd_np(fs, k + 3)
        aligned = np.zeros_like(v_t)
        for b in range(len(fs)):
            cos = v_s[b].T @ v_t[b]  # (n_s, k)
            for i in range(v_t.shape[2]):
                j = np.argmax(np.abs(cos[:, i]))
                aligned[b, :, i] = np.sign(cos[j, i]) * v_s[b, :, j]
        v_t, v_s = v_t * s_t[:, None, :], aligned * s_t[:, None, :]
        if prev_s is not None:
            rs = np.exp(-(v_s[:, :, None, :] - prev_s[:, None, :, :]) ** 2 / 8)
            rt = np.exp(-(v_t[:, :, None, :] - prev_t[:, None, :, :]) ** 2 / 8)
            total += ((rs - rt) ** 2).sum()
        prev_s, prev_t = v_s, v_t
    return total / len(gs[0])


def test_kdsvd_matches_the_svd_relations_by_hand(host):
    n = 2
    gs = [rng.normal(size=(n, 4, 3, 3)), rng.normal(size=(n, 5, 3, 3)), rng.normal(size=(n, 3, 2, 2))]
    gt = [rng.normal(size=(n, 4, 6, 6)), rng.normal(size=(n, 5, 3, 3)), rng.normal(size=(n, 3, 2, 2))]
    expected = kdsvd_np(gs, gt, k=1)
    assert expected > 0
    d = host.methods.get("kdsvd").build({"beta": 1.0})
    logits = rng.normal(size=(n, 3))
    batch = kdbench.Batch(torch.zeros(n, 3, 4, 4), torch.tensor([0, 2]), torch.arange(n),
                          kdbench.Outputs(f32(logits), [f32(x) for x in gs]),
                          kdbench.Outputs(f32(logits), [f32(x) for x in gt]), 0, 0)
    terms = d.loss_terms(batch)
    assert set(terms) == {"ce", "kdsvd"}
    assert terms["kdsvd"].item() == pytest.approx(expected, rel=1e-5)
    assert terms["ce"].item() == pytest.approx(cross_entropy(logits, [0, 2]), rel=1e-5)
    # the loss does not depend on the signs the SVD routine returns: flipping a teacher map changes nothing
    flipped = kdbench.Batch(batch.images, batch.targets, batch.indices, batch.student,
                            kdbench.Outputs(f32(logits), [f32(-x) for x in gt]), 0, 0)
    assert d.loss_terms(flipped)["kdsvd"].item() == pytest.approx(kdsvd_np(gs, [-x for x in gt], 1), rel=1e-5)


def test_kdsvd_needs_equal_channels(host):
    d = host.methods.get("kdsvd").build({})
    d.check_pair(timm.create_model("resnet8x4", num_classes=10), timm.create_model("resnet32x4", num_classes=10))
    assert list(d.student_stages) == [1, 2, 3]
    with pytest.raises(kdbench.NotApplicableError, match="same channels"):
        d.check_pair(timm.create_model("resnet8", num_classes=10), timm.create_model("resnet32x4", num_classes=10))


def test_contract(host):
    report = check_method("kdsvd", host=host, end_to_end=False, pair="resnet20-resnet8")
    assert set(report.terms) == {"ce", "kdsvd"}


def test_contract_with_kdbenchs_channel_adapter_on_the_tiny_pair(host):
    report = check_method("kdsvd", host=host, end_to_end=False, options={"connector": True})
    assert set(report.terms) == {"ce", "kdsvd"} and report.extra_params > 0
