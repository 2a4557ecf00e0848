"""MLKD (Jin et al. CVPR 2023) against a numpy computation of the authors' loss, its two-view input
through the host (a dataset's ``augment=weak+strong``), and the contract check.

The formula follows the authors' code (Jin-Ying/Multi-Level-Logit-Distillation, KD_ours.py): masks scale
the batch-mean terms by the fraction of samples (classes) at or below the median teacher confidence.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import kdbench
from kdbench.testing import check_method, make_host, run_tiny_suite

rng = np.random.default_rng(7)
B, C = 5, 4
SW, TW = rng.normal(size=(B, C)) * 2, rng.normal(size=(B, C)) * 2     # weak view: student, teacher logits
SS, TS = rng.normal(size=(B, C)) * 2, rng.normal(size=(B, C)) * 2     # strong view
Y = np.array([0, 1, 2, 3, 1])
TEMPS = [4.0, 3.0, 5.0, 2.0, 6.0]


@pytest.fixture(scope="module")
def host():
    return make_host()


def softmax(z, tau=1.0):
    e = np.exp(z / tau - (z / tau).max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def zscore(z):
    return (z - z.mean(axis=1, keepdims=True)) / (z.std(axis=1, ddof=1, keepdims=True) + 1e-7)


def ce(z, y):
    return float(np.mean(-np.log(softmax(z)[np.arange(len(y)), y])))


def ins(s, t, tau):   # tau^2 KL(p_t || p_s), mean over samples
    ps, pt = softmax(s, tau), softmax(t, tau)
    return float(np.mean((pt * np.log(pt / ps)).sum(axis=1)) * tau**2)


def bat(s, t, tau):   # ||G_t - G_s||_F^2 / B with G = P P^T
    ps, pt = softmax(s, tau), softmax(t, tau)
    return float(((pt @ pt.T - ps @ ps.T) ** 2).sum() / s.shape[0])


def cls(s, t, tau):   # ||M_t - M_s||_F^2 / C with M = P^T P
    ps, pt = softmax(s, tau), softmax(t, tau)
    return float(((pt.T @ pt - ps.T @ ps) ** 2).sum() / s.shape[1])


def below_median(v):
    return float(np.mean(v <= np.percentile(v, 50)))


def expected(T=4.0, ce_w=0.1, kd_w=0.9, strong=True, standardize=False):
    temps = [T] + TEMPS[1:]
    pt = softmax(TW)
    m, m_c = below_median(pt.max(axis=1)), below_median(pt.sum(axis=0))
    iw_s, iw_t = (zscore(SW), zscore(TW)) if standardize else (SW, TW)
    is_s, is_t = (zscore(SS), zscore(TS)) if standardize else (SS, TS)
    out = {
        "ce": ce_w * (ce(SW, Y) + (ce(SS, Y) if strong else 0.0)),
        "kd_weak": kd_w * m * sum(ins(iw_s, iw_t, t) for t in temps),
        "cc": kd_w * m_c * sum(cls(SW, TW, t) for t in temps),
        "bc": kd_w * m * sum(bat(SW, TW, t) for t in temps),
    }
    if strong:
        out["kd_strong"] = kd_w * (ins(is_s, is_t, T) + ins(is_s, is_t, 3.0) + ins(is_s, is_t, 5.0)
                                   + ins(iw_s, iw_t, 2.0) + ins(iw_s, iw_t, 6.0))
    return out


def make_batch(strong=True):
    f = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
    y = torch.tensor(Y)
    views = [kdbench.Batch(torch.zeros(B, 3, 4, 4), y, torch.arange(B), kdbench.Outputs(f(SS)), kdbench.Outputs(f(TS)), 0, 0)]
    return kdbench.Batch(torch.zeros(B, 3, 4, 4), y, torch.arange(B), kdbench.Outputs(f(SW)), kdbench.Outputs(f(TW)), 0, 0,
                         views=views if strong else [])


def build(host, **options):
    return host.methods.get("mlkd").build(options)


@pytest.mark.parametrize("strong", [True, False])
def test_mlkd_matches_the_authors_loss_by_hand(host, strong):
    want = expected(strong=strong)
    got = build(host).loss_terms(make_batch(strong))
    assert set(got) == set(want)
    for k in want:
        assert got[k].item() == pytest.approx(want[k], rel=1e-5), k
    # the masks really are fractions here (not all samples / classes below the median)
    pt = softmax(TW)
    assert 0 < below_median(pt.max(axis=1)) < 1 and 0 < below_median(pt.sum(axis=0)) < 1


def test_mlkd_with_logit_standardization(host):
    want = expected(T=2.0, kd_w=9.0, standardize=True)
    got = build(host, standardize=True, T=2.0, kd_weight=9.0).loss_terms(make_batch())
    for k in want:
        assert got[k].item() == pytest.approx(want[k], rel=1e-5), k


def test_contract(host):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # one-view data: mlkd says it skips the strong-view terms
        report = check_method("mlkd", host=host, end_to_end=False)
    assert set(report.terms) == {"ce", "kd_weak", "cc", "bc"} and report.extra_params == 0


def test_two_view_dataset_option(host):
    from torch.utils.data import DataLoader

    data = host.datasets.get("glyphs").build(num_train=16, num_test=8, augment="weak+strong")
    views, label, index = data.train[3]
    assert isinstance(views, list) and len(views) == 2 and index == 3
    assert views[0].shape == views[1].shape == (3, 32, 32) and not torch.equal(views[0], views[1])
    test_image, _, _ = data.test[3]
    assert torch.is_tensor(test_image)  # the test split is never augmented
    first, second = next(iter(DataLoader(data.train, batch_size=4)))[0]
    assert first.shape == second.shape == (4, 3, 32, 32)
    with pytest.raises(kdbench.DataError, match="augment must be one of"):
        host.datasets.get("glyphs").build(num_train=16, num_test=8, augment="heavy")


def test_two_views_reach_mlkd_through_the_host(kdbench_env, kdbench_host):
    """A one-epoch cell on glyphs(augment=weak+strong): the loop hands mlkd the strong view (loss.kd_strong)."""
    from mlflow.tracking import MlflowClient

    host = kdbench_host()
    result = run_tiny_suite(host, methods=["mlkd"],
                            datasets=["glyphs(num_train=64,num_test=32,augment=weak+strong)"])
    cell = result.result("mlkd")
    assert cell.status == "FINISHED"
    metrics = MlflowClient().get_run(cell.run_id).data.metrics
    assert {"loss.ce", "loss.kd_weak", "loss.cc", "loss.bc", "loss.kd_strong"} <= set(metrics)


def test_strong_augmentation_follows_pil_and_the_authors_op_list(host):
    """The geometric operations reproduce PIL's (the authors' pipeline) pixel for pixel; 14 ops, 2 per image."""
    from PIL import Image, ImageOps

    from kdbench_plugins._data import RandAugment, _affine_nearest, _posterize, _rotate, _solarize

    arr = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    pil, img = Image.fromarray(arr), torch.from_numpy(arr).permute(2, 0, 1)

    def same(a, b):
        return np.array_equal(np.asarray(a), b.permute(1, 2, 0).numpy())

    for v in (-0.3, 0.17, 0.3):
        assert same(pil.transform(pil.size, Image.AFFINE, (1, v, 0, 0, 1, 0)), _affine_nearest(img, (1, v, 0, 0, 1, 0)))
        assert same(pil.transform(pil.size, Image.AFFINE, (1, 0, 0, 0, 1, v * 32)), _affine_nearest(img, (1, 0, 0, 0, 1, v * 32)))
    for degrees in (-30.0, 12.5, 30.0):
        assert same(pil.rotate(degrees), _rotate(img, degrees))
    assert same(ImageOps.posterize(pil, 5), _posterize(img, 5.7))
    assert same(ImageOps.solarize(pil, 100), _solarize(img, 100.0))
    assert len(RandAugment().ops) == 14

    torch.manual_seed(0)
    strong = host.datasets.get("glyphs").build(num_train=16, num_test=8, augment="strong")
    torch.manual_seed(0)
    standard = host.datasets.get("glyphs").build(num_train=16, num_test=8)
    x_strong, x_std = strong.train[0][0], standard.train[0][0]
    assert x_strong.shape == x_std.shape and not torch.equal(x_strong, x_std)
