"""Plain-numpy reference operations for the feature-method formula tests (no torch, no plugin code)."""
from __future__ import annotations

import math

import numpy as np

BN_EPS = 1e-5


def conv2d(x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None, padding: int = 0) -> np.ndarray:
    """Stride-1 cross-correlation: x (N, C, H, W), w (O, C, k, k)."""
    n, c, h, wd = x.shape
    o, _, k, _ = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    oh, ow = h + 2 * padding - k + 1, wd + 2 * padding - k + 1
    out = np.zeros((n, o, oh, ow))
    for i in range(oh):
        for j in range(ow):
            patch = xp[:, :, i:i + k, j:j + k]  # (N, C, k, k)
            out[:, :, i, j] = np.einsum("nckl,ockl->no", patch, w)
    if b is not None:
        out += b[None, :, None, None]
    return out


def conv_transpose2d(x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None, padding: int = 0) -> np.ndarray:
    """Stride-1 transposed convolution, w (C_in, C_out, k, k): scatter every input pixel's kernel."""
    n, c, h, wd = x.shape
    _, o, k, _ = w.shape
    full = np.zeros((n, o, h + k - 1, wd + k - 1))
    for i in range(h):
        for j in range(wd):
            full[:, :, i:i + k, j:j + k] += np.einsum("nc,cokl->nokl", x[:, :, i, j], w)
    out = full[:, :, padding:full.shape[2] - padding, padding:full.shape[3] - padding]
    if b is not None:
        out = out + b[None, :, None, None]
    return out


def bn_eval(x: np.ndarray) -> np.ndarray:
    """A fresh BatchNorm in eval mode (running mean 0, variance 1, unit affine)."""
    return x / math.sqrt(1.0 + BN_EPS)


def relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0.0)


def leaky_relu(x: np.ndarray, slope: float = 0.1) -> np.ndarray:
    return np.where(x > 0, x, slope * x)


def avg_pool_to(x: np.ndarray, size: int) -> np.ndarray:
    """Adaptive average pooling of square maps whose side is a multiple of ``size``."""
    n, c, h, w = x.shape
    f = h // size
    return x.reshape(n, c, size, f, size, f).mean(axis=(3, 5))


def nearest_to(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """PyTorch's ``mode='nearest'``: source index floor(i · in / out)."""
    h, w = x.shape[2:]
    rows = [int(math.floor(i * h / size[0])) for i in range(size[0])]
    cols = [int(math.floor(j * w / size[1])) for j in range(size[1])]
    return x[:, :, rows][:, :, :, cols]


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def softmax(v: np.ndarray) -> np.ndarray:
    e = np.exp(v - v.max())
    return e / e.sum()


def cross_entropy(logits: np.ndarray, labels) -> float:
    return float(np.mean([-np.log(softmax(r)[y]) for r, y in zip(logits, labels)]))
