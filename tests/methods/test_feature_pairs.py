"""Every feature-based distiller of the standard CIFAR-100 matrices applies to every pair of its suite (with
the pair's options): check_pair accepts it, setup builds, and one pre-training step (if any) and one training
step give finite losses with gradients, on the real CIFAR networks; FSP/KDSVD on cifar100-same-widths."""
from __future__ import annotations

import pytest
import timm
import torch

import kdbench_plugins.cifar_models  # noqa: F401
from kdbench.engine.loop import forward_terms, setup_distiller, trainable_params
from kdbench.testing import make_host, tiny_data

FEATURE_METHODS = {"vid", "reviewkd", "ofd", "ft", "ab", "cc", "srd", "catkd", "fsp", "kdsvd"}


@pytest.fixture(scope="module")
def host():
    return make_host()


def cells(suite_name):
    host = make_host()
    suite = host.suites.get(suite_name)
    for pair in suite.pairs:
        for method in suite.methods:
            if method.name in FEATURE_METHODS:
                extra = (pair.options.get("method_options") or {}).get(method.name) or {}
                yield pytest.param(pair.name, method.name, {**extra, **method.options}, id=f"{pair.name}-{method.name}")


@pytest.mark.parametrize("pair,name,options", [*cells("cifar100-standard"), *cells("cifar100-same-widths")])
def test_feature_method_applies_to_the_suite_pair(host, pair, name, options):
    torch.manual_seed(0)
    torch.set_num_threads(1)
    p = host.pairs.get(pair)
    data = tiny_data(num_train=4, num_classes=10)
    teacher = timm.create_model(p.teacher, num_classes=10).eval().requires_grad_(False)
    student = timm.create_model(p.student, num_classes=10)
    d = host.methods.get(name).build(options)
    d.check_pair(student, teacher)
    setup_distiller(d, student, teacher, data, torch.device("cpu"))
    images, targets = torch.stack([data.train[i][0] for i in range(4)]), torch.arange(4)
    phases = ([True] if d.pretrain_epochs > 0 else []) + [False]
    for pre in phases:
        if not pre:
            d.end_pretrain()
        student.train(not pre or d.pretrain_student)
        d.train()
        _, terms = forward_terms(student, teacher, d, images, targets, torch.arange(4), 5, 0, pretrain=pre)
        loss = sum(terms.values())
        assert torch.isfinite(loss) and loss.requires_grad, (pre, terms)
        loss.backward()
        params = trainable_params(student, d, pretrain=pre)
        assert all(torch.isfinite(q.grad).all() for q in params if q.grad is not None)
    assert all(q.grad is None for q in teacher.parameters())
