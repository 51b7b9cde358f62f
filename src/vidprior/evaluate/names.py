"""The metric names: the keys of per-video columns, aggregates, MLflow metrics, tags and policies."""

from __future__ import annotations

from collections.abc import Iterable

# Scored per video by `score_videos` (VBench scales: 0..1; clip_score 0..100).
PER_VIDEO_METRICS = (
    "dynamic_degree",
    "aesthetic_quality",
    "imaging_quality",
    "subject_consistency",
    "background_consistency",
    "motion_smoothness",
    "clip_score",
)
# Scored over a set of videos (`fvd`) or against reference depth (`depth_metrics`).
SET_METRICS = ("fvd", "depth_delta1", "depth_rmse")
METRICS = PER_VIDEO_METRICS + SET_METRICS


def check_metrics(metrics: Iterable[str], valid: tuple[str, ...] = PER_VIDEO_METRICS) -> list[str]:
    """`metrics` as a list, or ValueError naming the unknown ones and the valid set."""
    metrics = [metrics] if isinstance(metrics, str) else list(metrics)
    unknown = [m for m in metrics if m not in valid]
    if unknown:
        hint = ""
        if any(m in METRICS for m in unknown):
            hint = " (fvd comes from vidprior.evaluate.fvd, depth_* from vidprior.evaluate.depth_metrics)"
        raise ValueError(f"unknown metric(s) {unknown}; expected names from {list(valid)}{hint}")
    return metrics
