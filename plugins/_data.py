"""Dataset helpers shared by the dataset plugins."""
from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch.utils.data import Dataset


class ArrayDataset(Dataset):
    """uint8 images (N, H, W, C) and labels in memory; yields (image, label, index)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: Callable[[torch.Tensor], torch.Tensor]):
        self.images = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)  # N, C, H, W uint8
        self.labels = torch.as_tensor(labels, dtype=torch.long)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int]:
        return self.transform(self.images[i]), int(self.labels[i]), i


class IndexedDataset(Dataset):
    """Adds the sample index to any (image, label) dataset."""

    def __init__(self, base: Dataset):
        self.base = base

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int]:
        image, label = self.base[i]
        return image, int(label), i


class Normalize:
    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]):
        self.mean = torch.tensor(mean).view(-1, 1, 1)
        self.std = torch.tensor(std).view(-1, 1, 1)

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        return (img.float() / 255.0 - self.mean) / self.std


class RandomCropFlip:
    """The CIFAR augmentation: random crop with zero padding, optional horizontal flip.

    Uses torch's global RNG, which the training loop seeds, so runs repeat.
    """

    def __init__(self, padding: int = 4, flip: bool = True):
        self.padding, self.flip = padding, flip

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        p = self.padding
        if p:
            _, h, w = img.shape
            padded = torch.nn.functional.pad(img, (p, p, p, p))
            dy, dx = torch.randint(0, 2 * p + 1, (2,)).tolist()
            img = padded[:, dy : dy + h, dx : dx + w]
        if self.flip and torch.rand(()) < 0.5:
            img = img.flip(-1)
        return img


class Compose:
    def __init__(self, *fns: Callable[[torch.Tensor], torch.Tensor]):
        self.fns = fns

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        for fn in self.fns:
            img = fn(img)
        return img


# --------------------------------------------------------------------------- strong augmentation


def _affine_nearest(img: torch.Tensor, coeffs: tuple[float, float, float, float, float, float]) -> torch.Tensor:
    """PIL's ``Image.transform(size, AFFINE, coeffs)`` with nearest sampling on a (C, H, W) tensor.

    Output pixel (x, y) takes the input pixel at (a·x + b·y + c, d·x + e·y + f),
    pixel centres at +0.5; pixels that fall outside are black (PIL's fill).
    """
    a, b, c, d, e, f = coeffs
    _, h, w = img.shape
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64) + 0.5, torch.arange(w, dtype=torch.float64) + 0.5,
                            indexing="ij")
    xin = torch.floor(a * xs + b * ys + c).long()
    yin = torch.floor(d * xs + e * ys + f).long()
    inside = (xin >= 0) & (xin < w) & (yin >= 0) & (yin < h)
    out = img[:, yin.clamp(0, h - 1), xin.clamp(0, w - 1)]
    return torch.where(inside, out, torch.zeros((), dtype=img.dtype))


def _rotate(img: torch.Tensor, degrees: float) -> torch.Tensor:
    """PIL's ``Image.rotate(degrees)``: counter-clockwise about the centre, nearest, same size."""
    _, h, w = img.shape
    a = -math.radians(degrees)
    cos, sin = math.cos(a), math.sin(a)
    cx, cy = w / 2, h / 2
    return _affine_nearest(img, (cos, sin, cx - cos * cx - sin * cy, -sin, cos, cy + sin * cx - cos * cy))


def _posterize(img: torch.Tensor, v: float) -> torch.Tensor:
    bits = max(1, int(v))
    return img & (0xFF ^ ((1 << (8 - bits)) - 1))


def _solarize(img: torch.Tensor, v: float) -> torch.Tensor:
    return torch.where(img >= v, 255 - img, img)


def _ops():
    from torchvision.transforms.v2 import functional as TF

    def width(img):
        return img.shape[-1]

    def height(img):
        return img.shape[-2]

    # (name, op(img, v), low, high): the FixMatch-style list of the MLKD code
    # (Jin-Ying/Multi-Level-Logit-Distillation, mdistiller/dataset/cifar100.py, augment_list)
    return [
        ("auto_contrast", lambda img, v: TF.autocontrast(img), 0.0, 1.0),
        ("brightness", lambda img, v: TF.adjust_brightness(img, v), 0.05, 0.95),
        ("color", lambda img, v: TF.adjust_saturation(img, v), 0.05, 0.95),
        ("contrast", lambda img, v: TF.adjust_contrast(img, v), 0.05, 0.95),
        ("equalize", lambda img, v: TF.equalize(img), 0.0, 1.0),
        ("identity", lambda img, v: img, 0.0, 1.0),
        ("posterize", _posterize, 4.0, 8.0),
        ("rotate", _rotate, -30.0, 30.0),
        ("sharpness", lambda img, v: TF.adjust_sharpness(img, v), 0.05, 0.95),
        ("shear_x", lambda img, v: _affine_nearest(img, (1, v, 0, 0, 1, 0)), -0.3, 0.3),
        ("shear_y", lambda img, v: _affine_nearest(img, (1, 0, 0, v, 1, 0)), -0.3, 0.3),
        ("solarize", _solarize, 0.0, 256.0),
        ("translate_x", lambda img, v: _affine_nearest(img, (1, 0, v * width(img), 0, 1, 0)), -0.3, 0.3),
        ("translate_y", lambda img, v: _affine_nearest(img, (1, 0, 0, 0, 1, v * height(img))), -0.3, 0.3),
    ]


class RandAugment:
    """The strong augmentation of MLKD's training views, on uint8 (C, H, W) tensors.

    ``n`` operations drawn with replacement from the 14 of the authors' list
    (each at a magnitude uniform in its range), then a Cutout square of side
    uniform in [0, ``cutout``] × width, filled with the grey (125, 123, 114),
    as the authors' ``RandAugment(2, 10)`` (whose magnitude argument is unused).
    Geometric operations follow PIL's conventions (shear and translation about
    the top-left corner, rotation about the centre, nearest sampling, black
    fill); colour operations are torchvision's ports of PIL's. Draws from
    torch's global RNG, which the training loop seeds, so runs repeat.
    """

    FILL = (125, 123, 114)

    def __init__(self, n: int = 2, cutout: float = 0.5):
        self.n, self.cutout = n, cutout
        self.ops = _ops()

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        for i in torch.randint(0, len(self.ops), (self.n,)).tolist():
            _, op, low, high = self.ops[i]
            img = op(img, low + (high - low) * torch.rand(()).item())
        return self._cutout(img, torch.rand(()).item() * self.cutout)

    def _cutout(self, img: torch.Tensor, frac: float) -> torch.Tensor:
        if frac <= 0:
            return img
        c, h, w = img.shape
        v = frac * w
        x0 = int(max(0.0, torch.rand(()).item() * w - v / 2))
        y0 = int(max(0.0, torch.rand(()).item() * h - v / 2))
        x1, y1 = min(w - 1, int(x0 + v)), min(h - 1, int(y0 + v))  # PIL's rectangle includes its far corner
        img = img.clone()
        fill = torch.tensor(self.FILL[:c] if c <= 3 else self.FILL + (0,) * (c - 3), dtype=img.dtype).view(-1, 1, 1)
        img[:, y0 : y1 + 1, x0 : x1 + 1] = fill
        return img


class MultiView:
    """Applies each transform to the same image: a training item carries a list of views."""

    def __init__(self, *transforms: Callable[[torch.Tensor], torch.Tensor]):
        self.transforms = transforms

    def __call__(self, img):
        return [t(img) for t in self.transforms]


AUGMENTS = ("standard", "strong", "weak+strong")


def check_augment(dataset: str, augment: str) -> None:
    if augment not in AUGMENTS:
        from kdbench import DataError

        raise DataError(f"{dataset}: augment must be one of {', '.join(AUGMENTS)}; got {augment!r}")


def train_transform(augment: str, weak: Callable, norm: Callable) -> Callable:
    """The train split's transform for ``augment`` (see :data:`AUGMENTS`), on uint8 tensors.

    ``standard``: ``weak`` then ``norm`` (the dataset's usual augmentation);
    ``strong``: ``weak``, :class:`RandAugment`, ``norm``; ``weak+strong``: both
    views of every image, the standard one first (``[weak, strong]``).
    """
    standard = Compose(weak, norm)
    strong = Compose(weak, RandAugment(), norm)
    return {"standard": standard, "strong": strong, "weak+strong": MultiView(standard, strong)}[augment]
