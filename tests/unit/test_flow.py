"""Optical flow and its statistics against synthetic videos whose motion is known exactly.

Tolerances (128x128, 10 frames, flow at the video's own resolution unless stated):
* static: mean |w| < 0.02 px.
* pan: mean |u|, mean |v| and mean |w| within 3% of the truth (5% after an H.264 round trip at
  crf 18); zoom: within 8% (12% after H.264): both backends underestimate zoom slightly.
* moving object: mean flow inside the object (eroded 4 px) within 0.1 px of its displacement per
  axis, mean |w| on the background (4 px away from the object) < 0.15 px, and the whole-frame
  mean |w| within 0.25 px of the truth (flow smears over the object's rim); same after H.264.
* flicker (no motion, brightness to 20% every other frame): spurious mean |w| < 0.6 px.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from vidprior import flow as flow_mod
from vidprior import synthetic_video as sv
from vidprior.flow import (
    FlowStats,
    compute_flow,
    flow_statistics,
    get_backend,
    pair_means,
    register_backend,
    video_flow_statistics,
)
from vidprior.io.media import read_video, write_video

BACKENDS = ["dis", "farneback"]
FRAMES = 10


@pytest.fixture(scope="module")
def videos():
    return {
        "static": sv.static(frames=FRAMES),
        "pan": sv.pan(2.0, 1.0, frames=FRAMES),
        "zoom": sv.zoom(0.02, frames=FRAMES),
        "moving_object": sv.moving_object(2.0, 1.0, size=0.2, frames=FRAMES),
        "flicker": sv.flicker(frames=FRAMES),
    }


@pytest.fixture(scope="module")
def h264_videos(videos, tmp_path_factory):
    folder = tmp_path_factory.mktemp("h264")
    out = {}
    for name, video in videos.items():
        path = write_video(folder / f"{name}.mp4", video.frames, fps=7, crf=18)
        out[name], _ = read_video(path)
        assert out[name].shape == video.frames.shape
    return out


REL = {"pan": 0.03, "zoom": 0.08}
REL_H264 = {"pan": 0.05, "zoom": 0.12}


def _check_against_truth(name, video, frames, backend, rel):
    flows = compute_flow(frames, backend)
    got, truth = flow_statistics(flows), flow_statistics(video.flow)
    assert got.n_pairs == FRAMES - 1
    if name == "static":
        assert got.mean_mag < 0.02
    elif name in ("pan", "zoom"):
        for key in ("mean_u", "mean_v", "mean_mag"):
            assert getattr(got, key) == pytest.approx(getattr(truth, key), rel=rel[name]), key
    elif name == "moving_object":
        kernel = np.ones((9, 9), np.uint8)
        inner = np.stack([cv2.erode(m.astype(np.uint8), kernel) for m in video.masks[:-1]]).astype(bool)
        near = np.stack([cv2.dilate(m.astype(np.uint8), kernel) for m in video.masks[:-1]]).astype(bool)
        np.testing.assert_allclose(flows[inner].mean(axis=0), video.object_shift, atol=0.1)
        assert np.linalg.norm(flows[~near], axis=-1).mean() < 0.15
        assert got.mean_mag == pytest.approx(truth.mean_mag, abs=0.25)
    elif name == "flicker":
        assert got.mean_mag < 0.6
    return got


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["static", "pan", "zoom", "moving_object", "flicker"])
def test_flow_statistics_match_the_known_motion(videos, name, backend):
    _check_against_truth(name, videos[name], videos[name].frames, backend, REL)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["static", "pan", "zoom", "moving_object", "flicker"])
def test_flow_statistics_survive_an_h264_round_trip(videos, h264_videos, name, backend):
    _check_against_truth(name, videos[name], h264_videos[name], backend, REL_H264)


@pytest.mark.parametrize("backend", BACKENDS)
def test_pan_flow_is_dense_and_exact_per_pixel(videos, backend):
    flows = compute_flow(videos["pan"].frames, backend)
    error = np.linalg.norm(flows - videos["pan"].flow, axis=-1)
    assert error.mean() < 0.1
    assert flows.dtype == np.float32 and flows.shape == (FRAMES - 1, 128, 128, 2)


def test_flow_is_in_pixels_of_the_analysis_resolution(videos):
    # Shrinking the frame to 3/4 shrinks a translation measured in pixels to 3/4.
    stats = video_flow_statistics(videos["pan"].frames, "dis", size=(96, 96))
    assert stats.mean_u == pytest.approx(1.5, rel=0.05)
    assert stats.mean_v == pytest.approx(0.75, rel=0.05)
    assert compute_flow(videos["pan"].frames, "dis", size=(48, 80)).shape == (FRAMES - 1, 48, 80, 2)


def test_statistics_are_means_and_population_variances_of_per_pair_means():
    flows = np.zeros((3, 4, 5, 2), dtype=np.float32)
    flows[..., 0] = np.array([-3.0, 0.0, 3.0])[:, None, None]  # |u| per pair: 3, 0, 3
    flows[..., 1] = np.array([4.0, 1.0, -4.0])[:, None, None]  # |v| per pair: 4, 1, 4
    np.testing.assert_allclose(pair_means(flows), [[3, 4, 5], [0, 1, 1], [3, 4, 5]])
    stats = flow_statistics(flows)
    assert (stats.mean_u, stats.mean_v, stats.mean_mag) == pytest.approx((2.0, 3.0, 11 / 3))
    assert stats.var_u == pytest.approx(np.var([3, 0, 3]))  # ddof=0: 2, not 3
    assert stats.var_v == pytest.approx(2.0)
    assert stats.var_mag == pytest.approx(np.var([5, 1, 5]))
    assert stats.n_pairs == 3 and stats.is_finite()
    assert stats.as_dict()["n_pairs"] == 3


def test_non_finite_statistics_are_detected():
    flows = np.zeros((2, 4, 4, 2), dtype=np.float32)
    flows[1, 0, 0, 1] = np.nan
    stats = flow_statistics(flows)
    assert not stats.is_finite()
    assert stats.non_finite_fields() == ["mean_v", "var_v", "mean_mag", "var_mag"]
    assert not FlowStats(1.0, 0.0, 1.0, 0.0, float("inf"), 0.0, 2).is_finite()


def test_too_few_frames_or_wrong_input_is_a_clear_error(videos):
    with pytest.raises(ValueError, match=r"at least 2 frames .* got T=1"):
        compute_flow(videos["pan"].frames[:1])
    with pytest.raises(ValueError, match=r"\(T, H, W, 3\) uint8"):
        compute_flow(videos["pan"].frames.astype(np.float32))
    with pytest.raises(ValueError, match=r"\(T, H, W, 3\) uint8"):
        compute_flow(videos["pan"].frames[..., 0])
    with pytest.raises(ValueError, match="at least one frame pair"):
        flow_statistics(np.zeros((0, 4, 4, 2), dtype=np.float32))
    with pytest.raises(ValueError, match=r"unknown flow backend 'raft'; expected one of \['dis', 'farn"):
        compute_flow(videos["pan"].frames, "raft")


def test_a_new_backend_plugs_in_without_changing_callers(videos, monkeypatch):
    monkeypatch.setattr(flow_mod, "_FACTORIES", dict(flow_mod._FACTORIES))
    monkeypatch.setattr(flow_mod, "_INSTANCES", {})
    calls = []

    def factory():
        calls.append("loaded")  # a GPU backend would load its weights here, once

        def backend(frames):
            assert frames.shape[1:] == (32, 32, 3) and frames.dtype == np.uint8  # RGB, already resized
            return np.ones((len(frames) - 1, 32, 32, 2), dtype=np.float32)

        return backend

    register_backend("constant", factory)
    assert "constant" in flow_mod.available_backends()
    stats = video_flow_statistics(videos["pan"].frames, "constant", size=(32, 32))
    assert (stats.mean_u, stats.mean_v, stats.mean_mag) == pytest.approx((1.0, 1.0, np.sqrt(2)))
    compute_flow(videos["pan"].frames, "constant", size=(32, 32))
    assert calls == ["loaded"] and get_backend("constant") is get_backend("constant")
    with pytest.raises(ValueError, match="already registered"):
        register_backend("constant", factory)

    register_backend("constant", lambda: lambda frames: np.zeros((1, 2, 2, 2)), replace=True)
    with pytest.raises(ValueError, match=r"returned shape \(1, 2, 2, 2\), expected \(9, 32, 32, 2\)"):
        compute_flow(videos["pan"].frames, "constant", size=(32, 32))


def test_synthetic_videos_are_deterministic_and_carry_their_truth():
    a, b = sv.moving_object(seed=3, frames=6), sv.moving_object(seed=3, frames=6)
    assert np.array_equal(a.frames, b.frames) and np.array_equal(a.masks, b.masks)
    assert not np.array_equal(a.frames, sv.moving_object(seed=4, frames=6).frames)
    assert a.frames.shape == (6, 128, 128, 3) and a.frames.dtype == np.uint8
    assert a.object_area == pytest.approx(0.2, abs=0.01)
    pan = sv.pan(1.5, -0.5, frames=6, height=64, width=96)
    assert pan.frames.shape == (6, 64, 96, 3) and pan.flow.shape == (5, 64, 96, 2)
    assert np.all(pan.flow == np.array([1.5, -0.5], dtype=np.float32))
    zoom = sv.zoom(0.05, frames=3)
    assert zoom.flow[0, 0, 0] == pytest.approx([-0.05 * 63.5, -0.05 * 63.5])  # rate * (x - centre)
    assert sv.flicker(frames=4).gains == pytest.approx((1.0, 0.2, 1.0, 0.2))
    with pytest.raises(ValueError, match="leaves the"):
        sv.moving_object(dx=10.0, size=0.3, frames=12)
