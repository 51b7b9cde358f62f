"""The synthetic Panda-Dense source: exact truth, parallax motion, a CSV the Panda-70M reader accepts."""

from __future__ import annotations

import filecmp
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from vidprior.config import load_params
from vidprior.io.manifest import read_manifest, read_rejects
from vidprior.io.media import read_video
from vidprior.udpdiff import synthetic
from vidprior.udpdiff.panda import read_panda_csv

ROOT = Path(__file__).resolve().parents[2]
PARAMS = load_params([ROOT / "params.yaml"])
CFG = PARAMS.udpdiff.synthetic
SEEDS = range(24)


@pytest.fixture(scope="module")
def clips() -> list[synthetic.DenseClip]:
    return [synthetic.render_clip(CFG, seed) for seed in SEEDS]


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> tuple[Path, dict[str, float]]:
    out = tmp_path_factory.mktemp("source")
    return out, synthetic.run(PARAMS, None, out)


def test_render_is_deterministic_per_seed():
    a, b, other = (synthetic.render_clip(CFG, s) for s in (7, 7, 8))
    for field in ("frames", "masks", "depth"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert (a.entities, a.caption, a.velocity) == (b.entities, b.caption, b.velocity)
    assert not np.array_equal(a.frames, other.frames)


def test_masks_and_depth_agree_with_the_entities(clips):
    for clip in clips:
        n = len(clip.entities)
        frames, h, w = CFG.frames, CFG.height, CFG.width
        assert clip.frames.shape == (frames, h, w, 3) and clip.frames.dtype == np.uint8
        assert clip.masks.shape == clip.depth.shape == (frames, h, w) and clip.masks.dtype == np.int32
        assert 1 <= n <= CFG.max_entities and set(np.unique(clip.masks)) <= set(range(n + 1))
        np.testing.assert_array_equal(clip.depth, clip.entity_depth[clip.masks])
        assert clip.entity_depth[0] == np.float32(clip.background_depth)
        depths = sorted(e.depth for e in clip.entities)
        assert synthetic.ENTITY_DEPTH[0] <= depths[0] and depths[-1] <= synthetic.ENTITY_DEPTH[1]
        assert synthetic.BACKGROUND_DEPTH[0] <= clip.background_depth <= synthetic.BACKGROUND_DEPTH[1]
        assert np.all(np.diff(depths) >= synthetic.MIN_DEPTH_GAP - 1e-9)
        assert len({e.colour for e in clip.entities}) == n


def test_every_entity_is_visible_in_frame_0_and_stays_in_view(clips):
    for clip in clips:
        for i in range(1, len(clip.entities) + 1):
            area = (clip.masks == i).sum(axis=(1, 2))
            assert area[0] > 0 and area.min() > 0
            # MIN_VISIBLE of the shape stays visible: the visible area never drops much below the most seen.
            assert area.min() >= synthetic.MIN_VISIBLE * area.max() * 0.9


def test_frames_show_each_entity_in_its_colour(clips):
    names = list(synthetic.COLOURS)
    palette = np.array([synthetic.COLOURS[c] for c in names], dtype=np.float64)
    for clip in clips:
        for i, entity in enumerate(clip.entities, start=1):
            inside = cv2.erode((clip.masks[0] == i).astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
            mean = clip.frames[0][inside].mean(axis=0)
            assert names[int(np.argmin(((palette - mean) ** 2).sum(axis=1)))] == entity.colour


def unoccluded_speed(clip: synthetic.DenseClip, index: int) -> float | None:
    """Image speed (px/frame along the pan) of entity `index` (1-based), from its mask's centroid,
    over the frames where no nearer entity touches it (so occlusion does not move the centroid)."""
    entity = clip.entities[index - 1]
    nearer = np.isin(clip.masks, [j + 1 for j, e in enumerate(clip.entities) if e.depth < entity.depth])
    mask = clip.masks == index
    grown = np.stack([cv2.dilate(m.astype(np.uint8), np.ones((3, 3), np.uint8)) for m in mask]).astype(bool)
    free = [t for t in range(len(mask)) if not (grown[t] & nearer[t]).any()]
    if len(free) < 2 or free[-1] - free[0] < len(mask) // 2:
        return None
    direction = np.asarray(clip.velocity) / np.linalg.norm(clip.velocity)
    centroids = np.array([np.argwhere(mask[t])[:, ::-1].mean(axis=0) for t in free])  # (x, y)
    return float(np.polyfit(free, centroids @ direction, 1)[0])


def test_nearer_layers_move_faster(clips):
    measured_pairs = 0
    for clip in clips:
        background = float(np.linalg.norm(clip.velocity))
        speeds = []
        for i, entity in enumerate(clip.entities, start=1):
            speed = unoccluded_speed(clip, i)
            if speed is None:
                continue
            # Parallax: distance 0.5 + d, so image speed scales with (0.5 + d_bg) / (0.5 + d).
            expected = background * (0.5 + clip.background_depth) / (0.5 + entity.depth)
            assert speed == pytest.approx(expected, rel=0.1)
            assert speed > background  # every shape is nearer than the background
            speeds.append((entity.depth, speed))
        speeds.sort()
        assert all(a[1] > b[1] for a, b in zip(speeds, speeds[1:], strict=False))
        measured_pairs += max(len(speeds) - 1, 0)
    assert measured_pairs >= 6  # the ordering was really compared, not skipped


def test_caption_names_entities_nearest_first():
    near = synthetic.Entity("orange", "circle", 0.2, 5.0, (10.0, 10.0))
    far = synthetic.Entity("blue", "square", 0.6, 5.0, (20.0, 10.0))
    assert (
        synthetic._caption([far, near], np.array([-1.0, 0.1]))
        == "an orange circle and a blue square move left"
    )
    assert synthetic._caption([far], np.array([0.1, 1.0])) == "a blue square moves down"


def test_the_csv_is_a_panda70m_csv_with_every_clip(source):
    out, _ = source
    manifest = read_manifest(out).set_index("id")
    read = read_panda_csv(out / synthetic.CSV_NAME, out / synthetic.CLIPS_DIR)
    assert read.rejects == [] and not read.capped
    assert sorted(c.id for c in read.clips) == sorted(manifest.index)
    duration = CFG.frames / CFG.fps
    for clip in read.clips:
        row = manifest.loc[clip.id]
        assert clip.caption == row["caption"] and clip.source_path == out / row["clip_path"]
        assert (clip.video_id, clip.clip_index) == (row["video_id"], row["clip_index"])
        assert clip.end - clip.start == pytest.approx(duration, abs=1e-3)
        assert 0.38 <= clip.matching_score <= 0.52
    second = next(c for c in read.clips if c.id == "synth00000.1")
    assert second.start == pytest.approx(duration + synthetic.GAP_SECONDS, abs=1e-3)
    csv = pd.read_csv(out / synthetic.CSV_NAME)
    assert list(csv.columns) == synthetic.PANDA_COLUMNS and len(csv) == CFG.videos


def test_run_writes_truth_and_clips_and_reports_metrics(source):
    out, metrics = source
    manifest = read_manifest(out)
    assert (
        metrics["videos"] == CFG.videos
        and metrics["clips"] == len(manifest) == CFG.videos * CFG.clips_per_video
    )
    assert metrics["entities_total"] == manifest["entities"].sum()
    assert metrics["entities_mean"] == pytest.approx(manifest["entities"].mean())
    assert set(metrics) == {"videos", "clips", "entities_total", "entities_mean", "stage_seconds"}
    assert read_rejects(out).empty
    for row in manifest.itertuples():
        truth = synthetic.load_truth(out / row.truth_path)
        np.testing.assert_array_equal(truth["depth"], truth["entity_depth"][truth["masks"]])
        assert len(truth["entity_depth"]) == row.entities + 1
        frames, fps = read_video(out / row.clip_path)
        assert frames.shape == (CFG.frames, CFG.height, CFG.width, 3) and fps == CFG.fps
        # The clip is the rendered scene: H.264 (yuv420p) is lossy, so close to it, far from another.
        rendered = synthetic.render_clip(CFG, int(row.seed))
        other = synthetic.render_clip(CFG, int(row.seed) + 1)
        error = np.abs(frames.astype(int) - rendered.frames).mean()
        assert error < 8 and error < 0.5 * np.abs(frames.astype(int) - other.frames).mean()
        np.testing.assert_array_equal(truth["masks"], rendered.masks)


def test_run_is_reproducible_and_checks_its_inputs(source, tmp_path: Path):
    out, _ = source
    again = tmp_path / "again"
    synthetic.run(PARAMS, None, again)
    pd.testing.assert_frame_equal(read_manifest(out), read_manifest(again))
    names = [synthetic.CSV_NAME, "clips/synth00000.0.mp4", "clips/synth00003.1.mp4"]
    assert all(filecmp.cmp(out / n, again / n, shallow=False) for n in names)
    for name in ("synth00000.0", "synth00003.1"):
        a, b = (synthetic.load_truth(d / "truth" / f"{name}.npz") for d in (out, again))
        assert all(np.array_equal(a[k], b[k]) for k in ("masks", "depth", "entity_depth"))
    with pytest.raises(ValueError, match="takes no inputs"):
        synthetic.run(PARAMS, [out], tmp_path / "x")
    odd_cfg = CFG.model_copy(update={"height": 33})
    odd = PARAMS.model_copy(update={"udpdiff": PARAMS.udpdiff.model_copy(update={"synthetic": odd_cfg})})
    with pytest.raises(ValueError, match="udpdiff.synthetic.height/width: expected even"):
        synthetic.run(odd, None, tmp_path / "odd")
    assert not (tmp_path / "odd").exists()
