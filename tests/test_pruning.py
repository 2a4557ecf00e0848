"""Structured and unstructured pruning: shapes change, the model runs and reloads, sparsity is as asked."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import kdbench
import kdbench_plugins.cifar_models  # noqa: F401  (registers resnet8 into timm)
from kdbench.core.config import Recipe
from kdbench.engine.models import create_model
from kdbench.running.pipeline import standalone_context
from kdbench.testing import tiny_data
from kdbench_plugins.methods.prune import StructuredPrune, clone_model, load_pruned, prune_model, save_pruned
from kdbench_plugins.methods.prune_unstructured import UnstructuredPrune, prunable, sparsity_of

SIZE = (3, 32, 32)


def _ctx(arch: str, name: str = "prune", num_train: int = 32):
    data = tiny_data(num_train=num_train, num_test=16)
    recipe = Recipe(epochs=2, batch_size=16, eval_batch_size=16)
    return standalone_context(data, recipe, arch, arch_kwargs={"num_classes": 10, "in_chans": 3}, name=name)


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("arch, heads", [("test_resnet", False), ("resnet8", False), ("test_vit", False),
                                         ("test_vit", True)])
def test_structured_pruning_removes_channels_and_the_model_reloads(arch, heads, tmp_path):
    torch.manual_seed(0)
    model = create_model(arch, 10, SIZE).eval()
    before = _params(model)
    classifier = model.get_classifier()
    out_features = classifier.out_features
    prune_model(model, torch.randn(1, *SIZE), 0.5, heads=heads, round_to=8 if not heads else 1)
    after = _params(model)
    assert after < 0.4 * before  # half the channels on both sides of most weights: about a quarter is left
    assert model.get_classifier().out_features == out_features  # the classifier keeps every class
    x = torch.randn(3, *SIZE)
    y = model(x)
    assert y.shape == (3, 10) and torch.isfinite(y).all()
    if heads:  # whole heads went: each attention keeps its head width and has fewer heads
        attn = model.blocks[0].attn
        assert attn.num_heads == 1 and attn.head_dim == 32 and attn.qkv.out_features == 96

    path = tmp_path / "pruned.pt"
    save_pruned(model, str(path), arch, {"num_classes": 10, "in_chans": 3}, SIZE)
    torch.load(path, weights_only=True)  # a plain, safe record
    loaded = load_pruned(str(path))
    assert _params(loaded) == after
    assert [p.shape for p in loaded.parameters()] == [p.shape for p in model.parameters()]
    assert torch.allclose(loaded(x), y, atol=1e-6)


def test_prune_stage_reports_before_after_and_fine_tunes_with_kd_from_the_unpruned_model():
    ctx = _ctx("test_resnet")
    model = create_model("test_resnet", 10, SIZE).eval()
    stage = StructuredPrune(ratio=0.5, finetune="kd", finetune_epochs=1, importance="taylor", taylor_batches=1)
    pruned = stage.apply(model, ctx)
    m = ctx.metrics
    assert m["params_after"] < m["params_before"] and m["macs_after"] < m["macs_before"]
    assert m["params_ratio"] == pytest.approx(m["params_after"] / m["params_before"])
    assert {"top1_before", "top1_pruned", "finetune_epochs"} <= set(m)
    assert pruned(torch.randn(2, *SIZE)).shape == (2, 10)


@pytest.mark.parametrize("options, message", [
    ({"ratio": 1.5}, "ratio"), ({"importance": "random"}, "importance"), ({"finetune": "sometimes"}, "finetune"),
])
def test_bad_prune_options_are_one_line_config_errors(options, message):
    with pytest.raises(kdbench.ConfigError, match=message):
        StructuredPrune(**options)


def test_bn_scale_importance_needs_batchnorm():
    ctx = _ctx("test_vit")
    model = create_model("test_vit", 10, SIZE).eval()
    with pytest.raises(kdbench.NotApplicableError, match="BatchNorm"):
        StructuredPrune(importance="bn_scale", finetune="none").apply(model, ctx)


@pytest.mark.parametrize("sparsity", [0.3, 0.7])
def test_unstructured_sparsity_matches_the_ratio_and_is_permanent(sparsity):
    ctx = _ctx("test_resnet", "prune_unstructured")
    model = create_model("test_resnet", 10, SIZE).eval()
    total = _params(model)
    stage = UnstructuredPrune(sparsity=sparsity, finetune="plain", finetune_epochs=1)
    pruned = stage.apply(model, ctx)
    layers = prunable(pruned)
    assert sparsity_of(layers) == pytest.approx(sparsity, abs=0.005)  # masked weights stayed zero through training
    assert ctx.metrics["sparsity"] == pytest.approx(sparsity, abs=0.005)
    assert _params(pruned) == total  # dense tensors: nothing removed
    assert ctx.metrics["params_nonzero"] < total * (1 - sparsity * 0.9)
    for module, _ in layers:  # permanent: no mask, no reparametrisation left
        assert not hasattr(module, "weight_orig") and not hasattr(module, "weight_mask")
        assert not module._forward_pre_hooks
    assert not stage.deployment(pruned).speedup


def test_clone_model_is_independent_even_when_forward_closes_over_self():
    ctx = _ctx("resnet8")
    model = create_model("resnet8", 10, SIZE).eval()
    x = torch.randn(2, *SIZE)
    copy_ = clone_model(model, ctx)
    expected = copy_(x)
    prune_model(model, torch.randn(1, *SIZE), 0.5)  # the original changes shape: the clone must not
    assert torch.equal(copy_(x), expected)
