"""CIFAR-style networks of the distillation literature, registered into timm.

The CRD benchmark (Tian et al. 2020, RepDistiller) and the methods compared
on it since (DKD, ReviewKD, DIST …) report CIFAR-100 results on small
CIFAR-specific networks that timm lacks. Importing this module registers them
with ``timm.models.register_model``, so every process that loads kdbench's
plugins can build them as ordinary timm names:

=================  ===========================================================
timm name          network (RepDistiller name), parameters at 100 classes
=================  ===========================================================
resnet8 … resnet110  CIFAR ResNet-{8,14,20,32,44,56,110}, basic blocks, 16-16-32-64 channels
resnet8x4          ResNet-8 with 4× channels (32-64-128-256), 1.23M
resnet32x4         ResNet-32 with 4× channels, 7.43M
wrn_16_1 … wrn_40_2  Wide ResNet-depth-width (pre-activation blocks)
vgg8               VGG-8 ("S" config) with BatchNorm, 3.97M
vgg11_cifar …      VGG-11/13/16/19 with BatchNorm (RepDistiller ``vgg13``; named
vgg19_cifar        ``*_cifar`` because timm's ``vgg13`` is the ImageNet VGG)
mobile_half        MobileNetV2, width 0.5, expansion 6 (RepDistiller ``mobile_half``)
shufflev1          ShuffleNetV1, groups 3 (RepDistiller ``ShuffleV1``)
shufflev2          ShuffleNetV2 1× (RepDistiller ``ShuffleV2``)
resnet50_cifar     ResNet-50 with a 3×3 stride-1 stem (RepDistiller ``ResNet50``)
=================  ===========================================================

Architectures follow RepDistiller's ``models/`` (the networks every CRD-style
table uses), with the same module names, so a RepDistiller or mdistiller
teacher checkpoint (``{"model": state_dict}``) loads with
``--teacher-checkpoint``. Deliberate differences: global average pooling is
adaptive (identical at 32×32 inputs); the VGG's fourth max-pool is applied
whenever the map entering the last block is larger than 4×4 (RepDistiller
tests ``input height == 64``; identical for 32 and 64); every network is
initialised the same way (He-normal fan-out convs, N(0, 0.01) classifier),
where RepDistiller leaves PyTorch's default for the ShuffleNets and the
ResNet classifiers.

Each model follows timm's feature API: ``feature_info`` lists the stem and
every stage; ``forward_intermediates(x, indices)`` returns
``(final_map, [stage outputs])`` with stage outputs equal to RepDistiller's
``feat[0..-2]`` (post-ReLU, as its distillers use them) and ``final_map`` the
map the classifier pools; ``forward_head(x, pre_logits=True)`` is
RepDistiller's ``feat[-1]``. ``forward_intermediates(x, indices, preact=True)`` (kdbench's
extension of the API, RepDistiller's/mdistiller's ``preact=True``) returns each
stage before the ReLU that ends it; ``get_bn_before_relu()`` returns, for every
stage after the stem, the BatchNorm whose affine parameters describe that
pre-ReLU map (OFD's margins), as in mdistiller's networks (ShuffleNets: none).
Construction accepts timm's keyword arguments
(``num_classes``, ``in_chans``, ``drop_rate``, ``global_pool='avg'``,
``pretrained=False``); there are no pretrained weights.

The module also registers the teacher→student pairs of the CRD tables.
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from timm.models import register_model
from timm.models._features import feature_take_indices
from torch import nn

import kdbench

CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)


def _cfg(**kwargs: Any) -> dict[str, Any]:
    return {
        "url": "", "num_classes": 100, "input_size": (3, 32, 32), "pool_size": None, "crop_pct": 1.0,
        "interpolation": "bilinear", "mean": CIFAR100_MEAN, "std": CIFAR100_STD,
        "first_conv": "conv1", "classifier": "fc", **kwargs,
    }


# --------------------------------------------------------------------------- timm plumbing


class CifarNet(nn.Module):
    """timm's classification-model interface over ``stem → stages → post → pool → classifier``.

    Subclasses build their layers, implement :meth:`taps` (the functions
    computing each feature, stem first) and, if the classifier pools something
    else than the last stage, :meth:`post`; then call :meth:`_finish` with the
    features' channels, strides and names and the classifier's attribute name.
    The taps are looked up on every call (never stored), so ``copy.deepcopy``
    and pickling give independent models.
    """

    _head_in_sequential = False

    def taps(self) -> list[Callable[[torch.Tensor], torch.Tensor]]:
        raise NotImplementedError

    def preact_taps(self) -> list[Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]]:
        """Like :meth:`taps`, each returning ``(output, output before the activation that ends the stage)``."""
        raise NotImplementedError

    def get_bn_before_relu(self) -> list[nn.BatchNorm2d]:
        """The BatchNorm before the final ReLU of every stage after the stem (mdistiller's convention)."""
        raise NotImplementedError(f"{type(self).__name__} names no BatchNorm before its stages' ReLUs")

    def post(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def _finish(
        self, channels: list[int], reductions: list[int], names: list[str], num_features: int, num_classes: int,
        drop_rate: float, classifier: str,
    ) -> None:
        self._classifier_name = classifier
        self.feature_info = [
            {"num_chs": c, "reduction": r, "module": n} for c, r, n in zip(channels, reductions, names)
        ]
        self.num_features = self.head_hidden_size = num_features
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        self.global_pool = "avg"
        self.reset_classifier(num_classes)
        self._init_weights()

    # -- timm API ---------------------------------------------------------
    def get_classifier(self) -> nn.Module:
        return getattr(self, self._classifier_name)

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        if global_pool not in (None, "avg"):
            raise ValueError(f"{type(self).__name__} supports only global_pool='avg', got {global_pool!r}")
        self.num_classes = num_classes
        head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        if isinstance(head, nn.Linear):
            nn.init.normal_(head.weight, 0, 0.01)
            nn.init.zeros_(head.bias)
        if self._head_in_sequential:
            head = nn.Sequential(head)  # RepDistiller's name: classifier.0
        setattr(self, self._classifier_name, head)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        for tap in self.taps():
            x = tap(x)
        return self.post(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        if self.drop_rate > 0:
            x = F.dropout(x, p=self.drop_rate, training=self.training)
        return x if pre_logits else self.get_classifier()(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(
        self, x: torch.Tensor, indices: int | list[int] | None = None, norm: bool = False, stop_early: bool = False,
        output_fmt: str = "NCHW", intermediates_only: bool = False, preact: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """timm's contract: the stage outputs at ``indices`` (forward order) and the final map.

        ``preact=True``: each returned stage output is taken before the ReLU that ends it.
        """
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt must be 'NCHW', got {output_fmt!r}")
        taps = self.taps()
        pre_taps = self.preact_taps() if preact else taps
        take, max_index = feature_take_indices(len(taps), indices)
        intermediates = []
        for i, tap in enumerate(taps[: max_index + 1] if (stop_early or intermediates_only) else taps):
            if preact and i in take:
                x, pre = pre_taps[i](x)
                intermediates.append(pre)
                continue
            x = tap(x)
            if i in take:
                intermediates.append(x)
        if intermediates_only:
            return intermediates
        return self.post(x), intermediates

    def _init_weights(self) -> None:
        """RepDistiller's initialisation: He-normal convs (fan-out), unit BN, N(0, 0.01) classifier."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)


def _conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1, relu: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def _sequential_preact(blocks: nn.Sequential) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """A stage of blocks whose last one has ``forward_preact``: (output, the last block's pre-ReLU sum)."""

    def run(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        for block in blocks[:-1]:
            x = block(x)
        return blocks[-1].forward_preact(x)

    return run


def _conv_bn_preact(conv: nn.Module, bn: nn.Module) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    def run(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pre = bn(conv(x))
        return F.relu(pre), pre

    return run


# --------------------------------------------------------------------------- CIFAR ResNet


class BasicBlock(nn.Module):
    """conv3×3-BN-ReLU-conv3×3-BN, plus the (projected) input, then ReLU."""

    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or cin != planes:
            self.downsample = nn.Sequential(nn.Conv2d(cin, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward_preact(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = F.relu(self.bn1(self.conv1(x)))
        pre = self.bn2(self.conv2(out)) + (x if self.downsample is None else self.downsample(x))
        return F.relu(pre), pre

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class CifarResNet(CifarNet):
    """He et al. 2016's CIFAR ResNet: 3×3 stem, three stages of (depth-2)/6 basic blocks."""

    def __init__(self, depth: int, widths: tuple[int, int, int, int], num_classes: int = 100, in_chans: int = 3,
                 drop_rate: float = 0.0):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_chans, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        cin = widths[0]
        for i, (planes, stride) in enumerate(zip(widths[1:], (1, 2, 2)), start=1):
            blocks = [BasicBlock(cin if j == 0 else planes, planes, stride if j == 0 else 1) for j in range(n)]
            setattr(self, f"layer{i}", nn.Sequential(*blocks))
            cin = planes
        self._finish(list(widths), [1, 1, 2, 4], ["bn1", "layer1", "layer2", "layer3"], widths[3], num_classes, drop_rate, "fc")

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn1(self.conv1(x)))

    def taps(self):
        return [self.stem, self.layer1, self.layer2, self.layer3]

    def preact_taps(self):
        return [_conv_bn_preact(self.conv1, self.bn1)] + [_sequential_preact(s) for s in (self.layer1, self.layer2, self.layer3)]

    def get_bn_before_relu(self):
        return [s[-1].bn2 for s in (self.layer1, self.layer2, self.layer3)]


# --------------------------------------------------------------------------- Wide ResNet


class WideBlock(nn.Module):
    """Pre-activation block: BN-ReLU-conv3×3-BN-ReLU-conv3×3, identity or 1×1 projection shortcut."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.equal = cin == cout
        self.convShortcut = None if self.equal else nn.Conv2d(cin, cout, 1, stride, 0, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = F.relu(self.bn1(x))
        out = self.conv2(F.relu(self.bn2(self.conv1(pre))))
        # the projection shortcut sees the pre-activated input, the identity the raw one
        return out + (x if self.equal else self.convShortcut(pre))


class _WideGroup(nn.Module):
    def __init__(self, n: int, cin: int, cout: int, stride: int):
        super().__init__()
        self.layer = nn.Sequential(*[WideBlock(cin if i == 0 else cout, cout, stride if i == 0 else 1) for i in range(n)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(CifarNet):
    """Zagoruyko & Komodakis 2016: WRN-depth-k, three groups of (depth-4)/6 pre-activation blocks."""

    def __init__(self, depth: int, widen: int, num_classes: int = 100, in_chans: int = 3, drop_rate: float = 0.0):
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"WRN depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        ch = [16, 16 * widen, 32 * widen, 64 * widen]
        self.conv1 = nn.Conv2d(in_chans, ch[0], 3, 1, 1, bias=False)
        self.block1 = _WideGroup(n, ch[0], ch[1], 1)
        self.block2 = _WideGroup(n, ch[1], ch[2], 2)
        self.block3 = _WideGroup(n, ch[2], ch[3], 2)
        self.bn1 = nn.BatchNorm2d(ch[3])
        self._finish(ch, [1, 1, 2, 4], ["conv1", "block1", "block2", "block3"], ch[3], num_classes, drop_rate, "fc")

    def taps(self):  # stage outputs as RepDistiller's feat[0..3] (raw block outputs)
        return [self.conv1, self.block1, self.block2, self.block3]

    def get_bn_before_relu(self):  # pre-activation blocks: the BN that next normalises each stage's output
        return [self.block2.layer[0].bn1, self.block3.layer[0].bn1, self.bn1]

    def preact_taps(self):
        # a stage's pre-ReLU map is its output through the BN that precedes the next ReLU (OFD's and
        # mdistiller's WRN: block2.layer[0].bn1(f1), block3.layer[0].bn1(f2), bn1(f3)); the stem likewise
        bns = [self.block1.layer[0].bn1, *self.get_bn_before_relu()]

        def tap(f, bn):
            def run(x):
                out = f(x)
                return out, bn(out)
            return run

        return [tap(f, bn) for f, bn in zip(self.taps(), bns)]

    def post(self, x: torch.Tensor) -> torch.Tensor:  # the final BN-ReLU, before pooling
        return F.relu(self.bn1(x))


# --------------------------------------------------------------------------- VGG


VGG_CFGS = {
    8: [[64], [128], [256], [512], [512]],
    11: [[64], [128], [256, 256], [512, 512], [512, 512]],
    13: [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
    16: [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]],
    19: [[64, 64], [128, 128], [256, 256, 256, 256], [512, 512, 512, 512], [512, 512, 512, 512]],
}


class CifarVGG(CifarNet):
    """VGG with BatchNorm for 32×32 inputs: five conv blocks, max-pool between them, no FC layers."""

    def __init__(self, depth: int, num_classes: int = 100, in_chans: int = 3, drop_rate: float = 0.0):
        super().__init__()
        cfg = VGG_CFGS[depth]
        cin = in_chans
        for i, widths in enumerate(cfg):
            layers: list[nn.Module] = []
            for w in widths:
                layers += [nn.Conv2d(cin, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
                cin = w
            setattr(self, f"block{i}", nn.Sequential(*layers[:-1]))  # the block's last ReLU is applied outside
        self._finish(
            [w[-1] for w in cfg], [1, 2, 4, 8, 8], [f"block{i}" for i in range(5)], 512, num_classes, drop_rate, "classifier",
        )

    def _stage(self, i: int, x: torch.Tensor) -> torch.Tensor:
        # max-pool before blocks 1-3; before block 4 only while the map is larger than 4×4
        if i in (1, 2, 3) or (i == 4 and x.shape[-1] > 4):
            x = F.max_pool2d(x, 2, 2)
        return F.relu(getattr(self, f"block{i}")(x))

    def taps(self):
        return [functools.partial(self._stage, i) for i in range(5)]

    def _stage_preact(self, i: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if i in (1, 2, 3) or (i == 4 and x.shape[-1] > 4):
            x = F.max_pool2d(x, 2, 2)
        pre = getattr(self, f"block{i}")(x)
        return F.relu(pre), pre

    def preact_taps(self):
        return [functools.partial(self._stage_preact, i) for i in range(5)]

    def get_bn_before_relu(self):  # each block ends with its BatchNorm; the ReLU is applied outside
        return [getattr(self, f"block{i}")[-1] for i in range(1, 5)]


# --------------------------------------------------------------------------- MobileNetV2


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        self.use_res = stride == 1 and cin == cout
        self.conv = nn.Sequential(
            nn.Conv2d(cin, hidden, 1, 1, 0, bias=False), nn.BatchNorm2d(hidden), nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden), nn.ReLU(inplace=True),
            nn.Conv2d(hidden, cout, 1, 1, 0, bias=False), nn.BatchNorm2d(cout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res else self.conv(x)


class MobileHalf(CifarNet):
    """MobileNetV2 (Sandler et al. 2018) at width 0.5 for CIFAR: stride-2 stem, second stage at stride 1."""

    _head_in_sequential = True
    SETTING = [(1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]

    def __init__(self, num_classes: int = 100, in_chans: int = 3, drop_rate: float = 0.0, width: float = 0.5):
        super().__init__()
        cin = int(32 * width)
        self.conv1 = _conv_bn(in_chans, cin, 3, 2)
        blocks = []
        for t, c, n, s in self.SETTING:
            cout = int(c * width)
            blocks.append(nn.Sequential(*[InvertedResidual(cin if i == 0 else cout, cout, s if i == 0 else 1, t) for i in range(n)]))
            cin = cout
        self.blocks = nn.ModuleList(blocks)
        last = int(1280 * width) if width > 1.0 else 1280
        self.conv2 = _conv_bn(cin, last, 1)
        self._finish(
            [int(32 * width), int(24 * width), int(32 * width), int(96 * width), int(320 * width)],
            [2, 2, 4, 8, 16], ["conv1", "blocks.1", "blocks.2", "blocks.4", "blocks.6"], last, num_classes, drop_rate,
            "classifier",
        )

    def _run(self, first: int, last: int, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks[first:last + 1]:
            x = block(x)
        return x

    def taps(self):  # RepDistiller's f0..f4: blocks grouped 0-1, 2, 3-4, 5-6
        return [self.conv1] + [functools.partial(self._run, a, b) for a, b in ((0, 1), (2, 2), (3, 4), (5, 6))]

    def preact_taps(self):  # linear bottlenecks: every stage after the stem already ends without a ReLU
        def same(f):
            def run(x):
                out = f(x)
                return out, out
            return run

        return [_conv_bn_preact(self.conv1[0], self.conv1[1])] + [same(f) for f in self.taps()[1:]]

    def get_bn_before_relu(self):  # mdistiller: the last BatchNorm of each stage's last block
        return [self.blocks[i][-1].conv[-1] for i in (1, 2, 4, 6)]

    def post(self, x: torch.Tensor) -> torch.Tensor:  # the 1×1 conv to 1280 channels, before pooling
        return self.conv2(x)


# --------------------------------------------------------------------------- ShuffleNet V1 / V2


def _shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class ShuffleV1Block(nn.Module):
    """ShuffleNet unit: group 1×1 conv, channel shuffle, depthwise 3×3, group 1×1; concat+avg-pool when striding."""

    def __init__(self, cin: int, cout: int, stride: int, groups: int):
        super().__init__()
        mid = cout // 4
        g = 1 if cin == 24 else groups  # the first unit's input is too narrow to group
        self.stride, self.g = stride, g
        self.conv1 = nn.Conv2d(cin, mid, 1, groups=g, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, cout, 1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)

    def forward_preact(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = _shuffle(F.relu(self.bn1(self.conv1(x))), self.g)
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        pre = torch.cat([out, F.avg_pool2d(x, 3, 2, 1)], 1) if self.stride == 2 else out + x
        return F.relu(pre), pre

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = _shuffle(F.relu(self.bn1(self.conv1(x))), self.g)
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.stride == 2:
            return F.relu(torch.cat([out, F.avg_pool2d(x, 3, 2, 1)], 1))
        return F.relu(out + x)


class ShuffleV1(CifarNet):
    """ShuffleNet (Zhang et al. 2018), groups 3, stages 240-480-960 with 4-8-4 units, 1×1 stem."""

    def __init__(self, num_classes: int = 100, in_chans: int = 3, drop_rate: float = 0.0):
        super().__init__()
        out_planes, num_blocks, groups = (240, 480, 960), (4, 8, 4), 3
        self.conv1 = nn.Conv2d(in_chans, 24, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        cin = 24
        for i, (cout, n) in enumerate(zip(out_planes, num_blocks), start=1):
            units = []
            for j in range(n):
                # the striding unit concatenates its input, so its branch makes cout - cin channels
                units.append(ShuffleV1Block(cin, cout - cin if j == 0 else cout, 2 if j == 0 else 1, groups))
                cin = cout
            setattr(self, f"layer{i}", nn.Sequential(*units))
        self._finish([24, *out_planes], [1, 2, 4, 8], ["bn1", "layer1", "layer2", "layer3"], out_planes[-1], num_classes,
                     drop_rate, "linear")

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn1(self.conv1(x)))

    def taps(self):
        return [self.stem, self.layer1, self.layer2, self.layer3]

    def preact_taps(self):
        return [_conv_bn_preact(self.conv1, self.bn1)] + [_sequential_preact(s) for s in (self.layer1, self.layer2, self.layer3)]


class ShuffleV2Block(nn.Module):
    """ShuffleNetV2 basic unit: split channels in half, transform one half, concat, shuffle."""

    def __init__(self, channels: int):
        super().__init__()
        c = channels // 2
        self.conv1 = nn.Conv2d(c, c, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, 1, 1, groups=c, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.conv3 = nn.Conv2d(c, c, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c)

    def forward_preact(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # the branch's last ReLU, on the concatenated and shuffled map (mdistiller does not shuffle its preact)
        keep, x2 = x.chunk(2, dim=1)
        out = F.relu(self.bn1(self.conv1(x2)))
        pre = self.bn3(self.conv3(self.bn2(self.conv2(out))))
        return _shuffle(torch.cat([keep, F.relu(pre)], 1), 2), _shuffle(torch.cat([keep, pre], 1), 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        keep, x2 = x.chunk(2, dim=1)
        out = F.relu(self.bn1(self.conv1(x2)))
        out = F.relu(self.bn3(self.conv3(self.bn2(self.conv2(out)))))
        return _shuffle(torch.cat([keep, out], 1), 2)


class ShuffleV2Down(nn.Module):
    """ShuffleNetV2 spatial down-sampling unit: two stride-2 branches, concatenated and shuffled."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        mid = cout // 2
        self.conv1 = nn.Conv2d(cin, cin, 3, 2, 1, groups=cin, bias=False)
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv2 = nn.Conv2d(cin, mid, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(cin, mid, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(mid)
        self.conv4 = nn.Conv2d(mid, mid, 3, 2, 1, groups=mid, bias=False)
        self.bn4 = nn.BatchNorm2d(mid)
        self.conv5 = nn.Conv2d(mid, mid, 1, bias=False)
        self.bn5 = nn.BatchNorm2d(mid)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left = F.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        right = F.relu(self.bn3(self.conv3(x)))
        right = F.relu(self.bn5(self.conv5(self.bn4(self.conv4(right)))))
        return _shuffle(torch.cat([left, right], 1), 2)


class ShuffleV2(CifarNet):
    """ShuffleNetV2 1× (Ma et al. 2018): stages 116-232-464 (3-7-3 units), 1×1 conv to 1024, 1×1 stem."""

    def __init__(self, num_classes: int = 100, in_chans: int = 3, drop_rate: float = 0.0):
        super().__init__()
        out_channels, num_blocks = (116, 232, 464, 1024), (3, 7, 3)
        self.conv1 = nn.Conv2d(in_chans, 24, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        cin = 24
        for i, (cout, n) in enumerate(zip(out_channels[:3], num_blocks), start=1):
            setattr(self, f"layer{i}", nn.Sequential(ShuffleV2Down(cin, cout), *[ShuffleV2Block(cout) for _ in range(n)]))
            cin = cout
        self.conv2 = nn.Conv2d(cin, out_channels[3], 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels[3])
        self._finish([24, *out_channels[:3]], [1, 2, 4, 8], ["bn1", "layer1", "layer2", "layer3"], out_channels[3],
                     num_classes, drop_rate, "linear")

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn1(self.conv1(x)))

    def taps(self):
        return [self.stem, self.layer1, self.layer2, self.layer3]

    def preact_taps(self):
        return [_conv_bn_preact(self.conv1, self.bn1)] + [_sequential_preact(s) for s in (self.layer1, self.layer2, self.layer3)]

    def post(self, x: torch.Tensor) -> torch.Tensor:  # the 1×1 conv to 1024 channels, before pooling
        return F.relu(self.bn2(self.conv2(x)))


# --------------------------------------------------------------------------- ResNet-50 for CIFAR


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1):
        super().__init__()
        cout = planes * self.expansion
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward_preact(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        pre = self.bn3(self.conv3(out)) + self.shortcut(x)
        return F.relu(pre), pre

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        return F.relu(self.bn3(self.conv3(out)) + self.shortcut(x))


class CifarResNet50(CifarNet):
    """ResNet-50 (3-4-6-3 bottlenecks) with a 3×3 stride-1 stem and no max-pool, for 32×32 inputs."""

    def __init__(self, num_classes: int = 100, in_chans: int = 3, drop_rate: float = 0.0):
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        cin = 64
        for i, (planes, n, stride) in enumerate(zip((64, 128, 256, 512), (3, 4, 6, 3), (1, 2, 2, 2)), start=1):
            blocks = []
            for j in range(n):
                blocks.append(Bottleneck(cin, planes, stride if j == 0 else 1))
                cin = planes * 4
            setattr(self, f"layer{i}", nn.Sequential(*blocks))
        self._finish([64, 256, 512, 1024, 2048], [1, 1, 2, 4, 8], ["bn1", "layer1", "layer2", "layer3", "layer4"], 2048,
                     num_classes, drop_rate, "linear")

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn1(self.conv1(x)))

    def taps(self):
        return [self.stem, self.layer1, self.layer2, self.layer3, self.layer4]

    def preact_taps(self):
        return [_conv_bn_preact(self.conv1, self.bn1)] + [
            _sequential_preact(s) for s in (self.layer1, self.layer2, self.layer3, self.layer4)]

    def get_bn_before_relu(self):
        return [s[-1].bn3 for s in (self.layer1, self.layer2, self.layer3, self.layer4)]


# --------------------------------------------------------------------------- registration


_TIMM_IGNORED = {"pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"}


def _build(name: str, factory: Callable[..., CifarNet], pretrained: bool = False, **kwargs: Any) -> CifarNet:
    """timm's entry-point contract: no pretrained weights; unknown options are a TypeError, as for timm CNNs."""
    if pretrained:
        raise RuntimeError(f"{name}: kdbench's CIFAR networks have no pretrained weights (use --teacher-checkpoint)")
    for key in _TIMM_IGNORED:
        kwargs.pop(key, None)
    if kwargs.pop("global_pool", "avg") not in ("avg", None):
        raise ValueError(f"{name}: only global_pool='avg' is supported")
    kwargs.pop("drop_path_rate", None)  # no stochastic depth in these networks: accepted for timm compatibility
    allowed = {"num_classes", "in_chans", "drop_rate"}
    unknown = sorted(set(kwargs) - allowed)
    if unknown:
        raise TypeError(f"{name}() got an unexpected keyword argument {unknown[0]!r}")
    model = factory(**kwargs)
    model.pretrained_cfg = model.default_cfg = {**default_cfgs[name], "architecture": name}
    return model


def _resnet(depth: int, widths=(16, 16, 32, 64)) -> Callable[..., CifarNet]:
    return lambda **kw: CifarResNet(depth, widths, **kw)


def _wrn(depth: int, widen: int) -> Callable[..., CifarNet]:
    return lambda **kw: WideResNet(depth, widen, **kw)


def _vgg(depth: int) -> Callable[..., CifarNet]:
    return lambda **kw: CifarVGG(depth, **kw)


FACTORIES: dict[str, Callable[..., CifarNet]] = {
    **{f"resnet{d}": _resnet(d) for d in (8, 14, 20, 32, 44, 56, 110)},
    "resnet8x4": _resnet(8, (32, 64, 128, 256)),
    "resnet32x4": _resnet(32, (32, 64, 128, 256)),
    "wrn_16_1": _wrn(16, 1), "wrn_16_2": _wrn(16, 2), "wrn_40_1": _wrn(40, 1), "wrn_40_2": _wrn(40, 2),
    "vgg8": _vgg(8), "vgg11_cifar": _vgg(11), "vgg13_cifar": _vgg(13), "vgg16_cifar": _vgg(16), "vgg19_cifar": _vgg(19),
    "mobile_half": MobileHalf, "shufflev1": ShuffleV1, "shufflev2": ShuffleV2, "resnet50_cifar": CifarResNet50,
}

_CLASSIFIER = {"vgg": "classifier", "mobile_half": "classifier.0", "shuffle": "linear", "resnet50_cifar": "linear"}
_FIRST_CONV = {"vgg": "block0.0", "mobile_half": "conv1.0"}
default_cfgs = {
    name: _cfg(
        classifier=next((v for k, v in _CLASSIFIER.items() if name.startswith(k)), "fc"),
        first_conv=next((v for k, v in _FIRST_CONV.items() if name.startswith(k)), "conv1"),
    )
    for name in FACTORIES
}


def _entrypoint(name: str) -> Callable[..., CifarNet]:
    def entry(pretrained: bool = False, **kwargs: Any) -> CifarNet:
        return _build(name, FACTORIES[name], pretrained=pretrained, **kwargs)

    entry.__name__ = entry.__qualname__ = name
    entry.__module__ = __name__
    entry.__doc__ = f"CIFAR-style {name} (kdbench_plugins.cifar_models)."
    return entry


for _name in FACTORIES:
    globals()[_name] = register_model(_entrypoint(_name))


# --------------------------------------------------------------------------- pairs


# (pair name, teacher, student, summary): the CRD benchmark's CIFAR-100 tables.
PAIRS = [
    ("resnet32x4-resnet8x4", "resnet32x4", "resnet8x4", "CRD Table 1: ResNet-32×4 → ResNet-8×4"),
    ("wrn_40_2-wrn_16_2", "wrn_40_2", "wrn_16_2", "CRD Table 1: WRN-40-2 → WRN-16-2"),
    ("wrn_40_2-wrn_40_1", "wrn_40_2", "wrn_40_1", "CRD Table 1: WRN-40-2 → WRN-40-1"),
    ("resnet56-resnet20", "resnet56", "resnet20", "CRD Table 1: ResNet-56 → ResNet-20"),
    ("resnet110-resnet20", "resnet110", "resnet20", "CRD Table 1: ResNet-110 → ResNet-20"),
    ("resnet110-resnet32", "resnet110", "resnet32", "CRD Table 1: ResNet-110 → ResNet-32"),
    ("vgg13-vgg8", "vgg13_cifar", "vgg8", "CRD Table 1: VGG-13 → VGG-8"),
    ("vgg13-mobile_half", "vgg13_cifar", "mobile_half", "CRD Table 2: VGG-13 → MobileNetV2 (×0.5)"),
    ("resnet50-mobile_half", "resnet50_cifar", "mobile_half", "CRD Table 2: ResNet-50 → MobileNetV2 (×0.5)"),
    ("resnet50-vgg8", "resnet50_cifar", "vgg8", "CRD Table 2: ResNet-50 → VGG-8"),
    ("resnet32x4-shufflev1", "resnet32x4", "shufflev1", "CRD Table 2: ResNet-32×4 → ShuffleNetV1"),
    ("resnet32x4-shufflev2", "resnet32x4", "shufflev2", "CRD Table 2: ResNet-32×4 → ShuffleNetV2"),
    ("wrn_40_2-shufflev1", "wrn_40_2", "shufflev1", "CRD Table 2: WRN-40-2 → ShuffleNetV1"),
    ("resnet20-resnet8", "resnet20", "resnet8", "small CIFAR pair for quick checks: ResNet-20 → ResNet-8"),
]


@kdbench.hookimpl
def register_model_pairs(register):
    for name, teacher, student, summary in PAIRS:
        register(kdbench.ModelPair(name, teacher, student, summary=summary))


def param_count(name: str, num_classes: int = 100) -> int:
    """Parameters of a registered CIFAR network (for docs and tests)."""
    model = FACTORIES[name](num_classes=num_classes)
    return sum(p.numel() for p in model.parameters())

