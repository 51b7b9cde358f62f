"""Depth delta1 / RMSE against a reference, with and without the per-video scale-shift fit."""

from __future__ import annotations

import numpy as np
import pytest

from vidprior.evaluate import DEPTH_ALIGNMENTS, depth_metrics


def reference(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0.1, 1.0, (3, 8, 10))


@pytest.mark.parametrize("align", DEPTH_ALIGNMENTS)
def test_identical_depth_is_perfect(align):
    ref = reference()
    assert depth_metrics(ref, ref.copy(), align=align) == {"depth_delta1": 1.0, "depth_rmse": 0.0}


def test_scaled_and_shifted_prediction_is_perfect_after_alignment_only():
    ref = reference()
    predicted = 0.5 * ref - 0.02  # an affine-invariant estimator's output: right up to scale and shift
    aligned = depth_metrics(predicted, ref, align="scale_shift")
    assert aligned["depth_delta1"] == 1.0
    assert aligned["depth_rmse"] == pytest.approx(0.0, abs=1e-12)

    raw = depth_metrics(predicted, ref, align="none")
    assert raw["depth_rmse"] == pytest.approx(np.sqrt(np.mean((0.5 * ref + 0.02) ** 2)))
    ratio = np.maximum(predicted, 1e-3) / ref
    assert raw["depth_delta1"] == pytest.approx(np.mean(np.maximum(ratio, 1 / ratio) < 1.25))
    assert raw["depth_delta1"] == 0.0  # every pixel is more than 25% off


def test_hand_computed_values_and_zero_depth_floor():
    ref = np.array([[[0.5, 0.5], [0.4, 0.0]]])
    predicted = np.array([[[0.55, 0.7], [0.4, 0.0]]])
    # ratios 1.1 (in), 1.4 (out), 1 (in); 0 vs 0 is floored to 1e-3 / 1e-3 = 1 (in)
    out = depth_metrics(predicted, ref, align="none")
    assert out["depth_delta1"] == pytest.approx(0.75)
    assert out["depth_rmse"] == pytest.approx(np.sqrt((0.05**2 + 0.2**2) / 4))


def test_default_alignment_is_scale_shift_and_bad_inputs_are_named():
    ref = reference()
    assert depth_metrics(2 * ref, ref)["depth_rmse"] == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match=r"unknown depth alignment 'affine'.*'none', 'scale_shift'"):
        depth_metrics(ref, ref, align="affine")
    with pytest.raises(ValueError, match="differ in shape"):
        depth_metrics(ref[:2], ref)
    with pytest.raises(ValueError, match=r"float \[T, H, W\]"):
        depth_metrics(ref[0], ref[0])
