"""The offline judge on synthetic videos whose truth is known (128x128, 10 frames, analysed at 128)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vidprior import flow as flow_mod
from vidprior import synthetic_video as sv
from vidprior.config import OfflineJudgeParams
from vidprior.io.media import read_video, write_video
from vidprior.unic.judge_types import CRITERIA, JudgeItem
from vidprior.unic.offline_judge import OFFLINE_JUDGE_NAME, OfflineJudge

FRAMES = 10
BACKENDS = ["dis", "farneback"]


def _item(frames, name="v") -> JudgeItem:
    return JudgeItem(id=name, prompt="a thing moving", frames=list(frames), content_hash="0" * 64)


@pytest.fixture(scope="module", params=BACKENDS)
def judge(request):
    return OfflineJudge(OfflineJudgeParams(), flow_backend=request.param, analysis_size=(128, 128))


@pytest.fixture(scope="module")
def videos():
    return {
        "static": sv.static(frames=FRAMES),
        "pan": sv.pan(2.0, 1.0, frames=FRAMES),
        "zoom": sv.zoom(0.02, frames=FRAMES),
        "object": sv.moving_object(2.0, 1.0, size=0.2, frames=FRAMES),
        "small_object": sv.moving_object(1.5, -1.0, size=0.04, frames=FRAMES),
        "object_and_pan": sv.object_and_pan(2.0, -1.0, 1.5, 0.5, size=0.2, frames=FRAMES),
        "flicker": sv.flicker(frames=FRAMES),
    }


def test_static_video_has_no_motion_and_is_not_called_camera_only(judge, videos):
    verdict = judge.judge(_item(videos["static"].frames))
    assert verdict.criteria["c4_motion"] is False
    assert verdict.criteria["c5_not_camera_only"] is True
    assert "c4_motion: no motion" in verdict.detail
    assert verdict.positive is False


@pytest.mark.parametrize("name", ["pan", "zoom"])
def test_pan_and_zoom_are_camera_only_motion(judge, videos, name):
    verdict = judge.judge(_item(videos[name].frames))
    assert verdict.criteria["c5_not_camera_only"] is False
    assert "c5_not_camera_only: camera-only motion" in verdict.detail
    assert verdict.criteria["c4_motion"] and verdict.criteria["c3_consistent"]
    assert verdict.extras["object_motion_px"] < 0.5 <= verdict.extras["mean_motion_px"]


@pytest.mark.parametrize("name", ["object", "object_and_pan"])
def test_large_moving_object_is_positive_also_while_the_camera_pans(judge, videos, name):
    video = videos[name]
    verdict = judge.judge(_item(video.frames))
    assert verdict.labelled and verdict.positive, verdict.detail
    assert verdict.failed_criteria == [] and verdict.detail == ""
    raw = json.loads(verdict.raw)
    assert raw["area_source"] == "motion"
    # The moving region estimates the object's area (truth 0.20) to within 0.05.
    assert verdict.extras["object_area"] == pytest.approx(video.object_area, abs=0.05)
    assert verdict.extras["object_motion_px"] == pytest.approx(np.hypot(*video.object_shift), rel=0.2)


def test_small_moving_object_fails_only_the_size_criterion(judge, videos):
    verdict = judge.judge(_item(videos["small_object"].frames))
    assert verdict.failed_criteria == ["c1_object_visible"]
    assert "object area" in verdict.detail and "(motion)" in verdict.detail
    assert verdict.extras["object_area"] < 0.1


def test_flicker_is_inconsistent(judge, videos):
    verdict = judge.judge(_item(videos["flicker"].frames))
    assert verdict.criteria["c3_consistent"] is False
    assert "c3_consistent: inconsistent frames: worst-pair SSIM" in verdict.detail
    assert verdict.extras["consistency"] < 0.5


def test_consistency_falls_with_flicker_strength():
    judge = OfflineJudge(OfflineJudgeParams(), "dis", (128, 128))
    scores = [
        judge.judge(_item(sv.flicker(amplitude, frames=6).frames)).extras["consistency"]
        for amplitude in (0.0, 0.3, 0.5, 0.8)
    ]
    assert scores[0] > 0.99 and scores == sorted(scores, reverse=True)


def test_verdicts_survive_an_h264_round_trip(videos, tmp_path):
    judge = OfflineJudge(OfflineJudgeParams(), "dis", (128, 128))
    expected = {"object": [], "pan": ["c5_not_camera_only"], "flicker": ["c3_consistent"]}
    for name, failing in expected.items():
        frames, _ = read_video(write_video(tmp_path / f"{name}.mp4", videos[name].frames, fps=7))
        verdict = judge.judge(_item(frames, name))
        assert set(failing) <= set(verdict.failed_criteria), (name, verdict.detail)
        if not failing:
            assert verdict.positive, verdict.detail


def test_defaults_at_the_paper_analysis_resolution():
    judge = OfflineJudge(OfflineJudgeParams())  # dis at 256x256, what the stage uses by default
    video = sv.moving_object(3.0, 1.0, size=0.2, frames=8, height=256, width=256)
    positive = judge.judge(_item(video.frames))
    assert positive.positive, positive.detail
    pan = judge.judge(_item(sv.pan(3.0, -2.0, frames=8, height=256, width=256).frames))
    assert "c5_not_camera_only" in pan.failed_criteria


def test_image_only_mode_judges_size_and_distortion_only():
    judge = OfflineJudge(OfflineJudgeParams(), "dis", (128, 128))
    big = judge.judge(_item(sv.moving_object(size=0.25, frames=1).frames))
    assert list(big.criteria) == ["c1_object_visible", "c2_not_distorted"]
    assert big.positive, big.detail
    assert json.loads(big.raw)["area_source"] == "saliency"
    small = judge.judge(_item(sv.moving_object(size=0.04, frames=1).frames))
    assert small.failed_criteria == ["c1_object_visible"]


def test_degenerate_frames_fail_the_distortion_proxy():
    judge = OfflineJudge(OfflineJudgeParams(), "dis", (64, 64))
    flat = np.full((4, 64, 64, 3), 128, dtype=np.uint8)
    verdict = judge.judge(_item(flat))
    assert verdict.criteria["c2_not_distorted"] is False and "frame 0 is flat" in verdict.detail
    clipped = sv.static(frames=1, height=64, width=64).frames.copy()
    clipped[:, :60] = 255
    verdict = judge.judge(_item(clipped))
    assert verdict.criteria["c2_not_distorted"] is False and "clipped" in verdict.detail


def test_verdict_shape_raw_and_extras(videos):
    judge = OfflineJudge(OfflineJudgeParams(), "dis", (128, 128))
    verdict = judge.judge(_item(videos["object"].frames, "abc"))
    assert verdict.id == "abc" and verdict.judge == OFFLINE_JUDGE_NAME == "offline-v1"
    assert list(verdict.criteria) == list(CRITERIA)
    raw = json.loads(verdict.raw)
    assert raw["n_frames"] == FRAMES and len(raw["pair_consistency"]) == FRAMES - 1
    for key in ("mean_motion_px", "object_motion_px", "object_area", "consistency", "camera_motion_px"):
        assert isinstance(verdict.extras[key], float) and verdict.extras[key] == raw[key]


def test_non_finite_measurements_leave_the_item_unlabelled(videos, monkeypatch):
    monkeypatch.setattr(flow_mod, "_FACTORIES", dict(flow_mod._FACTORIES))
    monkeypatch.setattr(flow_mod, "_INSTANCES", {})
    flow_mod.register_backend("broken", lambda: lambda f: np.full((len(f) - 1, *f.shape[1:3], 2), np.nan))
    verdict = OfflineJudge(OfflineJudgeParams(), "broken", (64, 64)).judge(_item(videos["object"].frames))
    assert not verdict.labelled and verdict.reason == "measurement_error"
    assert "mean_motion_px" in verdict.detail


def test_bad_frames_are_refused():
    judge = OfflineJudge(OfflineJudgeParams(), "dis", (64, 64))
    with pytest.raises(ValueError, match="no frames"):
        judge.judge(_item([]))
    with pytest.raises(ValueError, match="uint8 frames of one shape"):
        judge.judge(_item([np.zeros((8, 8, 3), np.uint8), np.zeros((8, 6, 3), np.uint8)]))
    with pytest.raises(ValueError, match="uint8 frames of one shape"):
        judge.judge(_item([np.zeros((8, 8, 3), np.float32)] * 2))
