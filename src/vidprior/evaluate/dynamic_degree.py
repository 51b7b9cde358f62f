"""VBench Dynamic Degree: is a video dynamic (1.0) or static (0.0)? The set's score is the mean.

As VBench (`vbench/dynamic_degree.py`): keep every round(fps / 8)-th frame, compute optical flow
between consecutive kept frames at the video's own resolution, and score each pair by the mean of its
largest 5% flow magnitudes. A pair moves when that score exceeds 6 * min(H, W) / 256 px; the video is
dynamic when at least round(4 * frames / 16) pairs move (frames counted after resampling; at least
one). VBench's flow is RAFT; here it is the `vidprior.flow` backend named in params (a registered RAFT
backend plugs in unchanged).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from vidprior.evaluate.frames import check_video
from vidprior.flow import compute_flow

if TYPE_CHECKING:
    from vidprior.config import DynamicDegreeParams


def resample_interval(fps: float, target_fps: float = 8.0) -> int:
    # Python's round, as VBench: 12 fps -> 2 (round half to even), 7 fps -> 1.
    return max(1, round(fps / target_fps))


def resample(video: np.ndarray, fps: float, target_fps: float = 8.0) -> np.ndarray:
    """Every round(fps / target_fps)-th frame, starting with the first."""
    if not fps > 0:
        raise ValueError(f"fps must be positive, got {fps}")
    return video[:: resample_interval(fps, target_fps)]


def pair_scores(flows: np.ndarray, top_fraction: float = 0.05) -> np.ndarray:
    """Per pair of flows (P, h, w, 2): the mean of the largest `top_fraction` of flow magnitudes."""
    magnitude = np.linalg.norm(np.asarray(flows, dtype=np.float32), axis=-1).reshape(len(flows), -1)
    k = max(1, int(magnitude.shape[1] * top_fraction))
    return np.partition(magnitude, magnitude.shape[1] - k, axis=1)[:, -k:].mean(axis=1)


def moving_threshold(height: int, width: int, params: DynamicDegreeParams) -> float:
    """Pair score above which a pair moves: threshold_px at a `reference_side` short side, scaled."""
    return params.threshold_px * min(height, width) / params.reference_side


def required_moving_pairs(frames: int, params: DynamicDegreeParams) -> int:
    return max(1, round(params.moving_pairs_per_16_frames * frames / 16))


def is_dynamic(video: np.ndarray, fps: float, params: DynamicDegreeParams) -> bool:
    kept = resample(check_video(video), fps, params.target_fps)
    if len(kept) < 2:
        raise ValueError(
            f"dynamic_degree needs at least 2 frames after resampling {len(video)} frames at {fps} fps "
            f"to ~{params.target_fps} fps, got {len(kept)}"
        )
    scores = pair_scores(compute_flow(kept, params.flow_backend), params.top_fraction)
    moving = int((scores > moving_threshold(*kept.shape[1:3], params)).sum())
    return moving >= required_moving_pairs(len(kept), params)
