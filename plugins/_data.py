"""Dataset helpers shared by the dataset plugins."""
from __future__ import annotations

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
