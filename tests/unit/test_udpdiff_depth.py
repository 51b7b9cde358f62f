"""The `udpdiff.depth` stage: depth order on the synthetic source (parallax backend), the temporal
aligner, disparity -> depth, tiny Depth Anything V2 end to end, rejects, accounting and resume."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from transformers import DepthAnythingForDepthEstimation
from udpdiff_inputs import clips_dir

from vidprior.config import Params, load_params
from vidprior.io.manifest import read_manifest, read_rejects, write_manifest
from vidprior.io.media import read_video
from vidprior.models.depth_anything import DepthAnythingParts, build_depth_anything
from vidprior.models.spec import ModelSpec, TinySpec
from vidprior.udpdiff import clips as clips_stage
from vidprior.udpdiff import depth, depth_parallax
from vidprior.udpdiff import synthetic as synthetic_stage
from vidprior.udpdiff.pixelplanes import decode_depth
from vidprior.udpdiff.synthetic import load_truth, render_clip

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROOT = Path(__file__).resolve().parents[2]
HALF_BIN = 0.5 / 255


def tiny_params(seed: int = 0, **depth_cfg) -> Params:
    params = load_params([ROOT / "params.yaml"])
    udpdiff = params.udpdiff.model_copy(update={"depth": params.udpdiff.depth.model_copy(update=depth_cfg)})
    return params.model_copy(update={"seed": seed, "udpdiff": udpdiff})


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory) -> dict[int, tuple[Path, Path]]:
    """seed -> (synthetic source dir, clips dir) of the tiny profile's own stages (H.264 clips)."""
    out = {}
    for seed in (0, 1):
        root = tmp_path_factory.mktemp(f"seed{seed}")
        params = tiny_params(seed)
        synthetic_stage.run(params, None, root / "source")
        clips_stage.run(params, [root / "source"], root / "clips")
        out[seed] = (root / "source", root / "clips")
    return out


@pytest.fixture(scope="module")
def parallax_runs(pipeline, tmp_path_factory) -> dict[int, tuple[Path, dict]]:
    runs = {}
    for seed, (_, clips) in pipeline.items():
        out = tmp_path_factory.mktemp(f"depth{seed}")
        runs[seed] = (out, depth.run(tiny_params(seed), [clips], out))
    return runs


def mean_depth_per_id(values: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ids = np.unique(masks)
    return ids, np.array([values[masks == i].mean() for i in ids])


# --------------------------------------------------------------------------- parallax on the synthetic source


def test_parallax_recovers_the_depth_order_of_every_synthetic_clip(pipeline, parallax_runs):
    checked = 0
    for seed, (source, _) in pipeline.items():
        out, metrics = parallax_runs[seed]
        manifest = read_manifest(out)
        assert metrics["kept"] == metrics["clips_in"] == len(manifest) == 8
        for row in manifest.itertuples():
            truth = load_truth(source / "truth" / f"{row.id}.npz")
            estimate = depth.load_depth(out / row.depth_values_path)
            assert estimate.shape == truth["depth"].shape
            ids, means = mean_depth_per_id(estimate, truth["masks"])
            true_depth = truth["entity_depth"][ids]
            assert list(np.argsort(means)) == list(np.argsort(true_depth)), (seed, row.id, means, true_depth)
            checked += 1
    assert checked == 16


def test_a_static_camera_has_no_parallax_and_is_flat():
    frames = np.repeat(render_clip(tiny_params().udpdiff.synthetic, 3).frames[:1], 9, axis=0)
    cfg = tiny_params().udpdiff.depth
    disparity = depth_parallax.parallax_disparity(frames, cfg.flow, cfg.parallax)
    assert disparity.shape == frames.shape[:3] and not disparity.any()
    with pytest.raises(depth.FlatDepth, match="percentile"):
        depth.to_depth(disparity, 1, 99, 1e-3)


def test_dominant_motion_is_the_median_direction_of_the_moving_pixels():
    flows = np.zeros((2, 8, 8, 2), np.float32)
    flows[..., 0], flows[..., 1] = 3.0, -4.0  # |v| = 5 everywhere ...
    flows[:, :2] = 0.0  # ... except a static quarter, which must not pull the direction
    direction, top = depth_parallax.dominant_motion(flows)
    np.testing.assert_allclose(direction, [0.6, -0.8], atol=1e-6)
    assert top == pytest.approx(5.0)
    assert depth_parallax.dominant_motion(np.zeros((1, 4, 4, 2)))[1] == 0.0


# --------------------------------------------------------------------------- temporal consistency


def jittered(disparity: np.ndarray, seed: int, shift: bool = True) -> np.ndarray:
    rng = np.random.default_rng(seed)
    scale = rng.uniform(0.5, 2.0, len(disparity))[:, None, None]
    offset = rng.uniform(-0.5, 0.5, len(disparity))[:, None, None] if shift else 0.0
    return (scale * disparity + offset).astype(np.float32)


def clip_flicker(disparity: np.ndarray) -> float:
    return depth.flicker(depth.to_depth(disparity, 1, 99, 1e-3).depth)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_alignment_removes_per_frame_scale_and_shift_jitter(seed):
    scene = render_clip(tiny_params().udpdiff.synthetic, seed)
    truth = (1.0 / (0.5 + scene.depth)).astype(np.float32)  # the scene's inverse distance
    noisy = jittered(truth, seed)
    before, after = clip_flicker(noisy), clip_flicker(depth.align_temporal(noisy, 3, "affine"))
    # Measured: the jittered estimate flickers 0.17-0.33, the truth 0.022-0.034, aligned 0.023-0.031.
    assert before > 4 * clip_flicker(truth)
    assert after < 0.25 * before and after < 1.3 * clip_flicker(truth)
    # Scale-only estimators fit the scale alone.
    scaled = jittered(truth, seed, shift=False)
    assert clip_flicker(depth.align_temporal(scaled, 3, "scale")) < 0.25 * clip_flicker(scaled)
    # Window 1 is off.
    np.testing.assert_array_equal(depth.align_temporal(noisy, 1), noisy)


@pytest.mark.parametrize("reduce", ["median", "mean"])
@pytest.mark.parametrize("invariance", ["affine", "scale"])
def test_alignment_leaves_a_static_scene_unchanged_and_undoes_its_jitter(reduce, invariance):
    scene = render_clip(tiny_params().udpdiff.synthetic, 4)
    frame = (1.0 / (0.5 + scene.depth[:1])).astype(np.float32)
    static = np.repeat(frame, 7, axis=0)
    np.testing.assert_allclose(depth.align_temporal(static, 5, invariance, reduce), static, atol=1e-6)
    noisy = jittered(static, 5, shift=invariance == "affine")
    aligned = depth.align_temporal(noisy, 3, invariance, reduce)
    # Every frame is brought onto frame 0's scale (and shift): the jitter is gone exactly.
    np.testing.assert_allclose(aligned, np.repeat(noisy[:1], 7, axis=0), atol=1e-4)


def test_alignment_rejects_bad_arguments():
    with pytest.raises(ValueError, match=r"\(T, H, W\)"):
        depth.align_temporal(np.zeros((4, 4)), 3)
    with pytest.raises(ValueError, match="window"):
        depth.align_temporal(np.zeros((2, 4, 4)), 0)
    with pytest.raises(ValueError, match="reduce"):
        depth.align_temporal(np.zeros((2, 4, 4)), 2, reduce="max")


# --------------------------------------------------------------------------- disparity -> depth


def test_depth_is_one_minus_the_normalised_disparity_per_clip():
    disparity = np.linspace(2.0, 6.0, 2 * 3 * 5, dtype=np.float32).reshape(2, 3, 5)
    clip = depth.to_depth(disparity, 0, 100, 1e-3)
    np.testing.assert_allclose(clip.depth, 1.0 - (disparity - 2.0) / 4.0, atol=1e-6)
    assert (clip.low, clip.high) == pytest.approx((2.0, 6.0)) and clip.relative_range == pytest.approx(4 / 6)
    # Normalised over the clip, not per frame: frame 0 holds the near end only.
    assert clip.depth[0].min() > 0.4 and clip.depth[1].max() < 0.6
    # Robust ends: one outlier is clipped instead of squashing the rest.
    spiky = disparity.copy()
    spiky[0, 0, 0] = 1e6
    robust = depth.to_depth(spiky, 5, 95, 1e-3).depth
    assert robust[0, 0, 0] == 0.0 and robust.min() == 0.0 and robust.max() == 1.0
    assert np.ptp(robust[1]) > 0.3


def test_flat_depth_is_relative_to_the_disparity_scale():
    rng = np.random.default_rng(0)
    base = np.full((3, 8, 8), 1e4, np.float32)
    with pytest.raises(depth.FlatDepth):
        depth.to_depth(base + rng.uniform(0, 1, base.shape).astype(np.float32), 1, 99, 1e-3)
    small = rng.uniform(0, 1e-3, base.shape).astype(np.float32)  # tiny values, but a real range
    assert depth.to_depth(small, 1, 99, 1e-3).depth.max() == 1.0


# --------------------------------------------------------------------------- Depth Anything V2 (tiny)


@pytest.fixture(scope="module")
def tiny_depth_anything() -> DepthAnythingParts:
    return build_depth_anything(ModelSpec(tiny=TinySpec(seed=0)))


def test_tiny_depth_anything_is_the_real_model_and_resizes_back_to_the_frame(tiny_depth_anything, tmp_path):
    parts = tiny_depth_anything
    assert isinstance(parts.model, DepthAnythingForDepthEstimation)
    assert parts.model.config.backbone_config.model_type == "dinov2"
    assert parts.model.config.depth_estimation_type == "relative"
    frames = render_clip(tiny_params().udpdiff.synthetic, 0).frames[:5, :30, :40]
    disparity = parts.disparity(frames, batch_frames=2)
    assert disparity.shape == (5, 30, 40) and disparity.dtype == np.float32
    assert np.isfinite(disparity).all() and np.ptp(disparity) > 0
    np.testing.assert_allclose(parts.disparity(frames, batch_frames=5), disparity, rtol=1e-4, atol=1e-7)

    # The pretrained path: the same classes through from_pretrained (load_pretrained), same outputs.
    parts.model.save_pretrained(tmp_path / "da")
    parts.processor.save_pretrained(tmp_path / "da")
    loaded = build_depth_anything(ModelSpec(pretrained=str(tmp_path / "da")))
    assert loaded.model_id.startswith(str(tmp_path / "da"))
    np.testing.assert_allclose(loaded.disparity(frames), disparity, rtol=1e-4, atol=1e-7)
    with pytest.raises(ValueError, match="uint8"):
        parts.disparity(frames.astype(np.float32))


def test_depth_anything_stage_end_to_end(pipeline, tmp_path):
    _, clips = pipeline[0]
    out = tmp_path / "out"
    metrics = depth.run(tiny_params(backend="depth_anything"), [clips], out)
    manifest = read_manifest(out)
    clips_manifest = read_manifest(clips)
    assert metrics["kept"] == len(manifest) == len(clips_manifest) and metrics["rejected"] == 0
    assert set(manifest["depth_model"]) == {"tiny-random(seed=0)"}
    assert set(manifest["depth_backend"]) == {"depth_anything"} and set(manifest["invariance"]) == {"affine"}
    for row in manifest.merge(clips_manifest[["id", "frames", "height", "width"]], on="id").itertuples():
        values = depth.load_depth(out / row.depth_values_path)
        assert values.dtype == np.float32 and values.shape == (row.frames_y, row.height_y, row.width_y)
        assert values.min() >= 0.0 and values.max() <= 1.0 and np.ptp(values) > 0.5
        rgb, fps = read_video(out / row.depth_path)
        assert np.abs(decode_depth(rgb) - values).max() <= HALF_BIN + 1e-6
        assert fps == pytest.approx(row.fps)
    assert 0 < metrics["temporal_flicker"] < 0.5 and 0 < metrics["median_depth_range"] <= 1


# --------------------------------------------------------------------------- rejects, accounting, resume


def test_rejects_name_the_reason_and_every_clip_is_accounted_for(tmp_path):
    synthetic = tiny_params().udpdiff.synthetic
    moving = render_clip(synthetic, 7).frames
    root = clips_dir(
        tmp_path / "clips",
        {
            "good.0": moving,
            "broken.0": b"not a video",
            "missing.0": None,
            "static.0": np.repeat(moving[:1], len(moving), axis=0),
        },
    )
    out = tmp_path / "out"
    metrics = depth.run(tiny_params(), [root], out)
    manifest, rejects = read_manifest(out), read_rejects(out)
    assert list(manifest["id"]) == ["good.0"]
    assert dict(zip(rejects["id"], rejects["reason"], strict=True)) == {
        "broken.0": "unreadable_video",
        "missing.0": "unreadable_video",
        "static.0": "flat_depth",
    }
    assert set(rejects["stage"]) == {depth.STAGE} and rejects["detail"].str.len().min() > 0
    assert metrics["clips_in"] == 4 and metrics["kept"] + metrics["rejected"] == 4
    assert (metrics["rejected_unreadable_video"], metrics["rejected_flat_depth"]) == (2, 1)
    assert not (out / "depth" / "static.0.npz").exists() and (out / "depth" / "good.0.npz").exists()
    assert not (out / ".partial").exists()


class NanEstimator:
    invariance = "affine"

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        out = np.ones(frames.shape[:3], np.float32)
        out[0, 0, 0] = np.nan
        return out


def test_non_finite_estimates_are_rejected(tmp_path, monkeypatch):
    entry = depth.EstimatorEntry(build=lambda params: NanEstimator(), model_id=lambda params: "nan-test")
    monkeypatch.setitem(depth._REGISTRY, "parallax", entry)
    root = clips_dir(tmp_path / "clips", {"a.0": render_clip(tiny_params().udpdiff.synthetic, 1).frames})
    metrics = depth.run(tiny_params(), [root], tmp_path / "out")
    rejects = read_rejects(tmp_path / "out")
    assert metrics["kept"] == 0 and list(rejects["reason"]) == ["non_finite_depth"]
    assert "1 of" in rejects["detail"][0]


def test_the_registry_names_what_it_knows():
    assert {"depth_anything", "parallax"} <= set(depth.available_estimators())
    with pytest.raises(ValueError, match="depthcrafter.*expected one of"):
        depth.estimator_entry("depthcrafter")
    with pytest.raises(ValueError, match="already registered"):
        depth.register_estimator("parallax", depth.estimator_entry("parallax"))


def test_bad_input_names_the_file_and_the_column(tmp_path):
    write_manifest(pd.DataFrame({"id": ["a.0"], "path": ["clips/a.0.mp4"]}), tmp_path / "clips")
    with pytest.raises(ValueError, match="clip_path"):
        depth.run(tiny_params(), [tmp_path / "clips"], tmp_path / "out")
    write_manifest(pd.DataFrame({"id": ["a.0"], "clip_path": [" "]}), tmp_path / "clips2")
    with pytest.raises(ValueError, match=r"manifest.parquet.*'clip_path'.*a\.0"):
        depth.run(tiny_params(), [tmp_path / "clips2"], tmp_path / "out")
    with pytest.raises(ValueError, match="udpdiff.clips"):
        depth.run(tiny_params(), [], tmp_path / "out")


def test_a_killed_run_resumes_and_writes_the_same_outputs(pipeline, parallax_runs, tmp_path, monkeypatch):
    _, clips = pipeline[0]
    full, _ = parallax_runs[0]
    monkeypatch.setattr(depth, "BATCH", 3)
    real, calls = depth.process_clip, []

    def dies_on_the_seventh_clip(*args, **kwargs):
        calls.append(args[0])
        if len(calls) == 7:
            raise KeyboardInterrupt  # like a kill: the stage stops mid-run
        return real(*args, **kwargs)

    out = tmp_path / "out"
    monkeypatch.setattr(depth, "process_clip", dies_on_the_seventh_clip)
    with pytest.raises(KeyboardInterrupt):
        depth.run(tiny_params(), [clips], out)
    assert not (out / "manifest.parquet").exists() and (out / ".partial").exists()
    monkeypatch.setattr(depth, "process_clip", real)
    metrics = depth.run(tiny_params(), [clips], out)
    assert metrics["resumed_batches"] == 2 and metrics["kept"] == 8
    pd.testing.assert_frame_equal(read_manifest(out), read_manifest(full))
    for row in read_manifest(out).itertuples():
        np.testing.assert_array_equal(
            depth.load_depth(out / row.depth_values_path), depth.load_depth(full / row.depth_values_path)
        )
        assert (out / row.depth_path).read_bytes() == (full / row.depth_path).read_bytes()
