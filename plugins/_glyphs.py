"""Procedural "glyphs" images: the embedded dataset that needs no download.

Each class is a glyph made of a few random strokes. Every sample redraws its
class's glyph under a random affine warp, with jittered stroke ends, random
thickness and colours, distractor strokes and pixel noise. Recognising the
glyph under the clutter takes capacity, so a bigger network wins by several
points at the same budget, yet the data is generated in about a second from a
fixed seed and is identical on every machine.
"""
from __future__ import annotations

import numpy as np

GENERATOR_VERSION = 1  # bump when the images change, so caches and hashes move


def _class_prototypes(rng: np.random.Generator, num_classes: int, strokes: int) -> np.ndarray:
    """(classes, strokes, 2 endpoints, xy) in [-0.8, 0.8]^2."""
    return rng.uniform(-0.8, 0.8, size=(num_classes, strokes, 2, 2)).astype(np.float32)


def _segment_distance(px: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance of every pixel centre (P, 2) to every segment a→b (N, S, 2) → (N, S, P)."""
    ab = b - a  # (N, S, 2)
    ap = px[None, None, :, :] - a[:, :, None, :]  # (N, S, P, 2)
    denom = np.maximum((ab * ab).sum(-1, keepdims=True), 1e-8)  # (N, S, 1)
    t = np.clip((ap * ab[:, :, None, :]).sum(-1) / denom, 0.0, 1.0)  # (N, S, P)
    closest = a[:, :, None, :] + t[..., None] * ab[:, :, None, :]
    return np.sqrt(((px[None, None] - closest) ** 2).sum(-1))


def generate(
    n: int,
    *,
    num_classes: int = 10,
    image_size: int = 32,
    strokes: int = 4,
    distractors: int = 1,
    noise: float = 0.15,
    seed: int = 0,
    split_seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Return images uint8 (n, size, size, 3) and labels int64 (n,).

    ``seed`` fixes the glyph set (the task); ``split_seed`` the samples drawn
    from it, so train and test share glyphs but not images.
    """
    protos = _class_prototypes(np.random.default_rng(seed), num_classes, strokes)
    rng = np.random.default_rng([seed, split_seed, 1])
    labels = rng.integers(0, num_classes, size=n)
    coords = (np.arange(image_size, dtype=np.float32) + 0.5) / image_size * 2 - 1
    yy, xx = np.meshgrid(coords, coords, indexing="ij")
    px = np.stack([xx.ravel(), yy.ravel()], -1)  # (P, 2)

    images = np.empty((n, image_size, image_size, 3), dtype=np.uint8)
    chunk = 512
    for start in range(0, n, chunk):
        lab = labels[start : start + chunk]
        m = len(lab)
        pts = protos[lab] + rng.normal(0, 0.07, size=(m, strokes, 2, 2)).astype(np.float32)
        # random affine warp: rotation, anisotropic scale, shear, translation
        ang = rng.uniform(-0.5, 0.5, m)
        sx, sy = rng.uniform(0.7, 1.1, m), rng.uniform(0.7, 1.1, m)
        sh = rng.uniform(-0.3, 0.3, m)
        cos, sin = np.cos(ang), np.sin(ang)
        mat = np.stack(
            [np.stack([cos * sx, -sin * sy + sh], -1), np.stack([sin * sx, cos * sy], -1)], -2
        ).astype(np.float32)  # (m, 2, 2)
        shift = rng.uniform(-0.2, 0.2, size=(m, 1, 1, 2)).astype(np.float32)
        pts = np.einsum("mij,msej->msei", mat, pts) + shift
        extra = rng.uniform(-1, 1, size=(m, distractors, 2, 2)).astype(np.float32)
        segs = np.concatenate([pts, extra], 1)
        dist = _segment_distance(px, segs[:, :, 0], segs[:, :, 1])  # (m, S, P)
        thick = rng.uniform(0.05, 0.12, size=(m, 1, 1)).astype(np.float32)
        ink = np.exp(-((dist / thick) ** 2)).max(1)  # (m, P)
        ink = ink.reshape(m, image_size, image_size, 1)
        fg = rng.uniform(0, 1, size=(m, 1, 1, 3)).astype(np.float32)
        bg = rng.uniform(0, 1, size=(m, 1, 1, 3)).astype(np.float32)
        # keep foreground/background apart in brightness so the glyph is visible
        bg = np.where(np.abs(fg - bg).mean(-1, keepdims=True) < 0.3, 1 - fg, bg)
        img = ink * fg + (1 - ink) * bg
        img = img + rng.normal(0, noise, size=img.shape).astype(np.float32)
        images[start : start + m] = (np.clip(img, 0, 1) * 255).round().astype(np.uint8)
    return images, labels.astype(np.int64)
