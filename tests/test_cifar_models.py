"""The CIFAR networks of the distillation literature, registered into timm by a plugin."""
from __future__ import annotations

import subprocess
import sys

import pytest
import timm
import torch

import kdbench_plugins.cifar_models as cm
from kdbench.engine.models import create_model, forward_with_taps


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: these small models gain little from two, and lose ~10× on a shared machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

# Parameter counts at 100 classes, as the CRD/RepDistiller papers and model zoos report them (millions).
PUBLISHED_PARAMS_M = {
    "resnet8": 0.08, "resnet20": 0.28, "resnet32": 0.47, "resnet56": 0.86, "resnet110": 1.74,
    "resnet8x4": 1.23, "resnet32x4": 7.43, "wrn_16_2": 0.70, "wrn_40_1": 0.57, "wrn_40_2": 2.26,
    "vgg13_cifar": 9.46, "mobile_half": 0.81, "shufflev1": 0.95, "shufflev2": 1.36, "resnet50_cifar": 23.71,
}


@pytest.mark.parametrize("name", sorted(cm.FACTORIES))
def test_every_network_builds_through_timm_with_the_right_outputs_and_taps(name):
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=7, drop_rate=0.0, pretrained=False).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        logits = model(x)
        assert logits.shape == (2, 7)
        n = len(model.feature_info)
        out = forward_with_taps(model, x, [-1, 1], pre_logits=True)  # listed out of order on purpose
        final, feats = model.forward_intermediates(x)
    assert torch.allclose(out.logits, logits, atol=1e-5)
    # forward order, whatever order was asked for; channels and strides as feature_info says
    assert len(out.features) == 2
    for f, i in zip(out.features, [1, n - 1]):
        info = model.feature_info[i]
        assert f.shape[1] == info["num_chs"] and f.shape[-1] == 32 // info["reduction"]
    assert len(feats) == n  # indices=None: every stage
    assert torch.allclose(feats[1], out.features[0]) and torch.allclose(feats[-1], out.features[1])
    assert out.pre_logits.shape == (2, model.num_features)
    assert torch.allclose(model.forward_head(final), logits, atol=1e-5)
    assert torch.allclose(model.get_classifier()(out.pre_logits), logits, atol=1e-5)
    modules = dict(model.named_modules())
    assert model.pretrained_cfg["first_conv"] in modules and model.pretrained_cfg["classifier"] in modules


@pytest.mark.parametrize("name,millions", sorted(PUBLISHED_PARAMS_M.items()))
def test_parameter_counts_match_the_literature(name, millions):
    assert cm.param_count(name, num_classes=100) / 1e6 == pytest.approx(millions, abs=0.01)


def test_timm_conventions_for_options():
    m = timm.create_model("resnet8x4", num_classes=0, in_chans=1)
    assert m(torch.randn(1, 1, 32, 32)).shape == (1, 256)  # num_classes=0: pooled features, as timm
    m.reset_classifier(5)
    assert m(torch.randn(1, 1, 32, 32)).shape == (1, 5)
    with pytest.raises(RuntimeError, match="no pretrained weights"):
        timm.create_model("resnet8x4", pretrained=True)
    with pytest.raises(TypeError, match="img_size"):
        timm.create_model("resnet8x4", img_size=32)  # CNNs reject it, so kdbench's create_model retries without
    assert create_model("wrn_16_2", 10, (3, 32, 32))(torch.randn(1, 3, 32, 32)).shape == (1, 10)
    intermediates = timm.create_model("vgg8").forward_intermediates(torch.randn(1, 3, 32, 32), indices=2, intermediates_only=True)
    assert [f.shape[1] for f in intermediates] == [512, 512]  # int: the last n, as timm


def test_module_names_follow_repdistiller_so_published_checkpoints_load():
    keys = {
        "resnet8x4": ["conv1.weight", "bn1.running_mean", "layer1.0.downsample.0.weight", "layer3.0.conv2.weight", "fc.weight"],
        "wrn_40_2": ["conv1.weight", "block1.layer.0.bn1.weight", "block2.layer.0.convShortcut.weight", "bn1.weight", "fc.bias"],
        "vgg13_cifar": ["block0.0.weight", "block0.1.weight", "block4.4.running_var", "classifier.weight"],
        "mobile_half": ["conv1.0.weight", "blocks.1.0.conv.3.weight", "conv2.1.weight", "classifier.0.weight"],
        "shufflev1": ["conv1.weight", "layer1.0.conv1.weight", "layer3.3.bn3.weight", "linear.weight"],
        "shufflev2": ["layer1.0.conv5.weight", "layer2.1.conv3.weight", "conv2.weight", "bn2.weight", "linear.weight"],
        "resnet50_cifar": ["layer1.0.shortcut.0.weight", "layer4.2.conv3.weight", "linear.weight"],
    }
    for name, expected in keys.items():
        state = timm.create_model(name).state_dict()
        missing = [k for k in expected if k not in state]
        assert not missing, (name, missing)


def test_registration_happens_when_kdbench_loads_its_plugins_in_a_fresh_process():
    code = (
        "import timm; assert not timm.is_model('resnet8x4'); "
        "from kdbench.core.host import load_host; host = load_host(); "
        "m = timm.create_model('resnet8x4', num_classes=3); "
        "print(type(m).__name__, host.pairs.get('resnet32x4-resnet8x4').teacher)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["CifarResNet", "resnet32x4"]


def test_the_crd_tables_pairs_are_registered(kdbench_env):
    from kdbench.core.host import get_host

    host = get_host()
    for name, teacher, student, _ in cm.PAIRS:
        pair = host.pairs.get(name)
        assert (pair.teacher, pair.student) == (teacher, student)
        assert timm.is_model(teacher) and timm.is_model(student)
    assert host.pairs.get("vgg13-vgg8").teacher == "vgg13_cifar"  # timm's own vgg13 stays the ImageNet VGG
    assert type(timm.create_model("vgg13")).__module__.startswith("timm.")


@pytest.mark.parametrize("name", ["resnet8", "wrn_16_1", "vgg8", "mobile_half", "shufflev2"])
def test_deepcopy_gives_an_independent_model(name):
    import copy

    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=4).eval()
    clone = copy.deepcopy(model)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        before = model(x)
        for p in clone.parameters():
            p.mul_(0.5)
        assert torch.allclose(model(x), before)  # the copy never runs the original's layers, nor the reverse
        assert not torch.allclose(clone(x), before)
        feats = clone.forward_intermediates(x)[1]
        assert all(not torch.allclose(f, g) for f, g in zip(feats[1:], model.forward_intermediates(x)[1][1:]))
