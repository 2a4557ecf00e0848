"""Datasets: the embedded ``glyphs`` (offline default), CIFAR-10/100 and ImageFolder trees.

Every split yields ``(image, label, index)``: contrastive methods need the index.

``augment`` (glyphs, CIFAR, ImageFolder) labels the training augmentation in
the dataset's name, so a cell says what it trained on: ``standard`` (the
default), ``strong`` (RandAugment + Cutout after the standard crop, the strong
view of MLKD's code) or ``weak+strong`` (two views of every training image,
``[standard, strong]``, for methods that use a second view, e.g. ``mlkd``;
see ``Distiller.uses_views``). The test split is never augmented.
"""
from __future__ import annotations

import functools
import hashlib
import os
import pickle
import tempfile
from pathlib import Path

import numpy as np

import kdbench
from kdbench.core.errors import DataError
from kdbench.core.paths import cache_root

from . import _glyphs
from ._data import ArrayDataset, IndexedDataset, Normalize, RandomCropFlip, check_augment, train_transform

CIFAR_MEAN = {10: (0.4914, 0.4822, 0.4465), 100: (0.5071, 0.4865, 0.4409)}
CIFAR_STD = {10: (0.2470, 0.2435, 0.2616), 100: (0.2673, 0.2564, 0.2762)}
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


# --------------------------------------------------------------------------- glyphs


def _glyph_cache_file(*params) -> Path:
    """Where generated glyphs are kept: under the kdbench cache, named by the parameters and the generator's
    source (an edit to ``_glyphs.py`` generates them anew)."""
    source = hashlib.sha256(Path(_glyphs.__file__).read_bytes()).hexdigest()[:12]
    return cache_root() / "data" / f"glyphs-{'-'.join(map(str, params))}-{source}.npz"


@functools.lru_cache(maxsize=4)
def _glyph_arrays(num_train: int, num_test: int, num_classes: int, noise: float, seed: int):
    """Generated once per machine (about 2 s for the default sizes; every worker process needs them), then
    read from the cache; a cache that cannot be written only costs the generation."""
    path = _glyph_cache_file(num_train, num_test, num_classes, noise, seed)
    try:
        with np.load(path) as f:
            return (f["xtr"], f["ytr"]), (f["xte"], f["yte"])
    except (OSError, KeyError, ValueError):
        pass
    train = _glyphs.generate(num_train, num_classes=num_classes, noise=noise, seed=seed, split_seed=0)
    test = _glyphs.generate(num_test, num_classes=num_classes, noise=noise, seed=seed, split_seed=1)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".npz", delete=False) as tmp:
            np.savez(tmp, xtr=train[0], ytr=train[1], xte=test[0], yte=test[1])
        os.replace(tmp.name, path)  # whole or absent: workers may read it at once
    except OSError:
        pass
    return train, test


def build_glyphs(
    num_train: int = 5000, num_test: int = 2000, num_classes: int = 10, noise: float = 0.15, seed: int = 0,
    augment: str = "standard",
) -> kdbench.DataBundle:
    """Procedural 32×32 RGB glyphs, generated in memory (see ``_glyphs``); ``augment``: see the module docstring."""
    check_augment("glyphs", augment)
    for name, value in (("num_train", num_train), ("num_test", num_test)):
        if value < 1:
            raise DataError(f"glyphs: {name} must be at least 1, got {value}")
    if num_classes < 2:
        raise DataError(f"glyphs: num_classes must be at least 2, got {num_classes}")
    (xtr, ytr), (xte, yte) = _glyph_arrays(num_train, num_test, num_classes, noise, seed)
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    norm = Normalize(mean, std)
    # Glyphs are not mirror-symmetric classes, so no flip: a shift-only crop.
    train = ArrayDataset(xtr, ytr, train_transform(augment, RandomCropFlip(padding=2, flip=False), norm))
    test = ArrayDataset(xte, yte, norm)
    return kdbench.DataBundle(train, test, num_classes, (3, 32, 32), mean, std)


# --------------------------------------------------------------------------- CIFAR


def _unpickle(path: Path) -> dict:
    try:
        with path.open("rb") as fh:
            return pickle.load(fh, encoding="latin1")
    except FileNotFoundError:
        raise
    except Exception as exc:
        raise DataError(f"{str(path)!r} is not a CIFAR python batch file ({type(exc).__name__}: {exc})") from None


def _find_cifar_dir(root: Path, folder: str, probe: str) -> Path:
    for candidate in (root, root / folder):
        if (candidate / probe).is_file():
            return candidate
    raise DataError(
        f"no CIFAR data at {str(root)!r}: expected {probe!r} in it or in {folder + '/'!r} "
        f"(the python version of the dataset, as extracted from its tar.gz)"
    )


def _cifar_split(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    batch = _unpickle(path)
    if "data" not in batch or label_key not in batch:
        raise DataError(f"{str(path)!r} has no 'data'/{label_key!r} entries: not a CIFAR batch")
    data = np.asarray(batch["data"], dtype=np.uint8)
    if data.ndim != 2 or data.shape[1] != 3072:
        raise DataError(f"{str(path)!r}: images have shape {data.shape}, expected (N, 3072)")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), np.asarray(batch[label_key], dtype=np.int64)


def _check_root(name: str, root: str | None) -> Path:
    if not root:
        raise DataError(f"dataset {name!r} reads files from disk: give its directory as {name}(root=PATH) or --data-dir PATH")
    path = Path(root).expanduser()
    if not path.exists():
        raise DataError(f"dataset {name!r}: directory {str(path)!r} does not exist")
    return path


def _cifar_bundle(xtr, ytr, xte, yte, classes: int, augment: str = "standard") -> kdbench.DataBundle:
    bad = [int(y) for y in np.concatenate([ytr, yte]) if not 0 <= y < classes][:1]
    if bad:
        raise DataError(f"CIFAR-{classes}: label {bad[0]} is outside 0..{classes - 1}")
    mean, std = CIFAR_MEAN[classes], CIFAR_STD[classes]
    norm = Normalize(mean, std)
    train = ArrayDataset(xtr, ytr, train_transform(augment, RandomCropFlip(padding=4, flip=True), norm))
    return kdbench.DataBundle(train, ArrayDataset(xte, yte, norm), classes, (3, 32, 32), mean, std)


def build_cifar10(root: str | None = None, augment: str = "standard") -> kdbench.DataBundle:
    """CIFAR-10 from ``cifar-10-batches-py`` (data_batch_1..5, test_batch)."""
    check_augment("cifar10", augment)
    base = _find_cifar_dir(_check_root("cifar10", root), "cifar-10-batches-py", "test_batch")
    parts = []
    for i in range(1, 6):
        path = base / f"data_batch_{i}"
        if not path.is_file():
            raise DataError(f"CIFAR-10 at {str(base)!r} is incomplete: {path.name!r} is missing")
        parts.append(_cifar_split(path, "labels"))
    xte, yte = _cifar_split(base / "test_batch", "labels")
    return _cifar_bundle(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]), xte, yte, 10, augment)


def build_cifar100(root: str | None = None, augment: str = "standard") -> kdbench.DataBundle:
    """CIFAR-100 (fine labels) from ``cifar-100-python`` (train, test)."""
    check_augment("cifar100", augment)
    base = _find_cifar_dir(_check_root("cifar100", root), "cifar-100-python", "train")
    if not (base / "test").is_file():
        raise DataError(f"CIFAR-100 at {str(base)!r} is incomplete: 'test' is missing")
    xtr, ytr = _cifar_split(base / "train", "fine_labels")
    xte, yte = _cifar_split(base / "test", "fine_labels")
    return _cifar_bundle(xtr, ytr, xte, yte, 100, augment)


# --------------------------------------------------------------------------- ImageFolder


def build_imagefolder(
    root: str | None = None, image_size: int = 224, train_dir: str = "train", test_dir: str = "val",
    augment: str = "standard",
) -> kdbench.DataBundle:
    """An ImageFolder tree: ``root/train/<class>/*.jpg`` and ``root/val/<class>/*.jpg``.

    Standard ImageNet augmentation: RandomResizedCrop + flip for training,
    resize to 1.14× then centre crop for testing; ``augment``: see the module docstring.
    """
    from torchvision import datasets, transforms

    check_augment("imagefolder", augment)
    base = _check_root("imagefolder", root)
    dirs = {}
    for split, sub in (("train", train_dir), ("test", test_dir)):
        d = base / sub
        if not d.is_dir():
            fallback = base / "test" if split == "test" and sub == "val" else None
            if fallback is not None and fallback.is_dir():
                d = fallback
            else:
                raise DataError(f"imagefolder: {str(d)!r} is missing; expected {sub!r}/ with one folder per class under {str(base)!r}")
        dirs[split] = d
    norm = transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    train_tf = transforms.Compose([
        transforms.RandomResizedCrop(image_size), transforms.RandomHorizontalFlip(), transforms.ToTensor(), norm,
    ])
    if augment != "standard":  # the same crop and flip, as uint8, then RandAugment on the strong view
        crop = transforms.Compose([
            transforms.RandomResizedCrop(image_size), transforms.RandomHorizontalFlip(), transforms.PILToTensor(),
        ])
        train_tf = train_transform(augment, crop, Normalize(IMAGENET_MEAN, IMAGENET_STD))
    test_tf = transforms.Compose([
        transforms.Resize(int(round(image_size * 256 / 224))), transforms.CenterCrop(image_size), transforms.ToTensor(), norm,
    ])
    try:
        train = datasets.ImageFolder(str(dirs["train"]), transform=train_tf)
        test = datasets.ImageFolder(str(dirs["test"]), transform=test_tf)
    except (FileNotFoundError, RuntimeError) as exc:
        raise DataError(f"imagefolder at {str(base)!r}: {exc}") from None
    if train.classes != test.classes:
        raise DataError(
            f"imagefolder at {str(base)!r}: train has {len(train.classes)} classes and test {len(test.classes)}; they must match"
        )
    return kdbench.DataBundle(
        IndexedDataset(train), IndexedDataset(test), len(train.classes), (3, image_size, image_size),
        IMAGENET_MEAN, IMAGENET_STD,
    )


@kdbench.hookimpl
def register_datasets(register):
    register(kdbench.Dataset("glyphs", build_glyphs, "embedded: 10 procedural glyph classes, 32×32, generated offline"))
    register(kdbench.Dataset("cifar10", build_cifar10, "CIFAR-10 from a local cifar-10-batches-py directory", needs_root=True))
    register(kdbench.Dataset("cifar100", build_cifar100, "CIFAR-100 from a local cifar-100-python directory", needs_root=True))
    register(kdbench.Dataset("imagefolder", build_imagefolder, "any ImageFolder tree (ImageNet, Imagenette): root/train, root/val", needs_root=True))
