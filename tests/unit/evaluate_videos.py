"""Synthetic videos with known motion for the metric tests."""

from __future__ import annotations

import cv2
import numpy as np


def texture(height: int, width: int, seed: int = 0, blur: float = 2.0) -> np.ndarray:
    """Smooth random RGB texture (blurred noise stretched to 0..255): flow is well defined everywhere."""
    noise = np.random.default_rng(seed).random((height, width, 3)).astype(np.float32)
    smooth = cv2.GaussianBlur(noise, (0, 0), blur)
    smooth -= smooth.min(axis=(0, 1))
    smooth /= smooth.max(axis=(0, 1))
    return (smooth * 255).astype(np.uint8)


def sliding(xs, height: int, width: int, ys=None, seed: int = 0) -> np.ndarray:
    """Frame t is the window at (xs[t], ys[t]) px of one fixed texture: content moves by -(dx, dy)."""
    ys = [0.0] * len(xs) if ys is None else ys
    margin = int(np.ceil(max(np.abs(xs).max(), np.abs(ys).max()))) + 2
    big = texture(height + 2 * margin, width + 2 * margin, seed)
    out = []
    for x, y in zip(xs, ys, strict=True):
        shift = np.float32([[1, 0, margin + x], [0, 1, margin + y]])
        out.append(cv2.warpAffine(big, shift, (width, height), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP))
    return np.stack(out)


def translating(
    frames: int, height: int, width: int, dx: float, dy: float = 0.0, seed: int = 0
) -> np.ndarray:
    """Constant velocity: (dx, dy) px per frame."""
    t = np.arange(frames, dtype=np.float64)
    return sliding(dx * t, height, width, dy * t, seed)


def static(frames: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.repeat(texture(height, width, seed)[None], frames, axis=0)
