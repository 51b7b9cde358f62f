"""`score_videos`: the per-video metrics of a list of videos, one row per video."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from vidprior.evaluate.frames import check_video
from vidprior.evaluate.names import PER_VIDEO_METRICS, check_metrics

if TYPE_CHECKING:
    from vidprior.config import EvaluateParams, Params

# metric -> fn(video, fps, prompt, params.evaluate) -> float; modules are imported on first use.
Scorer = Callable[[np.ndarray, float, str, "EvaluateParams"], float]


def _dynamic_degree(video: np.ndarray, fps: float, prompt: str, p: EvaluateParams) -> float:
    from vidprior.evaluate.dynamic_degree import is_dynamic

    return float(is_dynamic(video, fps, p.dynamic_degree))


def _aesthetic_quality(video: np.ndarray, fps: float, prompt: str, p: EvaluateParams) -> float:
    from vidprior.evaluate.aesthetic import aesthetic_quality

    return aesthetic_quality(video, p)


def _imaging_quality(video: np.ndarray, fps: float, prompt: str, p: EvaluateParams) -> float:
    from vidprior.evaluate.imaging import imaging_quality

    return imaging_quality(video, p)


def _subject_consistency(video: np.ndarray, fps: float, prompt: str, p: EvaluateParams) -> float:
    from vidprior.evaluate.consistency import subject_consistency

    return subject_consistency(video, p)


def _background_consistency(video: np.ndarray, fps: float, prompt: str, p: EvaluateParams) -> float:
    from vidprior.evaluate.consistency import background_consistency

    return background_consistency(video, p)


def _motion_smoothness(video: np.ndarray, fps: float, prompt: str, p: EvaluateParams) -> float:
    from vidprior.evaluate.motion_smoothness import motion_smoothness

    return motion_smoothness(video, p.motion_smoothness)


def _clip_score(video: np.ndarray, fps: float, prompt: str, p: EvaluateParams) -> float:
    from vidprior.evaluate.clip_score import clip_score

    return clip_score(video, prompt, p)


SCORERS: dict[str, Scorer] = {
    "dynamic_degree": _dynamic_degree,
    "aesthetic_quality": _aesthetic_quality,
    "imaging_quality": _imaging_quality,
    "subject_consistency": _subject_consistency,
    "background_consistency": _background_consistency,
    "motion_smoothness": _motion_smoothness,
    "clip_score": _clip_score,
}
assert tuple(SCORERS) == PER_VIDEO_METRICS


def score_videos(
    videos: list[np.ndarray],
    fps: list[float],
    prompts: list[str],
    metrics: Sequence[str],
    params: Params,
) -> pd.DataFrame:
    """One row per video (same order), one float column per metric in `metrics` (in that order).

    Args:
        videos: uint8 RGB [T, H, W, 3] each.
        fps: each video's frame rate (Dynamic Degree resamples to ~8 fps by it).
        prompts: each video's prompt (read by clip_score only).
        metrics: names from `PER_VIDEO_METRICS`; dynamic_degree is 0.0 / 1.0 per video.
        params: the resolved params; `params.evaluate` names the backbones and metric settings.

    Raises:
        ValueError: an unknown metric (naming it and the valid set), lists of different lengths, or a
            video that is not uint8 [T, H, W, 3] or too short for a metric.
    """
    metrics = check_metrics(metrics)
    if len(set(metrics)) != len(metrics):
        raise ValueError(f"metrics lists a name twice: {list(metrics)}")
    if not len(videos) == len(fps) == len(prompts):
        raise ValueError(
            "videos, fps and prompts must have one entry per video, got "
            f"{len(videos)}, {len(fps)}, {len(prompts)}"
        )
    checked = [check_video(v, f"video {i}") for i, v in enumerate(videos)]
    columns: dict[str, list[float]] = {}
    for metric in metrics:
        scorer = SCORERS[metric]
        values = []
        for i, (video, rate, prompt) in enumerate(zip(checked, fps, prompts, strict=True)):
            try:
                values.append(float(scorer(video, float(rate), str(prompt), params.evaluate)))
            except ValueError as e:
                raise ValueError(f"{metric} of video {i}: {e}") from e
        columns[metric] = values
    return pd.DataFrame(columns, index=pd.RangeIndex(len(checked)), columns=list(metrics), dtype=float)
