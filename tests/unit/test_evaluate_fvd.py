"""FVD: Frechet distance of VideoMAE feature Gaussians (tiny VideoMAE), and its small-set handling."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from evaluate_videos import translating

from vidprior.config import load_params
from vidprior.evaluate import fvd
from vidprior.evaluate.fvd import features_fvd, sample_frame_indices

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def params():
    return load_params([ROOT / "params.yaml"])


def test_same_features_give_zero_and_a_mean_shift_its_squared_length():
    features = np.random.default_rng(0).normal(size=(12, 32))  # fewer samples than dims: singular
    assert features_fvd(features, features.copy()) == pytest.approx(0.0, abs=1e-6)
    direction = np.zeros(32)
    direction[:4] = 0.5  # |shift| = 1
    values = [features_fvd(features + s * direction, features) for s in (0.5, 1.0, 2.0, 4.0)]
    # Same covariance, so FVD is exactly |mean shift|^2 (up to the eps regularisation).
    assert values == pytest.approx([0.25, 1.0, 4.0, 16.0], rel=1e-4)


def test_a_wider_distribution_is_farther_and_single_samples_work():
    rng = np.random.default_rng(1)
    reference = rng.normal(size=(40, 8))
    wider = [features_fvd(reference * k, reference) for k in (1.0, 1.5, 2.0, 3.0)]
    assert wider[0] == pytest.approx(0.0, abs=1e-6)
    assert wider == sorted(wider) and wider[-1] > wider[1]
    # One sample per set: zero covariances, the distance is between the two points.
    assert features_fvd(np.ones((1, 3)), np.zeros((1, 3))) == pytest.approx(3.0, rel=1e-4)
    with pytest.raises(ValueError, match="at least one"):
        features_fvd(np.zeros((0, 3)), np.zeros((2, 3)))


def test_frames_are_sampled_evenly_and_short_videos_repeat_frames():
    assert sample_frame_indices(49, 16).tolist()[:3] == [0, 3, 6]
    assert sample_frame_indices(49, 16)[-1] == 48
    assert sample_frame_indices(3, 4).tolist() == [0, 1, 1, 2]


def test_video_fvd_is_zero_for_the_same_set_and_grows_with_a_brightness_shift(params):
    videos = [translating(6, 40, 48, dx=1.5 * (s + 1), seed=s) for s in range(4)]
    assert fvd(videos, [v.copy() for v in videos], params) == pytest.approx(0.0, abs=1e-6)

    def brighter(v, amount):
        return np.clip(v.astype(int) + amount, 0, 255).astype(np.uint8)

    distances = [fvd([brighter(v, a) for v in videos], videos, params) for a in (20, 60, 120)]
    assert 0 < distances[0] < distances[1] < distances[2]


def test_empty_sets_are_errors(params):
    with pytest.raises(ValueError, match="at least one video in each set, got 0 generated"):
        fvd([], [translating(4, 16, 16, dx=1.0)], params)
