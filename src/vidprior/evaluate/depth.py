"""Depth accuracy against a reference depth video: delta1 and RMSE, optionally affine-aligned.

Both inputs are float [T, H, W] depth in [0, 1] (the Pixelplanes depth range). delta1 is the share of
pixels whose ratio max(p / g, g / p) is below 1.25; depths are floored at `DEPTH_EPS` first so a zero
(the far plane, or a dark decoded pixel) gives a large but finite ratio instead of a division by zero.

`align="scale_shift"` is the usual affine-invariant protocol of relative depth estimators (MiDaS,
Depth Anything): the prediction is replaced by s * p + t with the least-squares (s, t) that fits the
reference over the whole video, one pair per video, before either metric. `align="none"` compares the
values as they are.
"""

from __future__ import annotations

import numpy as np

DEPTH_ALIGNMENTS = ("none", "scale_shift")
DEFAULT_DEPTH_ALIGN = "scale_shift"
DEPTH_EPS = 1e-3
DELTA1_THRESHOLD = 1.25


def _check(name: str, depth: np.ndarray) -> np.ndarray:
    depth = np.asarray(depth, dtype=np.float64)
    if depth.ndim != 3:
        raise ValueError(f"{name} depth must be float [T, H, W], got shape {depth.shape}")
    if not np.isfinite(depth).all():
        raise ValueError(f"{name} depth has NaN or infinite values")
    return depth


def align_scale_shift(predicted: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """s * predicted + t with (s, t) = argmin sum((s p + t - g)^2) over all pixels of the video."""
    p, g = predicted.ravel(), reference.ravel()
    p_mean, g_mean = p.mean(), g.mean()
    variance = ((p - p_mean) ** 2).mean()
    # A constant prediction carries no relative depth: the best affine fit is the reference's mean.
    scale = 0.0 if variance < 1e-12 else ((p - p_mean) * (g - g_mean)).mean() / variance
    return scale * predicted + (g_mean - scale * p_mean)


def depth_metrics(
    predicted: np.ndarray, reference: np.ndarray, align: str = DEFAULT_DEPTH_ALIGN
) -> dict[str, float]:
    """{"depth_delta1": share of pixels within 1.25x, "depth_rmse": root mean squared error}.

    Args:
        predicted: float [T, H, W] depth in [0, 1].
        reference: float [T, H, W] depth in [0, 1], same shape.
        align: "scale_shift" (least squares per video, then compare) or "none"; stages pass
            `params.evaluate.depth_align`.
    """
    if align not in DEPTH_ALIGNMENTS:
        raise ValueError(f"unknown depth alignment {align!r}; expected one of {list(DEPTH_ALIGNMENTS)}")
    predicted, reference = _check("predicted", predicted), _check("reference", reference)
    if predicted.shape != reference.shape:
        raise ValueError(f"predicted depth {predicted.shape} and reference {reference.shape} differ in shape")
    if align == "scale_shift":
        predicted = align_scale_shift(predicted, reference)
    rmse = float(np.sqrt(((predicted - reference) ** 2).mean()))
    p, g = np.maximum(predicted, DEPTH_EPS), np.maximum(reference, DEPTH_EPS)
    delta1 = float((np.maximum(p / g, g / p) < DELTA1_THRESHOLD).mean())
    return {"depth_delta1": delta1, "depth_rmse": rmse}
