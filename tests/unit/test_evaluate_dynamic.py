"""VBench Dynamic Degree: resampling, the resolution-scaled threshold and the moving-pair count."""

from __future__ import annotations

import numpy as np
import pytest
from evaluate_videos import sliding, static, translating

from vidprior.config import DynamicDegreeParams
from vidprior.evaluate.dynamic_degree import (
    is_dynamic,
    moving_threshold,
    pair_scores,
    required_moving_pairs,
    resample,
)

PARAMS = DynamicDegreeParams()


@pytest.mark.parametrize(
    ("fps", "kept"),
    [
        (24.0, [0, 3, 6, 9, 12, 15, 18, 21]),
        (30.0, [0, 4, 8, 12, 16, 20]),  # round(3.75) = 4
        (12.0, list(range(0, 24, 2))),  # round(1.5) = 2
        (20.0, list(range(0, 24, 2))),  # round(2.5) = 2: Python's round, as VBench
        (8.0, list(range(24))),
        (7.0, list(range(24))),
        (3.0, list(range(24))),  # below 8 fps every frame is kept
    ],
)
def test_resampling_keeps_every_round_fps_over_8th_frame(fps, kept):
    video = np.arange(24, dtype=np.uint8).reshape(24, 1, 1, 1).repeat(3, axis=-1)
    assert resample(video, fps)[:, 0, 0, 0].tolist() == kept


def test_threshold_scales_with_the_short_side_and_pair_count_with_length():
    assert moving_threshold(256, 256, PARAMS) == 6.0
    assert moving_threshold(480, 720, PARAMS) == pytest.approx(11.25)
    assert moving_threshold(1024, 128, PARAMS) == 3.0
    assert [required_moving_pairs(n, PARAMS) for n in (16, 25, 49, 8, 2)] == [4, 6, 12, 2, 1]


def test_pair_score_is_the_mean_of_the_top_five_percent_magnitudes():
    flows = np.zeros((1, 10, 10, 2), np.float32)
    flows[0, 0, :5, 0] = 3.0  # 5 of 100 pixels move 3 px right...
    flows[0, 1, :5, 1] = 4.0  # ...5 more 4 px down: the top 5 are the 4s
    assert pair_scores(flows).tolist() == [4.0]


def test_static_video_is_not_dynamic():
    assert not is_dynamic(static(16, 64, 64), 8.0, PARAMS)


def test_fast_translation_is_dynamic():
    assert is_dynamic(translating(16, 64, 64, dx=6.0, dy=2.0), 8.0, PARAMS)


def test_the_same_motion_is_dynamic_at_low_resolution_only():
    # 2.5 px per frame: above the 1.5 px threshold at 64 px, below the 6 px one at 256 px.
    assert is_dynamic(translating(12, 64, 64, dx=2.5), 8.0, PARAMS)
    assert not is_dynamic(translating(12, 256, 256, dx=2.5), 8.0, PARAMS)


def test_motion_is_judged_after_resampling():
    # 1 px per frame at 24 fps is 3 px between the kept frames: dynamic; at 8 fps nothing is dropped.
    video = translating(24, 64, 64, dx=1.0)
    assert is_dynamic(video, 24.0, PARAMS)
    assert not is_dynamic(video, 8.0, PARAMS)


def test_dynamic_needs_enough_moving_pairs():
    # 16 frames need round(4 * 16 / 16) = 4 moving pairs: still, then 6 px jumps in the last 3 or 4.
    three = sliding([0.0] * 12 + [6.0, 12.0, 18.0, 18.0], 64, 64)
    four = sliding([0.0] * 12 + [6.0, 12.0, 18.0, 24.0], 64, 64)
    assert not is_dynamic(three, 8.0, PARAMS)
    assert is_dynamic(four, 8.0, PARAMS)


def test_too_short_after_resampling_is_an_error():
    with pytest.raises(ValueError, match="at least 2 frames after resampling"):
        is_dynamic(static(3, 32, 32), 30.0, PARAMS)
