"""VBench Motion Smoothness: how well a frame interpolator predicts the odd frames from the even ones.

As VBench (`vbench/motion_smoothness.py`): keep frames 0, 2, 4, ..., interpolate the midpoint of
each consecutive kept pair, and compare the interpolated frames with the real odd frames: score =
(255 - mean |difference|) / 255, in [0, 1] (1: the motion is exactly what interpolation predicts).

VBench's interpolator is AMT-S, a learned model not available here. Its stand-in ("flow_midpoint") is
classical bidirectional flow interpolation at t = 1/2: flows F01 and F10 between the two kept frames
(the `vidprior.flow` backend at full resolution) give the midpoint's backward flows
F_t0 = (F10 - F01) / 4 and F_t1 = (F01 - F10) / 4 (Jiang et al., Super SloMo, CVPR 2018, at t = 1/2),
each neighbour is backward-warped to the midpoint (bilinear) and the two are averaged, then rounded to
uint8 as VBench's interpolated frames are. Linear motion is predicted exactly, so a smooth video
scores near 1 and jerky or shuffled motion lower; absolute values are not AMT's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import cv2
import numpy as np

from vidprior.evaluate.frames import check_video
from vidprior.flow import compute_flow

if TYPE_CHECKING:
    from vidprior.config import MotionSmoothnessParams


def _backward_warp(frame: np.ndarray, flow: np.ndarray) -> np.ndarray:
    height, width = flow.shape[:2]
    xs, ys = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
    return cv2.remap(
        frame.astype(np.float32),
        xs + flow[..., 0],
        ys + flow[..., 1],
        interpolation=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REPLICATE,
    )


def interpolate_midpoints(kept: np.ndarray, flow_backend: str = "dis") -> np.ndarray:
    """uint8 [K, H, W, 3] -> uint8 [K - 1, H, W, 3]: the predicted frame halfway between each pair."""
    forward = compute_flow(kept, flow_backend)  # F01 of each pair
    backward = compute_flow(kept[::-1], flow_backend)[::-1]  # F10 of each pair
    out = np.empty((len(kept) - 1, *kept.shape[1:]), np.uint8)
    for i, (f01, f10) in enumerate(zip(forward, backward, strict=True)):
        to_first, to_second = (f10 - f01) / 4, (f01 - f10) / 4
        blend = (_backward_warp(kept[i], to_first) + _backward_warp(kept[i + 1], to_second)) / 2
        out[i] = np.clip(np.rint(blend), 0, 255).astype(np.uint8)
    return out


def motion_smoothness(video: np.ndarray, params: MotionSmoothnessParams) -> float:
    video = check_video(video, min_frames=3)
    kept, real = video[0::2], video[1::2]
    predicted = interpolate_midpoints(kept, params.flow_backend)
    # With an even frame count the last odd frame has no right neighbour: VBench skips it too.
    real = real[: len(predicted)]
    diff = np.abs(predicted.astype(np.int16) - real.astype(np.int16))
    per_frame = diff.reshape(len(diff), -1).mean(axis=1)
    return float((255.0 - per_frame.mean()) / 255.0)
