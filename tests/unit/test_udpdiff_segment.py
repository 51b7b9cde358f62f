"""The `udpdiff.segment` stage: cleaning, the classical backend against exact synthetic masks, the
Pixelplanes outputs, rejects, resume, and the models backend on tiny Mask2Former + SAM2."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.optimize import linear_sum_assignment
from udpdiff_inputs import clips_dir

from vidprior.config import Params, SyntheticDenseParams, load_params
from vidprior.io.manifest import read_manifest, read_rejects, write_manifest
from vidprior.io.media import read_video
from vidprior.models.spec import ModelSpec, TinySpec
from vidprior.seeding import item_seed
from vidprior.udpdiff import clips as clips_stage
from vidprior.udpdiff import segment, segment_classical
from vidprior.udpdiff import synthetic as synthetic_stage
from vidprior.udpdiff.pixelplanes import decode_segmentation, palette_from_json
from vidprior.udpdiff.synthetic import COLOURS, load_truth, render_clip

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROOT = Path(__file__).resolve().parents[2]
# Worst frame of a clip, per entity, after one-to-one matching, on exact (lossless) synthetic frames:
# measured min 0.846 at 32x48 (40 scenes), 0.854 at 48x72 (30), 0.918 at 64x96 (40).
MIN_IOU = 0.88
SIZE = dict(frames=9, height=64, width=96)


def stage_params(**segment_cfg) -> Params:
    params = load_params([ROOT / "params.yaml"])
    cfg = params.udpdiff.segment.model_copy(update=segment_cfg)
    return params.model_copy(update={"udpdiff": params.udpdiff.model_copy(update={"segment": cfg})})


def classical_params(height: int, width: int, **extra) -> Params:
    flow = {"backend": "dis", "analysis_height": height, "analysis_width": width}
    base = stage_params().udpdiff.segment
    return stage_params(backend="classical", flow=base.flow.model_copy(update=flow), **extra)


def matched_ious(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """(T, entities) IoU of each truth entity with its one-to-one matched prediction, per frame."""
    inter = np.zeros((truth.max() + 1, pred.max() + 1))
    np.add.at(inter, (truth.ravel(), pred.ravel()), 1)
    iou = inter / (inter.sum(1)[:, None] + inter.sum(0)[None, :] - inter)
    rows, cols = linear_sum_assignment(-iou[1:, 1:])
    out = []
    for t_id, p_id in zip(rows + 1, cols + 1, strict=True):
        a, b = truth == t_id, pred == p_id
        out.append((a & b).sum((1, 2)) / np.maximum((a | b).sum((1, 2)), 1))
    return np.stack(out, axis=1)


# --------------------------------------------------------------------------- cleaning


def test_cleaning_fills_small_holes_removes_specks_and_keeps_big_holes():
    ids = np.zeros((1, 20, 24), dtype=np.int32)
    ids[0, 1:9, 1:9] = 3  # entity with a 2 px hole ...
    ids[0, 4, 4:6] = 0
    ids[0, 1:9, 12:22] = 7  # ... and one with a 16 px hole
    ids[0, 3:7, 15:19] = 0
    ids[0, 12:19, 2:10] = 5  # a pocket between two entities is no hole
    ids[0, 12:19, 10:16] = 9
    ids[0, 15, 9:11] = 0
    ids[0, 12:15, 20:24] = 4  # a pocket on the frame border is no hole either
    ids[0, 13, 23] = 0
    ids[0, 17, 20] = 8  # a 1 px speck
    pixels = 20 * 24
    cleaned = segment.clean(ids, max_hole_area=4 / pixels, min_region_area=3 / pixels)

    expected = ids.copy()
    expected[0, 4, 4:6] = 3
    expected[0, 17, 20] = 0
    # 3 -> 1, 4 -> 2, 5 -> 3, 7 -> 4, 9 -> 5 (8 is gone)
    expected = np.array([0, 0, 0, 1, 2, 3, 0, 4, 0, 5])[expected]
    np.testing.assert_array_equal(cleaned.ids, expected)
    assert cleaned.ids.dtype == np.int32
    assert (cleaned.holes_filled_px, cleaned.regions_removed) == (2, 1)


def test_a_speck_inside_an_entity_is_removed_then_filled():
    ids = np.zeros((2, 12, 12), dtype=np.int32)
    ids[:, 2:10, 2:10] = 1
    ids[0, 5, 5] = 2  # a misread pixel inside entity 1
    cleaned = segment.clean(ids, max_hole_area=0.01, min_region_area=0.01)
    assert (cleaned.ids[0] == cleaned.ids[1]).all() and set(np.unique(cleaned.ids)) == {0, 1}
    assert (cleaned.holes_filled_px, cleaned.regions_removed) == (1, 1)


def test_relabelling_keeps_one_id_per_entity_over_time():
    ids = np.zeros((3, 4, 4), dtype=np.int32)
    ids[0, 0, :2], ids[1, 0, :2], ids[2, 0, :2] = 9, 9, 9
    ids[0, 3, 3], ids[2, 3, 3] = 40, 40  # absent from frame 1
    out = segment.relabel(ids)
    assert set(np.unique(out)) == {0, 1, 2}
    assert (out[:, 0, :2] == 1).all() and out[0, 3, 3] == out[2, 3, 3] == 2 and out[1, 3, 3] == 0


def test_cleaning_rejects_non_integer_ids():
    with pytest.raises(ValueError, match="integer array"):
        segment.clean(np.zeros((1, 4, 4), dtype=np.float32), 0.0, 0.0)


# --------------------------------------------------------------------------- classical pieces


def test_colour_modes_are_the_shapes_colours():
    clip = render_clip(SyntheticDenseParams(**SIZE, max_entities=3), seed=11)
    background, colours = segment_classical.colour_modes(clip.frames[0], segment.SegmentParams().classical)
    assert np.hypot(*background) < 15  # the dull background is near grey
    truth = segment_classical.chroma(np.array([COLOURS[e.colour] for e in clip.entities], dtype=np.uint8))
    assert len(colours) == len(clip.entities)
    # Each mode is near exactly one true colour (the shapes' texture moves the mean a little).
    distance = np.hypot(*(colours[:, None, :] - truth[None, :, :]).transpose(2, 0, 1))
    assert sorted(distance.argmin(1).tolist()) == list(range(len(truth)))
    assert distance.min(1).max() < 20


def test_labels_warp_along_the_flow_and_snap_to_colours():
    labels = np.zeros((8, 10), dtype=np.int32)
    labels[2:4, 2:4] = 1
    flow_back = np.zeros((8, 10, 2), dtype=np.float32)
    flow_back[..., 0] = -3.0  # everything moved 3 px right
    warped = segment_classical.warp_labels(labels, flow_back)
    np.testing.assert_array_equal(warped, np.roll(labels, 3, axis=1))

    entity_colour = np.array([0, 1, 2])  # entity 1 has colour 1, entity 2 colour 2
    colour_index = np.zeros((8, 10), dtype=np.int32)
    colour_index[2:4, 4:8] = 1  # colour 1 reaches one pixel past the warped entity ...
    colour_index[7, 9] = 1  # ... and appears far away: something new
    colour_index[2, 6] = 2  # a pixel of another colour, where no entity of that colour is
    snapped = segment_classical.snap_to_colours(warped, colour_index, entity_colour, radius=2.0)
    expected = np.zeros_like(labels)
    expected[2:4, 4:8] = 1
    expected[2, 6] = 0
    np.testing.assert_array_equal(snapped, expected)


# --------------------------------------------------------------------------- the stage, classical


@pytest.fixture(scope="module")
def scenes() -> dict[str, np.ndarray]:
    """Truth masks of four synthetic scenes, and their exact frames in a clips directory."""
    cfg = SyntheticDenseParams(**SIZE, max_entities=3)
    return {f"synth{seed:05d}.0": render_clip(cfg, seed) for seed in (1, 3, 11, 28)}


@pytest.fixture(scope="module")
def classical_run(scenes, tmp_path_factory) -> tuple[Path, Path, dict]:
    root = clips_dir(tmp_path_factory.mktemp("clips"), {i: c.frames for i, c in scenes.items()})
    out = tmp_path_factory.mktemp("segment")
    metrics = segment.run(classical_params(SIZE["height"], SIZE["width"]), [root], out)
    return root, out, metrics


def test_classical_backend_recovers_the_synthetic_masks(scenes, classical_run):
    _, out, metrics = classical_run
    manifest = read_manifest(out).set_index("id")
    assert metrics["kept"] == len(scenes) and metrics["rejected"] == 0
    for clip_id, clip in scenes.items():
        ids = segment.load_ids(out / manifest.loc[clip_id, "seg_ids_path"])
        assert ids.shape == clip.masks.shape and ids.dtype == np.int32
        assert ids.max() == manifest.loc[clip_id, "entities"] == len(clip.entities), clip_id
        ious = matched_ious(ids, clip.masks)
        assert ious.min() >= MIN_IOU, (clip_id, ious.min(axis=0))


def test_seg_video_decodes_back_to_the_ids_exactly(classical_run):
    _, out, _ = classical_run
    params = classical_params(SIZE["height"], SIZE["width"])
    for row in read_manifest(out).itertuples():
        palette = palette_from_json(row.palette)
        ids = segment.load_ids(out / row.seg_ids_path)
        rgb, fps = read_video(out / row.seg_path)
        np.testing.assert_array_equal(decode_segmentation(rgb, palette), ids)
        assert set(palette) == set(range(row.entities + 1)) and palette[0] == (0, 0, 0)
        assert row.palette_seed == item_seed(params.seed, segment.STAGE, row.id)
        assert (row.frames, row.height, row.width, fps) == (*ids.shape, 8.0)
        assert row.segment_backend == "classical" and row.propagator_model == "classical-flow-dis"
        assert row.seg_path == f"seg/{row.id}.mp4" and row.clip_path == f"clips/{row.id}.mp4"


def test_rejects_account_for_every_clip(tmp_path: Path):
    scene = render_clip(SyntheticDenseParams(**SIZE, max_entities=2), seed=3)
    grey = np.full((4, 32, 48, 3), 120, dtype=np.uint8)  # no colour at all
    speck = grey.copy()
    speck[:, 10:15, 10:15] = (220, 30, 30)  # one colour, 25 px: below min_region_area
    root = clips_dir(
        tmp_path / "clips",
        {"good.0": scene.frames, "grey.0": grey, "speck.0": speck, "junk.0": b"not a video", "gone.0": None},
    )
    out = tmp_path / "out"
    metrics = segment.run(classical_params(32, 48, min_region_area=0.02), [root], out)
    manifest, rejects = read_manifest(out), read_rejects(out)
    reasons = dict(zip(rejects["id"], rejects["reason"], strict=True))
    assert list(manifest["id"]) == ["good.0"]
    assert reasons == {
        "grey.0": "no_entities",
        "speck.0": "no_entities",
        "junk.0": "unreadable_video",
        "gone.0": "unreadable_video",
    }
    details = dict(zip(rejects["id"], rejects["detail"], strict=True))
    assert "frame 0" in details["grey.0"] and "min_region_area=0.02" in details["speck.0"]
    assert "not found" in details["gone.0"]
    assert set(rejects["stage"]) == {segment.STAGE}
    assert metrics["clips_in"] == len(manifest) + len(rejects) == 5
    assert metrics["rejected_no_entities"] == 2 and metrics["rejected_unreadable_video"] == 2
    assert not (out / "seg" / "grey.0.mp4").exists() and not (out / ".partial").exists()


def test_entities_that_cleaning_removes_everywhere_are_no_entities(tmp_path: Path, monkeypatch):
    def speckled(frames, cfg):  # a backend whose only entity is 1 px in every frame
        ids = np.zeros(frames.shape[:3], dtype=np.int32)
        ids[:, 5, 5] = 1
        return ids, 1

    monkeypatch.setattr(segment, "segment_classical", speckled)
    root = clips_dir(tmp_path / "clips", {"a.0": np.full((2, 16, 16, 3), 99, dtype=np.uint8)})
    segment.run(classical_params(16, 16), [root], tmp_path / "out")
    rejects = read_rejects(tmp_path / "out")
    assert list(rejects["reason"]) == ["no_entities"]
    assert "all 1 frame-0 entities fell below min_region_area" in rejects["detail"][0]
    assert "(2 region(s) removed)" in rejects["detail"][0]


def test_bad_input_manifest_names_the_file_and_the_field(tmp_path: Path):
    write_manifest(pd.DataFrame({"id": ["a", "b"], "clip_path": ["clips/a.mp4", None]}), tmp_path)
    with pytest.raises(ValueError, match=r"manifest\.parquet: column 'clip_path'.*\['b'\]"):
        segment.run(stage_params(), [tmp_path], tmp_path / "out")
    with pytest.raises(ValueError, match="udpdiff.clips"):
        segment.run(stage_params(), [], tmp_path / "out")


def test_a_killed_run_resumes_and_writes_the_same_outputs(scenes, classical_run, tmp_path, monkeypatch):
    root, full, _ = classical_run
    params = classical_params(SIZE["height"], SIZE["width"])
    monkeypatch.setattr(segment, "BATCH", 1)
    real, calls = segment.process_clip, []

    def dies_on_the_third_clip(*args, **kwargs):
        calls.append(args[0])
        if len(calls) == 3:
            raise KeyboardInterrupt  # like a kill: the stage stops mid-run
        return real(*args, **kwargs)

    out = tmp_path / "out"
    monkeypatch.setattr(segment, "process_clip", dies_on_the_third_clip)
    with pytest.raises(KeyboardInterrupt):
        segment.run(params, [root], out)
    assert not (out / "manifest.parquet").exists() and (out / ".partial").exists()
    monkeypatch.setattr(segment, "process_clip", real)
    metrics = segment.run(params, [root], out)
    assert metrics["resumed_batches"] == 2 and metrics["kept"] == len(scenes)
    pd.testing.assert_frame_equal(read_manifest(out), read_manifest(full))
    for row in read_manifest(out).itertuples():
        assert (out / row.seg_path).read_bytes() == (full / row.seg_path).read_bytes()
        np.testing.assert_array_equal(
            segment.load_ids(out / row.seg_ids_path), segment.load_ids(full / row.seg_ids_path)
        )


def test_the_tiny_pipeline_segments_the_synthetic_source(tmp_path: Path):
    """synthetic -> clips -> segment with params.yaml. Its clips are H.264 (4:2:0) at 32x48, chroma
    at 16x24, so edges are off by about a pixel: measured 7 of 8 entity counts right, mean matched
    IoU 0.78..0.87 on those (worst frame 0.66..0.84)."""
    params = load_params([ROOT / "params.yaml"])
    source, clips_out, seg_out = tmp_path / "source", tmp_path / "clips", tmp_path / "segment"
    synthetic_stage.run(params, None, source)
    clips_stage.run(params, [source], clips_out)
    segment.run(params, [clips_out], seg_out)
    clips = read_manifest(clips_out)
    manifest, rejects = read_manifest(seg_out), read_rejects(seg_out)
    assert len(manifest) + len(rejects) == len(clips) and set(rejects["reason"]) <= {"no_entities"}
    right = []
    for row in manifest.itertuples():
        truth = load_truth(source / "truth" / f"{row.id}.npz")["masks"]
        ids = segment.load_ids(seg_out / row.seg_ids_path)
        assert ids.shape == truth.shape
        if ids.max() == truth.max():
            right.append(matched_ious(ids, truth).mean())
    assert len(right) >= len(clips) - 1 and min(right) >= 0.75, right


# --------------------------------------------------------------------------- models backend


def test_first_frame_segments_are_the_largest_scored_ones():
    segments = np.array([[1, 1, 1, 2], [3, 3, 0, 2], [3, 3, 0, 0]], dtype=np.int32)
    scores = {1: 0.9, 2: 0.7, 3: 0.6, 4: 0.8}  # 4 scored but has no pixels
    assert segment.first_frame_segments(segments, scores, max_entities=8) == [3, 1, 2]
    assert segment.first_frame_segments(segments, scores, max_entities=2) == [3, 1]
    assert segment.first_frame_segments(segments, scores, max_entities=8, min_area=3) == [3, 1]
    assert segment.first_frame_segments(segments, {}, max_entities=2) == []


def test_sam2_mask_prompts_come_back_on_frame_0_under_their_ids():
    from vidprior.models.entity_segmentation import build_sam2_video

    sam = build_sam2_video(ModelSpec(tiny=TinySpec(seed=0)))
    frames = np.random.default_rng(0).integers(0, 256, (3, 32, 48, 3), dtype=np.uint8)
    masks = np.zeros((2, 32, 48), dtype=bool)
    masks[0, 4:20, 4:24], masks[1, 12:30, 26:46] = True, True
    out = list(sam.propagate(frames, masks, [7, 3]))
    assert [i for i, _ in out] == [0, 1, 2] and all(tuple(x.shape) == (2, 32, 48) for _, x in out)
    first = (out[0][1] > 0).numpy()
    for k in range(2):  # the prompt is used as the frame-0 output (at SAM2's 4x coarser mask size)
        iou = (first[k] & masks[k]).sum() / (first[k] | masks[k]).sum()
        assert iou > 0.95 and not (first[k] & masks[1 - k]).any()
    with pytest.raises(ValueError, match="one .* mask per object id"):
        next(sam.propagate(frames, masks[:1], [7, 3]))


def test_models_backend_runs_end_to_end_on_tiny_models(scenes, tmp_path: Path):
    clip_ids = list(scenes)[:2]
    root = clips_dir(tmp_path / "clips", {i: scenes[i].frames[:, :32, :48] for i in clip_ids})
    params = stage_params(backend="models", min_region_area=0.001)
    metrics = segment.run(params, [root], tmp_path / "out")
    manifest, rejects = read_manifest(tmp_path / "out"), read_rejects(tmp_path / "out")
    assert len(manifest) + len(rejects) == metrics["clips_in"] == 2
    assert len(manifest) == 2  # the tiny segmenter is initialised to give confident segments
    for row in manifest.itertuples():
        ids = segment.load_ids(tmp_path / "out" / row.seg_ids_path)
        rgb, _ = read_video(tmp_path / "out" / row.seg_path)
        assert ids.shape == (SIZE["frames"], 32, 48) and ids.max() == row.entities >= 1
        np.testing.assert_array_equal(decode_segmentation(rgb, palette_from_json(row.palette)), ids)
        assert 1 <= row.first_frame_entities <= params.udpdiff.segment.max_entities
        assert row.segmenter_model == row.propagator_model == "tiny-random(seed=0)"
        assert row.segment_backend == "models"


def tiny_models() -> segment.Models:
    from vidprior.models.entity_segmentation import build_entity_segmenter, build_sam2_video

    spec = ModelSpec(tiny=TinySpec(seed=0))
    return segment.Models(build_entity_segmenter(spec), build_sam2_video(spec))


@pytest.mark.parametrize("broken", ["segmenter", "propagator"])
def test_non_finite_model_outputs_are_rejected_as_failed(broken, scenes, tmp_path, monkeypatch):
    models = tiny_models()
    # NaN weights, as a half-precision overflow would give: the panoptic class head, or SAM2's mask
    # decoder (frame 0 is the prompt itself, so frame 1 is the first it decodes).
    module = (
        models.segmenter.model.class_predictor
        if broken == "segmenter"
        else models.propagator.model.mask_decoder
    )
    with torch.no_grad():
        for weight in module.parameters():
            weight.fill_(float("nan"))
    monkeypatch.setattr(segment, "load_models", lambda params: models)
    clip_id = next(iter(scenes))
    root = clips_dir(tmp_path / "clips", {clip_id: scenes[clip_id].frames[:, :32, :48]})
    metrics = segment.run(stage_params(backend="models"), [root], tmp_path / "out")
    rejects = read_rejects(tmp_path / "out")
    assert metrics["kept"] == 0 and list(rejects["reason"]) == ["segmentation_failed"]
    where = "panoptic logits" if broken == "segmenter" else "mask logits on frame 1"
    assert f"non-finite {where}" in rejects["detail"][0]


def test_no_segment_above_the_score_threshold_is_no_entities(scenes, tmp_path, monkeypatch):
    monkeypatch.setattr(segment, "load_models", lambda params: tiny_models())
    clip_id = next(iter(scenes))
    root = clips_dir(tmp_path / "clips", {clip_id: scenes[clip_id].frames[:, :32, :48]})
    segment.run(stage_params(backend="models", score_threshold=1.0), [root], tmp_path / "out")
    rejects = read_rejects(tmp_path / "out")
    assert list(rejects["reason"]) == ["no_entities"] and "models backend" in rejects["detail"][0]
