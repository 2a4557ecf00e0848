"""FT (Kim et al. NeurIPS 2018) against a numpy computation of the paraphraser's reconstruction loss
(pre-training) and of the factor-transfer loss, the host's pre-training phase it relies on, and the
contract check end to end (pre-training logged as its own epochs).

pre-training: mean |P(t) - t| (authors; RepDistiller: mean (P(t) - t)²);
training: CE + beta · mean |F_S/||F_S|| - F_T/||F_T|||, F flattened (authors) or
F = vec(mean_c F_c²) (RepDistiller's variant); F_T = enc(t), F_S = translator(s).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import kdbench
from kdbench.testing import check_method, make_host

from _feature_numpy import bn_eval, conv2d, conv_transpose2d, cross_entropy, leaky_relu

rng = np.random.default_rng(24)


@pytest.fixture(scope="module")
def host():
    return make_host()


def f32(a):
    return torch.tensor(a, dtype=torch.float32)


def load(seq, bn: bool):
    """Random weights into a conv stack; returns the numpy (w, b) of each convolution."""
    out = []
    with torch.no_grad():
        for m in seq:
            if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
                w, b = rng.normal(size=m.weight.shape) * 0.5, rng.normal(size=m.bias.shape) * 0.1
                m.weight.copy_(f32(w)), m.bias.copy_(f32(b))
                out.append((type(m).__name__, w, b))
    return out


def run_stack(x, convs, bn: bool):
    for kind, w, b in convs:
        x = conv2d(x, w, b, padding=1) if kind == "Conv2d" else conv_transpose2d(x, w, b, padding=1)
        x = leaky_relu(bn_eval(x) if bn else x)
    return x


def unit_rows(v):
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.mark.parametrize("variant", ["authors", "repdistiller"])
def test_ft_matches_the_factor_losses_by_hand(host, variant):
    n, s, t = 2, rng.normal(size=(2, 3, 3, 3)), rng.normal(size=(2, 4, 3, 3))
    d = host.methods.get("ft").build({"variant": variant})
    assert (d.beta, d.pretrain_epochs, d.pretrain_lr) == ((500.0, 6, None) if variant == "authors" else (200.0, 30, 0.01))
    d.setup(kdbench.PairInfo(3, 10, [torch.Size(s.shape)], [torch.Size(t.shape)]))
    d.eval()
    enc, dec = load(d.paraphraser.encoder, False), load(d.paraphraser.decoder, False)
    tr = load(d.translator, d.translator_bn)
    assert [w.shape[0] for _, w, _ in enc] == [4, 2, 2]  # rate 0.5: factor of 2 channels

    logits = rng.normal(size=(n, 3))
    batch = kdbench.Batch(torch.zeros(n, 3, 8, 8), torch.tensor([2, 1]), torch.arange(n),
                          kdbench.Outputs(f32(logits), [f32(s)]), kdbench.Outputs(f32(logits[::-1].copy()), [f32(t)]), 0, 0)
    # pre-training: the paraphraser reconstructs the teacher's map
    rec = run_stack(run_stack(t, enc, False), dec, False)
    expected_rec = np.mean(np.abs(rec - t)) if variant == "authors" else np.mean((rec - t) ** 2)
    pre = d.pretrain_terms(batch)
    assert set(pre) == {"paraphraser"}
    assert pre["paraphraser"].item() == pytest.approx(expected_rec, rel=1e-5)
    assert pre["paraphraser"].requires_grad

    d.end_pretrain()
    assert not any(p.requires_grad for p in d.paraphraser.parameters())
    f_t, f_s = run_stack(t, enc, False), run_stack(s, tr, d.translator_bn)
    if variant == "authors":
        v_t, v_s = f_t.reshape(n, -1), f_s.reshape(n, -1)
    else:
        v_t, v_s = (f_t ** 2).mean(1).reshape(n, -1), (f_s ** 2).mean(1).reshape(n, -1)
    expected = np.mean(np.abs(unit_rows(v_s) - unit_rows(v_t)))
    terms = d.loss_terms(batch)
    assert set(terms) == {"ce", "ft"}
    assert terms["ft"].item() == pytest.approx(d.beta * expected, rel=1e-5)
    assert terms["ce"].item() == pytest.approx(cross_entropy(logits, [2, 1]), rel=1e-5)


def test_the_loop_pretrains_the_paraphraser_alone_then_trains_with_it_frozen(host):
    """The host's pre-training phase: only the distiller's parameters move, the student stays, its epochs are apart."""
    import timm

    from kdbench.core.config import Recipe
    from kdbench.engine.loop import train
    from kdbench_plugins.datasets import build_glyphs

    torch.manual_seed(0)
    data = build_glyphs(num_train=64, num_test=32)
    teacher = timm.create_model("test_resnet", num_classes=10).eval()
    student = timm.create_model("test_efficientnet", num_classes=10)
    d = host.methods.get("ft").build({"pretrain_epochs": 2})
    d.check_pair(student, teacher)
    s0 = {k: v.clone() for k, v in student.state_dict().items()}
    snapshots = {}
    original_end, original_pre = d.end_pretrain, d.pretrain_terms

    def pretrain_terms(batch):
        snapshots.setdefault("paraphraser0", {k: v.clone() for k, v in d.paraphraser.state_dict().items()})
        return original_pre(batch)

    def end_pretrain():
        snapshots["student"] = {k: v.clone() for k, v in student.state_dict().items()}
        snapshots["paraphraser"] = {k: v.clone() for k, v in d.paraphraser.state_dict().items()}
        original_end()

    d.end_pretrain, d.pretrain_terms = end_pretrain, pretrain_terms
    seen = []
    result = train(student, d, teacher, data, Recipe(epochs=1, batch_size=32), torch.device("cpu"),
                   torch.Generator().manual_seed(0), on_epoch=seen.append)
    assert [r.phase for r in seen] == ["pretrain", "pretrain", "train"]
    assert len(result.pretrain) == 2 and len(result.history) == 1 and set(result.pretrain[0].terms) == {"paraphraser"}
    # pre-training moved the paraphraser, not the student (BN statistics included: it ran in eval mode)
    assert all(torch.equal(v, s0[k]) for k, v in snapshots["student"].items())
    assert any(not torch.equal(v, snapshots["paraphraser0"][k]) for k, v in snapshots["paraphraser"].items())
    # training moved the student and the translator, never the paraphraser again
    assert any(not torch.equal(v, s0[k]) for k, v in student.state_dict().items())
    assert all(torch.equal(v, snapshots["paraphraser"][k]) for k, v in d.paraphraser.state_dict().items())


def test_contract_end_to_end_logs_the_pretraining(kdbench_env, kdbench_host):
    from mlflow.tracking import MlflowClient

    host = kdbench_host()
    report = check_method("ft", host=host, options={"pretrain_epochs": 1})
    assert set(report.terms) == {"ce", "ft"} and report.extra_params > 0
    cell = report.cell
    assert cell.status == "FINISHED"
    metrics = MlflowClient().get_run(cell.run_id).data.metrics
    assert "pretrain.loss.paraphraser" in metrics and "pretrain.train_loss" in metrics
    assert not any(k.startswith("pretrain.test_") for k in metrics)
    assert "loss.ft" in metrics and "top1" in metrics
