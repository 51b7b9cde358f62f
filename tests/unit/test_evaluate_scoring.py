"""`score_videos` on tiny backbones: the table it returns, the image metrics' known answers, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from evaluate_videos import static, texture, translating

from vidprior.config import load_params
from vidprior.evaluate import METRICS, PER_VIDEO_METRICS, score_videos
from vidprior.evaluate.frames import consistency_score
from vidprior.models.spec import ModelSpec, TinySpec

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def params():
    return load_params([ROOT / "params.yaml"])


def score(video, metric, params, prompt="a dog runs on the beach", fps=8.0) -> float:
    return float(score_videos([video], [fps], [prompt], [metric], params)[metric].iloc[0])


def test_one_row_per_video_one_float_column_per_metric_in_order(params):
    videos = [static(6, 32, 48), translating(6, 32, 48, dx=6.0), static(6, 40, 40, seed=2)]
    metrics = ["motion_smoothness", "dynamic_degree", "subject_consistency"]
    table = score_videos(videos, [8.0] * 3, ["a", "b", "c"], metrics, params)
    assert isinstance(table, pd.DataFrame)
    assert list(table.columns) == metrics
    assert list(table.index) == [0, 1, 2]
    assert all(table[m].dtype == np.float64 for m in metrics)
    assert table["dynamic_degree"].tolist() == [0.0, 1.0, 0.0]
    assert table["motion_smoothness"].iloc[0] == 1.0


def test_every_per_video_metric_scores(params):
    videos = [translating(5, 40, 56, dx=2.0, seed=s) for s in range(2)]
    table = score_videos(videos, [8.0, 8.0], ["a red car", "a dog"], PER_VIDEO_METRICS, params)
    assert list(table.columns) == list(PER_VIDEO_METRICS)
    assert np.isfinite(table.to_numpy()).all()
    assert set(PER_VIDEO_METRICS) < set(METRICS) and {"fvd", "depth_delta1", "depth_rmse"} <= set(METRICS)


def test_identical_frames_are_perfectly_consistent(params):
    video = static(5, 40, 56)
    assert score(video, "subject_consistency", params) == pytest.approx(1.0, abs=1e-5)
    assert score(video, "background_consistency", params) == pytest.approx(1.0, abs=1e-5)


def test_changing_content_is_less_consistent(params):
    still = static(6, 48, 48)
    cuts = np.stack([texture(48, 48, seed=s) for s in range(6)])
    for metric in ("subject_consistency", "background_consistency"):
        assert score(cuts, metric, params) < score(still, metric, params)


def test_consistency_scheme_is_vbenchs():
    import torch

    # frame 1 vs previous and first: 0 and 0; frame 2 vs previous: 0, vs first: 1 -> (0 + 0.5) / 2
    features = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 0.0]])
    assert consistency_score(features) == pytest.approx(0.25)
    # negative similarities count as 0, not against
    assert consistency_score(torch.tensor([[1.0, 0.0], [-1.0, 0.0]])) == 0.0


@pytest.mark.parametrize("metric", ["aesthetic_quality", "imaging_quality", "clip_score"])
def test_image_metrics_are_per_frame_means(params, metric):
    a, b = texture(40, 56, seed=1), texture(40, 56, seed=2)
    one_a, one_b = score(a[None], metric, params), score(b[None], metric, params)
    assert one_a != one_b
    assert score(np.stack([a, b, b, a]), metric, params) == pytest.approx((one_a + one_b) / 2, abs=1e-5)


def test_clip_score_is_100_times_the_clamped_cosine_per_frame(params):
    # Seed 3 of the tiny CLIP gives this prompt both signs of similarity over these frames: clamping per
    # frame (then averaging) differs from clamping the mean.
    params = params.model_copy(
        update={"evaluate": params.evaluate.model_copy(update={"clip": ModelSpec(tiny=TinySpec(seed=3))})}
    )
    frames = np.random.default_rng(0).integers(0, 255, (4, 48, 64, 3), dtype=np.uint8)
    per_frame = [score(f[None], "clip_score", params, "a red car drives") for f in frames]
    video = score(frames, "clip_score", params, "a red car drives")
    assert all(0.0 <= s <= 100.0 for s in [*per_frame, video])
    assert video == pytest.approx(np.mean(per_frame), abs=1e-4)
    assert video == score(frames.copy(), "clip_score", params, "a red car drives")
    assert 0 in per_frame and video > 0


def test_unknown_metric_is_named_with_the_valid_set(params):
    with pytest.raises(
        ValueError, match=r"unknown metric\(s\) \['sharpness'\].*'dynamic_degree'.*'clip_score'"
    ):
        score_videos([static(3, 16, 16)], [8.0], ["p"], ["dynamic_degree", "sharpness"], params)
    with pytest.raises(ValueError, match="fvd comes from vidprior.evaluate.fvd"):
        score_videos([static(3, 16, 16)], [8.0], ["p"], ["fvd"], params)


def test_mismatched_lists_and_bad_videos_are_errors(params):
    with pytest.raises(ValueError, match="one entry per video, got 2, 1, 2"):
        score_videos([static(3, 16, 16)] * 2, [8.0], ["a", "b"], ["dynamic_degree"], params)
    with pytest.raises(ValueError, match=r"video 1: expected uint8 RGB frames \[T, H, W, 3\]"):
        score_videos([static(3, 16, 16), np.zeros((3, 16, 16))], [8.0] * 2, ["a"] * 2, ["clip_score"], params)
    with pytest.raises(ValueError, match="motion_smoothness of video 0: .*at least 3 frames"):
        score_videos([static(2, 16, 16)], [8.0], ["a"], ["motion_smoothness"], params)
