"""``kdbench plugins new``: write a ready-to-install plugin package.

One template per kind (method, dataset, pair, hardware, executor). Each
package has a ``pyproject.toml`` with the ``kdbench`` entry point, the plugin
module with a working example, tests that use :mod:`kdbench.testing`, and a
README. After ``pip install -e`` the plugin is listed by ``kdbench list``,
runs in a suite, and its tests pass without edits.

Names: ``NAME`` is what gets registered (``--methods NAME``) and the entry-point
name; the distribution is ``kdbench-NAME`` and the import package
``kdbench_NAME`` (dashes become underscores).
"""
from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdbench.core.errors import KdbenchError

KINDS = ("method", "dataset", "pair", "hardware", "executor")
_REGISTRY = {"method": "methods", "dataset": "datasets", "pair": "pairs", "hardware": "hardware",
             "executor": "executors"}
_NAME_RE = re.compile(r"^[a-z][a-z0-9]*(?:[-_][a-z0-9]+)*$")


@dataclass(frozen=True)
class Names:
    name: str  # registered name and entry-point name, e.g. "my-kd"
    ident: str  # python identifier part, e.g. "my_kd"
    module: str  # import package, e.g. "kdbench_my_kd"
    dist: str  # distribution, e.g. "kdbench-my-kd"
    cls: str  # CamelCase, e.g. "MyKd"
    upper: str  # for environment variables, e.g. "MY_KD"

    @classmethod
    def of(cls, name: str) -> Names:
        ident = name.replace("-", "_")
        return cls(
            name=name, ident=ident, module=f"kdbench_{ident}", dist=f"kdbench-{name.replace('_', '-')}",
            cls="".join(p.capitalize() for p in re.split(r"[-_]", name)), upper=ident.upper(),
        )


def check_name(name: str, kind: str, host: Any = None) -> Names:
    """Validate NAME for a new plugin of ``kind``; KdbenchError with the reason if it cannot be used."""
    if kind not in KINDS:
        raise KdbenchError(f"unknown plugin kind {kind!r}; valid kinds: {', '.join(KINDS)}")
    if not _NAME_RE.match(name):
        raise KdbenchError(
            f"invalid plugin name {name!r}: use lower-case letters and digits, words joined by '-' or '_', "
            "starting with a letter (e.g. my-kd)"
        )
    names = Names.of(name)
    if host is not None:
        registry = getattr(host, _REGISTRY[kind])
        if name in registry:
            raise KdbenchError(f"a {kind} named {name!r} is already registered (by plugin {registry.owner(name)!r}); choose another name")
        if name in host.info or any(b.name == name for b in host.broken):
            raise KdbenchError(f"a plugin named {name!r} is already installed; choose another name")
    if importlib.util.find_spec(names.module) is not None:
        raise KdbenchError(f"a Python package named {names.module!r} is already importable here; choose another name")
    return names


def render(kind: str, names: Names) -> dict[str, str]:
    """The files of a new plugin package: relative path → text."""
    from kdbench import __version__

    major_minor = ".".join(__version__.split(".")[:2])
    subs = {  # composite snippets first: they contain the simple placeholders
        "__RUN__": RUN_COMMAND[kind], "__SUMMARY__": SUMMARY[kind], "__LIST__": _REGISTRY[kind],
        "__NAME__": names.name, "__IDENT__": names.ident, "__MODULE__": names.module, "__DIST__": names.dist,
        "__CLASS__": names.cls, "__UPPER__": names.upper, "__KIND__": kind, "__KDBENCH__": major_minor,
    }

    def fill(text: str) -> str:
        for key, value in subs.items():
            text = text.replace(key, value)
        return text.lstrip("\n")

    return {
        "pyproject.toml": fill(PYPROJECT),
        "README.md": fill(README),
        f"src/{names.module}/__init__.py": fill(INIT),
        f"src/{names.module}/plugin.py": fill(PLUGINS[kind]),
        f"tests/test_{names.ident}.py": fill(TESTS[kind]),
    }


def create(name: str, kind: str, directory: str | Path | None = None, *, host: Any = None) -> tuple[Path, list[Path]]:
    """Write the package for plugin ``name`` of ``kind`` into ``directory`` (default ``./kdbench-NAME``).

    Returns the package directory and the files written. The directory must be
    absent or empty.
    """
    names = check_name(name, kind, host)
    root = (Path(directory).expanduser() if directory else Path(names.dist)).absolute()
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise KdbenchError(f"{str(root)!r} already exists and is not empty; give an empty or new --dir")
    files = render(kind, names)
    written = []
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        written.append(path)
    return root, written


SUMMARY = {
    "method": "a distillation method (variational information distillation on the last stage)",
    "dataset": "a dataset generated in memory (oriented gratings)",
    "pair": "a teacher→student pair of small CNNs registered into timm",
    "hardware": "a CPU measurement target (2 threads, channels_last)",
    "executor": "an executor running each cell in a fresh worker process",
}

RUN_COMMAND = {
    "method": 'kdbench run --methods __NAME__ --datasets "glyphs(num_train=192,num_test=96)" --epochs 2 --batch-size 32',
    "dataset": 'kdbench run --datasets "__NAME__(num_train=192,num_test=96)" --epochs 2 --batch-size 32',
    "pair": 'kdbench run --pairs __NAME__ --datasets "glyphs(num_train=192,num_test=96)" --epochs 2 --batch-size 32',
    "hardware": 'kdbench run --hardware cpu,__NAME__ --datasets "glyphs(num_train=192,num_test=96)" --epochs 2 --batch-size 32',
    "executor": 'kdbench run --executor __NAME__ --datasets "glyphs(num_train=192,num_test=96)" --epochs 2 --batch-size 32',
}

# =========================================================================== common files

PYPROJECT = '''
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "__DIST__"
version = "0.1.0"
description = "kdbench plugin: __SUMMARY__"
readme = "README.md"
requires-python = ">=3.10"
dependencies = ["kdbench>=__KDBENCH__"]

[project.optional-dependencies]
test = ["pytest>=8.0"]

# kdbench finds plugins through this entry-point group: NAME = "module".
[project.entry-points.kdbench]
__NAME__ = "__MODULE__.plugin"

[tool.setuptools.packages.find]
where = ["src"]

[tool.pytest.ini_options]
testpaths = ["tests"]
'''

INIT = '''
"""kdbench plugin ``__NAME__``: __SUMMARY__. The hooks are in :mod:`__MODULE__.plugin`."""

__version__ = "0.1.0"
'''

README = '''
# __DIST__

A [kdbench](https://pypi.org/project/kdbench/) plugin: __SUMMARY__.
It registers the __KIND__ `__NAME__`.

```bash
pip install -e .                 # registers the entry point `__NAME__` in the `kdbench` group
kdbench plugins                  # __NAME__ is listed, with the hooks it implements
kdbench list __LIST__
__RUN__
kdbench leaderboard default
pytest                           # the plugin's own tests (kdbench.testing's contract checks)
```

- `src/__MODULE__/plugin.py`: the plugin: hook implementations marked `@kdbench.hookimpl`.
- `tests/test___IDENT__.py`: tests with the fixtures and contract checks of `kdbench.testing`
  (loaded automatically as a pytest plugin once kdbench is installed).
- `pyproject.toml`: the `[project.entry-points.kdbench]` table is how kdbench finds the plugin.

During development you can also load the module without installing it:
`kdbench --plugins-dir src/__MODULE__ list __LIST__` (loose files are loaded by file name).
'''

# =========================================================================== method

METHOD = '''
"""``__NAME__``: a knowledge-distillation method for kdbench.

The example is variational information distillation (VID; Ahn et al. 2019,
"Variational Information Distillation for Knowledge Transfer", CVPR,
arXiv:1904.05835), on the last stage of both networks. A regressor predicts
the teacher's feature map from the student's as a Gaussian with a learned
per-channel variance; the student minimises the negative log-likelihood:

    loss = CE(student, labels) + beta * mean(0.5 * ((mu(s) - t)^2 / var + log var))

``mu`` (three 1×1 convolutions) and the variance (softplus of ``log_scale``)
are *extra modules*: built in ``setup`` once the feature shapes are known,
trained with the student, never deployed, reported as ``extra_params``.
Defaults follow RepDistiller's VID (CRD benchmark): beta=1, init_var=5.

The host owns everything else: training loop, teacher (frozen, eval mode, no
gradients), evaluation, measurement and MLflow. To write your own method,
change ``loss_terms`` (and the taps and modules it needs).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

import kdbench


class __CLASS__(kdbench.Distiller):
    # Feature taps: indices into timm's forward_intermediates (-1: the last stage).
    # The host hands them over as batch.student.features / batch.teacher.features.
    student_stages = (-1,)
    teacher_stages = (-1,)

    def __init__(self, beta: float = 1.0, init_var: float = 5.0, eps: float = 1e-5):
        super().__init__()
        if beta < 0:
            raise kdbench.ConfigError(f"__NAME__: beta must be >= 0, got {beta}")
        if init_var <= eps:
            raise kdbench.ConfigError(f"__NAME__: init_var must be larger than eps ({eps}), got {init_var}")
        self.beta, self.init_var, self.eps = float(beta), float(init_var), float(eps)

    def check_pair(self, student: nn.Module, teacher: nn.Module | None) -> None:
        """Refuse, before training, a pair whose models have no timm feature API."""
        for role, model in (("student", student), ("teacher", teacher)):
            if not hasattr(model, "forward_intermediates"):
                raise kdbench.NotApplicableError(f"__NAME__ taps features; the {role} has no forward_intermediates")

    def setup(self, info: kdbench.PairInfo) -> None:
        """Build the extra modules from the tapped shapes (called once, before the first step)."""
        (s_shape,), (t_shape,) = info.student_shapes, info.teacher_shapes
        if len(s_shape) != 4 or len(t_shape) != 4:
            raise kdbench.NotApplicableError(
                f"__NAME__ needs (N, C, H, W) feature maps, got {tuple(s_shape)} and {tuple(t_shape)}")
        cs, ct = s_shape[1], t_shape[1]
        self.regressor = nn.Sequential(
            nn.Conv2d(cs, ct, 1, bias=False), nn.ReLU(),
            nn.Conv2d(ct, ct, 1, bias=False), nn.ReLU(),
            nn.Conv2d(ct, ct, 1, bias=False),
        )
        # softplus(log_scale) + eps = init_var at the start
        start = math.log(math.expm1(self.init_var - self.eps))
        self.log_scale = nn.Parameter(torch.full((ct,), start))

    def loss_terms(self, batch: kdbench.Batch) -> dict[str, torch.Tensor]:
        s, t = batch.student.features[0], batch.teacher.features[0].float()
        h, w = min(s.shape[2], t.shape[2]), min(s.shape[3], t.shape[3])
        if s.shape[2:] != (h, w):
            s = F.adaptive_avg_pool2d(s, (h, w))
        if t.shape[2:] != (h, w):
            t = F.adaptive_avg_pool2d(t, (h, w))
        mean = self.regressor(s)
        var = (F.softplus(self.log_scale) + self.eps).view(1, -1, 1, 1)
        nll = 0.5 * ((mean - t) ** 2 / var + torch.log(var))
        return {
            "ce": F.cross_entropy(batch.student.logits, batch.targets),
            "vid": self.beta * nll.mean(),
        }


@kdbench.hookimpl
def register_methods(register):
    register(kdbench.Method(
        "__NAME__", __CLASS__,
        summary="variational information distillation (VID) on the last stage, with cross-entropy",
        paper="Ahn et al. 2019, arXiv:1904.05835",
    ))
'''

METHOD_TESTS = '''
"""Tests of the ``__NAME__`` method with kdbench's test kit.

``kdbench_env`` (isolated MLflow store, teacher cache, cwd) and ``kdbench_host``
(an isolated plugin host) are fixtures of kdbench's pytest plugin.
"""
from __future__ import annotations

import pytest

import kdbench
from kdbench.testing import check_method, make_host

import __MODULE__.plugin as plugin

NAME = "__NAME__"


def test_contract_and_one_cell(kdbench_env, kdbench_host):
    """Finite, differentiable loss; gradients reach the student and the regressor, never the
    teacher; deterministic; one short cell runs end to end into MLflow and the leaderboard."""
    host = kdbench_host((NAME, plugin))
    report = check_method(NAME, host=host)
    assert set(report.terms) == {"ce", "vid"}
    assert report.extra_params > 0  # the regressor and the variances
    assert "log_scale" in report.extra_trainable
    assert report.cell.status == "FINISHED"


def test_options_are_checked():
    with pytest.raises(kdbench.ConfigError, match="beta"):
        plugin.__CLASS__(beta=-1)
    with pytest.raises(kdbench.ConfigError, match="init_var"):
        plugin.__CLASS__(init_var=0)


def test_registered_through_its_entry_point():
    host = make_host(installed=True)
    assert NAME in host.methods, "the plugin is not installed: run `pip install -e .`"
    assert host.info[NAME].source == "entry point"
    assert host.info[NAME].distribution == "__DIST__"
'''

# =========================================================================== dataset

DATASET = '''
"""``__NAME__``: a dataset for kdbench, generated in memory (no files, no network).

Oriented sinusoidal gratings: class ``k`` of ``num_classes`` is the orientation
``k * 180° / num_classes`` (± a little jitter); each image has its own spatial
frequency, phase and colour, plus Gaussian noise. The train and test splits
come from different seeds. Training images are shifted by up to 2 pixels
(shifts keep the orientation; flips would not).

Like every kdbench dataset, each split yields ``(image, label, index)``:
``image`` a normalised float tensor of ``input_size``, ``label`` in
``0..num_classes-1``, ``index`` the sample's position (methods such as CRD key
memory banks on it); ``targets`` holds every label (for methods that need the
class of each sample).
"""
from __future__ import annotations

import math

import torch
from torch.utils.data import Dataset

import kdbench

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def generate(n: int, num_classes: int, size: int, noise: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` uint8 images (N, 3, size, size) and balanced labels, from ``seed`` only."""
    g = torch.Generator().manual_seed(seed)
    labels = (torch.arange(n) % num_classes)[torch.randperm(n, generator=g)]
    step = math.pi / num_classes
    theta = labels * step + (torch.rand(n, generator=g) - 0.5) * step * 0.5
    freq = 2 * math.pi * (1.5 + 2.5 * torch.rand(n, generator=g)) / size  # 1.5 to 4 cycles per image
    phase = 2 * math.pi * torch.rand(n, generator=g)
    colour = 0.3 + 0.7 * torch.rand(n, 3, generator=g)
    ys, xs = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32), indexing="ij")
    along = xs * torch.cos(theta)[:, None, None] + ys * torch.sin(theta)[:, None, None]
    wave = torch.sin(freq[:, None, None] * along + phase[:, None, None])
    images = 0.5 + 0.45 * wave[:, None] * colour[:, :, None, None]
    images = images + noise * torch.randn(images.shape, generator=g)
    return (images.clamp(0, 1) * 255).round().to(torch.uint8), labels


class Gratings(Dataset):
    def __init__(self, images: torch.Tensor, labels: torch.Tensor, augment: bool):
        self.images, self.targets, self.augment = images, labels, augment
        self.mean = torch.tensor(MEAN).view(3, 1, 1)
        self.std = torch.tensor(STD).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int]:
        image = self.images[i].float() / 255
        if self.augment:  # torch's global RNG: the host seeds it, so runs repeat
            dy, dx = torch.randint(-2, 3, (2,)).tolist()
            image = torch.roll(image, shifts=(dy, dx), dims=(1, 2))
        return (image - self.mean) / self.std, int(self.targets[i]), i


def build(num_train: int = 2000, num_test: int = 500, num_classes: int = 6, noise: float = 0.1,
          size: int = 32, seed: int = 0) -> kdbench.DataBundle:
    """The options are settable from suites and the CLI: ``__NAME__(num_classes=8,noise=0.2)``."""
    for option, value, low in (("num_train", num_train, 1), ("num_test", num_test, 1), ("num_classes", num_classes, 2), ("size", size, 8)):
        if value < low:
            raise kdbench.DataError(f"__NAME__: {option} must be at least {low}, got {value}")
    if noise < 0:
        raise kdbench.DataError(f"__NAME__: noise must be >= 0, got {noise}")
    train = Gratings(*generate(num_train, num_classes, size, noise, seed * 2), augment=True)
    test = Gratings(*generate(num_test, num_classes, size, noise, seed * 2 + 1), augment=False)
    return kdbench.DataBundle(train, test, num_classes, (3, size, size), MEAN, STD)


@kdbench.hookimpl
def register_datasets(register):
    register(kdbench.Dataset("__NAME__", build, summary="oriented gratings generated in memory, one class per orientation"))
'''

DATASET_TESTS = '''
"""Tests of the ``__NAME__`` dataset with kdbench's test kit."""
from __future__ import annotations

import pytest

import kdbench
from kdbench.testing import check_dataset, make_host

import __MODULE__.plugin as plugin

NAME = "__NAME__"
SMALL = {"num_train": 96, "num_test": 48}


def test_contract_and_one_cell(kdbench_env, kdbench_host):
    """Splits, shapes, labels in range, indices, determinism; a baseline cell trains on it end to end."""
    host = kdbench_host((NAME, plugin))
    report = check_dataset(NAME, SMALL, host=host, end_to_end=True)
    assert report.num_classes == 6 and report.input_size == (3, 32, 32)
    assert report.classes_seen == {"train": 6, "test": 6}
    assert report.cell.status == "FINISHED"


def test_options():
    data = plugin.build(num_train=10, num_test=5, num_classes=3, size=16)
    assert data.input_size == (3, 16, 16) and data.num_classes == 3
    assert len(data.train) == 10 and len(data.test) == 5
    with pytest.raises(kdbench.DataError, match="num_classes"):
        plugin.build(num_classes=1)


def test_registered_through_its_entry_point():
    host = make_host(installed=True)
    assert NAME in host.datasets, "the plugin is not installed: run `pip install -e .`"
    assert host.info[NAME].distribution == "__DIST__"
'''

# =========================================================================== pair

PAIR = '''
"""``__NAME__``: a teacher→student pair for kdbench, with its models registered into timm.

kdbench builds models by timm name, so a pair plugin may bring its own
architectures: importing this module registers ``__IDENT___convnet_l``
(teacher) and ``__IDENT___convnet_s`` (student) with timm's
``register_model``. They are plain CNNs for small images (3×3 conv, BatchNorm,
ReLU; every stage after the first halves the resolution) that follow timm's
model API, so every kdbench method works with them:

- ``num_classes``/``in_chans`` keyword arguments (the host sets them per
  dataset); unknown keywords such as ``img_size`` raise ``TypeError`` (the host
  then retries without it, as for timm's CNNs);
- ``forward_features``, ``forward_head(x, pre_logits=False)``;
- ``forward_intermediates(x, indices)``, returning ``(final_map, [stage
  maps])``: the feature taps of feature-based methods; ``feature_info``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.models import register_model
from timm.models._features import feature_take_indices
from torch import nn

import kdbench

TEACHER, STUDENT = "__IDENT___convnet_l", "__IDENT___convnet_s"


class ConvNet(nn.Module):
    def __init__(self, widths: tuple[int, ...] = (32, 64, 128), depth: int = 2, num_classes: int = 1000,
                 in_chans: int = 3, drop_rate: float = 0.0):
        super().__init__()
        self.num_classes, self.drop_rate = num_classes, drop_rate
        stages, cin = [], in_chans
        for i, width in enumerate(widths):
            layers: list[nn.Module] = []
            for j in range(depth):
                stride = 2 if i > 0 and j == 0 else 1
                layers += [nn.Conv2d(cin, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
                cin = width
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.num_features = self.head_hidden_size = cin
        self.feature_info = [dict(num_chs=w, reduction=2 ** i, module=f"stages.{i}") for i, w in enumerate(widths)]
        self.fc = nn.Linear(cin, num_classes) if num_classes > 0 else nn.Identity()
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.mean((2, 3))
        if self.drop_rate:
            x = F.dropout(x, self.drop_rate, self.training)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(self, x: torch.Tensor, indices: int | list[int] | None = None, norm: bool = False,
                              stop_early: bool = False, output_fmt: str = "NCHW", intermediates_only: bool = False):
        take, max_index = feature_take_indices(len(self.stages), indices)
        stages = self.stages[: max_index + 1] if stop_early or intermediates_only else self.stages
        intermediates = []
        for i, stage in enumerate(stages):
            x = stage(x)
            if i in take:
                intermediates.append(x)
        return intermediates if intermediates_only else (x, intermediates)


def _create(widths: tuple[int, ...], depth: int, pretrained: bool = False, **kwargs) -> ConvNet:
    if pretrained:
        raise RuntimeError("__NAME__ models have no pretrained weights; let kdbench train the teacher")
    for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):  # timm's factory passes these
        kwargs.pop(key, None)
    return ConvNet(widths, depth, **kwargs)


@register_model
def __IDENT___convnet_l(pretrained: bool = False, **kwargs) -> ConvNet:
    """Teacher: 32-64-128 channels, two convolutions per stage."""
    return _create((32, 64, 128), 2, pretrained, **kwargs)


@register_model
def __IDENT___convnet_s(pretrained: bool = False, **kwargs) -> ConvNet:
    """Student: 16-32-64 channels, one convolution per stage."""
    return _create((16, 32, 64), 1, pretrained, **kwargs)


@kdbench.hookimpl
def register_model_pairs(register):
    register(kdbench.ModelPair("__NAME__", TEACHER, STUDENT, summary="small CNNs: 32-64-128 ×2 → 16-32-64 ×1"))
'''

PAIR_TESTS = '''
"""Tests of the ``__NAME__`` pair with kdbench's test kit."""
from __future__ import annotations

import timm
import torch

from kdbench.testing import check_pair, make_host

import __MODULE__.plugin as plugin

NAME = "__NAME__"


def test_contract_and_one_cell(kdbench_env, kdbench_host):
    """Both models build in timm and honour the class count; feature taps work; a kd cell runs end to end."""
    host = kdbench_host((NAME, plugin))
    report = check_pair(NAME, host=host, end_to_end=True)
    assert report.student_params < report.teacher_params
    assert report.cell.status == "FINISHED"


def test_models_are_timm_models():
    for arch in (plugin.TEACHER, plugin.STUDENT):
        model = timm.create_model(arch, num_classes=5, in_chans=1)
        final, feats = model.forward_intermediates(torch.randn(2, 1, 32, 32), indices=[0, -1])
        assert model(torch.randn(2, 1, 32, 32)).shape == (2, 5)
        assert [f.shape[-1] for f in feats] == [32, 8] and final.shape[-1] == 8


def test_registered_through_its_entry_point():
    host = make_host(installed=True)
    assert NAME in host.pairs, "the plugin is not installed: run `pip install -e .`"
    assert host.info[NAME].distribution == "__DIST__"
'''

# =========================================================================== hardware

HARDWARE = '''
"""``__NAME__``: a measurement target for kdbench.

CPU inference the way a small edge box runs it: a fixed number of threads
(``THREADS``), channels_last memory format, fp32, eager mode. ``probe``
tells kdbench whether the target is usable on this machine; when it is not,
measurements are recorded as skipped with its reason instead of failing.

Other fields a target can set (see ``kdbench.Hardware``): ``device``
(``cuda:0``, ``mps``), ``precision``/``precisions`` (``bf16``, ``fp16``: run
under autocast), ``mode="compile"`` (measure ``torch.compile``).
"""
from __future__ import annotations

import os

import kdbench

THREADS = 2


def probe() -> str | None:
    """None when the target is usable here, else the reason it is not."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if cores < THREADS:
        return f"needs {THREADS} CPU cores, this process may use {cores}"
    return None


@kdbench.hookimpl
def register_hardware(register):
    register(kdbench.Hardware(
        "__NAME__", "cpu", threads=THREADS, precision="fp32", memory_format="channels_last", probe=probe,
        summary=f"CPU, {THREADS} threads, channels_last, fp32 (edge-style)",
    ))
'''

HARDWARE_TESTS = '''
"""Tests of the ``__NAME__`` measurement target with kdbench's test kit."""
from __future__ import annotations

from kdbench.testing import check_hardware, make_host

import __MODULE__.plugin as plugin

NAME = "__NAME__"


def test_contract_and_one_cell(kdbench_env, kdbench_host):
    """The target is well formed; a model is measured on it (or skipped with a reason) in a real cell."""
    host = kdbench_host((NAME, plugin))
    report = check_hardware(NAME, host=host, end_to_end=True)
    if report.available:
        assert report.metrics[f"latency_p50_ms.{NAME}.fp32"] > 0
        assert report.metrics[f"threads.{NAME}.fp32"] == plugin.THREADS
    else:
        assert "CPU cores" in report.reason


def test_probe_says_why_when_too_few_cores(monkeypatch):
    monkeypatch.setattr(plugin.os, "sched_getaffinity", lambda pid: {0}, raising=False)
    monkeypatch.setattr(plugin.os, "cpu_count", lambda: 1)
    assert "needs 2 CPU cores" in plugin.probe()


def test_registered_through_its_entry_point():
    host = make_host(installed=True)
    assert NAME in host.hardware, "the plugin is not installed: run `pip install -e .`"
    assert host.info[NAME].distribution == "__DIST__"
'''

# =========================================================================== executor

EXECUTOR = '''
"""``__NAME__``: an executor for kdbench that runs every cell in a fresh worker process.

Each cell runs in a new process (spawned, not forked: safe with threads and
CUDA), so memory, CUDA contexts and global state never carry over from one cell
to the next, and a crash in native code fails that cell instead of the suite.
``KDBENCH___UPPER___WORKERS`` cells (default 1) run at once.

The executor contract (``kdbench.Executor``): ``run(jobs, run_one)`` calls
``run_one(job)`` for every job and returns the results in job order. Jobs and
``run_one`` (``kdbench.running.cell.run_job``) are picklable; in the worker,
``run_one`` rebuilds kdbench's plugin host from the installed entry points,
logs the cell to MLflow and never raises for a failing cell.
"""
from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import os
from concurrent.futures.process import BrokenProcessPool

import kdbench

WORKERS_ENV = "KDBENCH___UPPER___WORKERS"


def workers() -> int:
    raw = os.environ.get(WORKERS_ENV, "1")
    try:
        n = int(raw)
    except ValueError:
        n = 0
    if n < 1:
        raise kdbench.ConfigError(f"{WORKERS_ENV} must be a positive integer, got {raw!r}")
    return n


def _in_fresh_process(run_one, job):
    with cf.ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn")) as pool:
        try:
            return pool.submit(run_one, job).result()
        except BrokenProcessPool as exc:  # the worker died (segfault, out of memory)
            cell = getattr(job, "cell", None)
            if cell is None:
                raise
            from kdbench.running.cell import CellResult

            return CellResult(cell, "FAILED", error=f"worker process died: {exc}")


def run_in_processes(jobs, run_one):
    if not jobs:
        return []
    with cf.ThreadPoolExecutor(max_workers=min(workers(), len(jobs))) as threads:
        return list(threads.map(lambda job: _in_fresh_process(run_one, job), jobs))


@kdbench.hookimpl
def register_executors(register):
    register(kdbench.Executor("__NAME__", run_in_processes, summary="each cell in a fresh spawned process"))
'''

EXECUTOR_TESTS = '''
"""Tests of the ``__NAME__`` executor with kdbench's test kit."""
from __future__ import annotations

import pytest

import kdbench
from kdbench.testing import check_executor, make_host

import __MODULE__.plugin as plugin

NAME = "__NAME__"


def test_contract_and_a_suite(kdbench_env, kdbench_host):
    """Every job runs once, results in job order, in other processes; a suite runs through it."""
    host = kdbench_host((NAME, plugin))
    report = check_executor(NAME, host=host, jobs=2, end_to_end=True)
    assert len(report.worker_pids) == 2  # one fresh process per job
    assert [r.status for r in report.suite_result.results] == ["FINISHED"]


def test_workers_setting(monkeypatch):
    monkeypatch.setenv(plugin.WORKERS_ENV, "3")
    assert plugin.workers() == 3
    monkeypatch.setenv(plugin.WORKERS_ENV, "zero")
    with pytest.raises(kdbench.ConfigError, match=plugin.WORKERS_ENV):
        plugin.workers()


def test_registered_through_its_entry_point():
    host = make_host(installed=True)
    assert NAME in host.executors, "the plugin is not installed: run `pip install -e .`"
    assert host.info[NAME].distribution == "__DIST__"
'''

PLUGINS = {"method": METHOD, "dataset": DATASET, "pair": PAIR, "hardware": HARDWARE, "executor": EXECUTOR}
TESTS = {"method": METHOD_TESTS, "dataset": DATASET_TESTS, "pair": PAIR_TESTS, "hardware": HARDWARE_TESTS,
         "executor": EXECUTOR_TESTS}
