"""`udpdiff.dataset`: the join of clips, captions, segment and depth, its rejects, and the dense suite.

The clips come from the real `udpdiff.synthetic` + `udpdiff.clips` stages; the captions, segment
and depth outputs are written here from the synthetic truth, in the contract's layout, so these
tests do not depend on how those stages compute their labels.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from vidprior.config import load_params
from vidprior.io.manifest import (
    ManifestError,
    read_manifest,
    read_rejects,
    read_table,
    write_manifest,
    write_rejects,
)
from vidprior.io.media import read_video, write_video
from vidprior.udpdiff import clips as clips_stage
from vidprior.udpdiff import dataset
from vidprior.udpdiff import synthetic as synthetic_stage
from vidprior.udpdiff.pixelplanes import decode_segmentation, encode_depth, encode_segmentation
from vidprior.validation import ValidationFailed

ROOT = Path(__file__).resolve().parents[2]
PARAMS = load_params([ROOT / "params.yaml"])
STAGES = ("clips", "captions", "segment", "depth")
PANDA = PARAMS.udpdiff.panda
SIZE = f"{PANDA.height}x{PANDA.width}"


def palette_json(palette: dict) -> str:
    return json.dumps({str(k): [int(c) for c in v] for k, v in sorted(palette.items())})


def paint(masks: np.ndarray, palette: dict) -> np.ndarray:
    lut = np.zeros((int(masks.max()) + 1, 3), dtype=np.uint8)
    for entity, colour in palette.items():
        lut[entity] = colour
    return lut[masks]


def write_segment_item(seg_dir: Path, item: str, masks: np.ndarray, palette: dict) -> None:
    write_video(seg_dir / "seg" / f"{item}.mp4", paint(masks, palette), PANDA.fps, lossless=True)
    np.savez_compressed(seg_dir / "seg" / f"{item}.npz", ids=masks.astype(np.int32))


def write_depth_item(depth_dir: Path, item: str, depth: np.ndarray) -> None:
    # Out-of-range values cannot be encoded; the video shows them clipped, the npz keeps them.
    write_video(
        depth_dir / "depth" / f"{item}.mp4", encode_depth(np.clip(depth, 0, 1)), PANDA.fps, lossless=True
    )
    np.savez_compressed(depth_dir / "depth" / f"{item}.npz", depth=depth.astype(np.float32))


def empty_rejects() -> pd.DataFrame:
    return pd.DataFrame(columns=["id", "stage", "reason", "detail"])


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    """Upstream outputs for the 8 synthetic clips: clips (real stages), captions, segment, depth."""
    root = tmp_path_factory.mktemp("upstream")
    synthetic_stage.run(PARAMS, None, root / "source")
    clips_stage.run(PARAMS, [root / "source"], root / "clips")
    clips = read_manifest(root / "clips")
    source = PARAMS.udpdiff.synthetic
    assert (source.frames, source.height, source.width) == (PANDA.frames, PANDA.height, PANDA.width)
    assert len(clips) == source.videos * source.clips_per_video == 8
    captions, segments, depths = [], [], []
    for row in clips.itertuples():
        truth = synthetic_stage.load_truth(root / "source" / "truth" / f"{row.id}.npz")
        masks, depth = truth["masks"], truth["depth"]
        assert masks.shape == (row.frames, row.height, row.width)  # the clips stage kept the size
        captions.append(
            dict(
                id=row.id,
                short_caption=row.short_caption,
                long_caption=f"A long description of a scene: {row.short_caption}, over a textured wall.",
                caption_backend="panda",
                caption_model="panda70m",
                caption_frames=4,
            )
        )
        seed = 1000 + row.Index
        _, palette = encode_segmentation(masks, seed)
        write_segment_item(root / "segment", row.id, masks, palette)
        segments.append(
            dict(
                id=row.id,
                seg_path=f"seg/{row.id}.mp4",
                seg_ids_path=f"seg/{row.id}.npz",
                palette=palette_json(palette),
                palette_seed=seed,
                entities=len(palette) - 1,
                segment_backend="truth",
                segmenter_model="none",
                propagator_model="none",
                holes_filled_px=0,
                regions_removed=0,
                frames=row.frames,
                height=row.height,
                width=row.width,
            )
        )
        write_depth_item(root / "depth", row.id, depth)
        depths.append(
            dict(
                id=row.id,
                depth_path=f"depth/{row.id}.mp4",
                depth_values_path=f"depth/{row.id}.npz",
                depth_backend="truth",
                depth_model="none",
                temporal_window=1,
                frames=row.frames,
                height=row.height,
                width=row.width,
            )
        )
    for name, rows in (("captions", captions), ("segment", segments), ("depth", depths)):
        write_manifest(pd.DataFrame(rows), root / name)
        write_rejects(empty_rejects(), root / name)
    return root


@pytest.fixture
def upstream(good: Path, tmp_path: Path) -> Path:
    """A private copy of the good upstream outputs, for a test to break."""
    copy = tmp_path / "upstream"
    for name in (*STAGES, "source"):
        shutil.copytree(good / name, copy / name)
    return copy


def run_dataset(upstream: Path, out: Path) -> dict[str, float]:
    return dataset.run(PARAMS, [upstream / name for name in STAGES], out)


def edit_manifest(stage_dir: Path, change) -> None:
    write_manifest(change(read_manifest(stage_dir)).reset_index(drop=True), stage_dir)


def move_to_rejects(stage_dir: Path, item: str, stage: str, reason: str, detail: str = "") -> None:
    edit_manifest(stage_dir, lambda m: m[m["id"] != item])
    row = pd.DataFrame([{"id": item, "stage": stage, "reason": reason, "detail": detail}])
    write_rejects(pd.concat([read_rejects(stage_dir), row], ignore_index=True), stage_dir)


def ids_of(upstream: Path) -> list[str]:
    return sorted(read_manifest(upstream / "clips")["id"])


def multi_entity_id(upstream: Path) -> str:
    segment = read_manifest(upstream / "segment")
    return str(segment.loc[segment["entities"] >= 2, "id"].iloc[0])


# --- the join ------------------------------------------------------------------------------------


def test_good_join_is_self_contained_and_carries_provenance(upstream: Path, tmp_path: Path):
    out = tmp_path / "dataset"
    metrics = run_dataset(upstream, out)
    ids = ids_of(upstream)
    segment = read_manifest(upstream / "segment").set_index("id")
    assert metrics["clips_in"] == metrics["kept"] == len(ids) == 8
    assert metrics["rejected"] == 0
    assert metrics["entities_mean"] == pytest.approx(segment["entities"].mean())

    manifest = read_manifest(out)
    assert sorted(manifest["id"]) == ids
    assert list(manifest.columns[: len(dataset.MANIFEST_COLUMNS)]) == dataset.MANIFEST_COLUMNS
    # Provenance from every stage; names taken by an earlier input get the stage's prefix.
    for column in ("sha256", "source_path", "flow_mean_magnitude", "caption_backend", "caption_model"):
        assert column in manifest.columns
    for column in ("palette_seed", "segment_backend", "segment_frames", "depth_model", "depth_frames"):
        assert column in manifest.columns
    assert "clips_short_caption" in manifest.columns and "clip_path" in manifest.columns
    assert read_rejects(out).empty

    captions = read_manifest(upstream / "captions").set_index("id")
    clips = read_manifest(upstream / "clips").set_index("id")
    for row in manifest.itertuples():
        assert row.clip_path == f"clips/{row.id}.mp4" and row.seg_ids_path == f"seg/{row.id}.npz"
        assert row.long_caption == captions.at[row.id, "long_caption"]
        assert row.palette == segment.at[row.id, "palette"] and row.entities == segment.at[row.id, "entities"]
        assert (row.frames, row.height, row.width, row.fps) == (
            PANDA.frames,
            PANDA.height,
            PANDA.width,
            PANDA.fps,
        )
        assert row.sha256 == clips.at[row.id, "sha256"]
        # Hard links to the inputs (same filesystem here), so nothing is stored twice.
        pairs = [
            (row.clip_path, upstream / "clips" / clips.at[row.id, "clip_path"]),
            (row.seg_path, upstream / "segment" / segment.at[row.id, "seg_path"]),
            (row.depth_values_path, upstream / "depth" / f"depth/{row.id}.npz"),
        ]
        for mine, theirs in pairs:
            assert (out / mine).samefile(theirs)
        truth = synthetic_stage.load_truth(upstream / "source" / "truth" / f"{row.id}.npz")
        palette = {int(k): tuple(v) for k, v in json.loads(row.palette).items()}
        seg, _ = read_video(out / row.seg_path)
        np.testing.assert_array_equal(decode_segmentation(seg, palette), truth["masks"])
        with np.load(out / row.depth_values_path) as values:
            np.testing.assert_array_equal(values["depth"], truth["depth"])

    report = json.loads((out / "report" / "dense.json").read_text())
    assert report["success"] and report["failed"] == []
    assert metrics["expectations_checked"] == len(report["results"]) > 40
    assert (out / "report" / "dense.html").exists()
    assert report["info"]["accounting"] == {"kept": 8}
    items = read_table(out / "report" / dataset.ITEMS_TABLE)
    assert len(items) == 8 and (items["depth_video_error"] <= 0.5 / 255 + 1e-6).all()
    assert (items["depth_min"] >= 0).all() and (items["depth_max"] <= 1).all()
    assert not (out / ".partial").exists()


def test_upstream_rejects_are_carried_with_their_stage(upstream: Path, tmp_path: Path):
    a, b, c = ids_of(upstream)[:3]
    move_to_rejects(upstream / "segment", a, "udpdiff.segment", "no_entities", "nothing left after cleaning")
    move_to_rejects(upstream / "captions", b, "udpdiff.captions", "caption_failed", "endpoint said 500")
    move_to_rejects(upstream / "captions", c, "udpdiff.captions", "empty_caption")
    move_to_rejects(upstream / "depth", c, "", "flat_depth")  # a blank stage is the input's stage
    # A clip the clips stage itself rejected.
    clips_rejects = read_rejects(upstream / "clips")
    row = {"id": "synth00099.0", "stage": "udpdiff.clips", "reason": "blurry", "detail": "sharpness 1 < 2"}
    write_rejects(pd.concat([clips_rejects, pd.DataFrame([row])], ignore_index=True), upstream / "clips")

    out = tmp_path / "dataset"
    metrics = run_dataset(upstream, out)
    assert metrics["clips_in"] == 9 and metrics["kept"] == 5 and metrics["rejected"] == 4
    assert metrics["rejected_udpdiff.segment.no_entities"] == 1
    assert metrics["rejected_udpdiff.captions.caption_failed"] == 1
    assert metrics["rejected_udpdiff.clips.blurry"] == 1
    rejects = read_rejects(out).set_index("id")
    assert set(rejects["stage"]) == {dataset.STAGE}
    assert rejects.at[a, "reason"] == "udpdiff.segment:no_entities"
    assert rejects.at[a, "detail"] == "nothing left after cleaning"
    assert rejects.at[b, "reason"] == "udpdiff.captions:caption_failed"
    # The first stage to reject decides the reason; the detail names the others.
    assert rejects.at[c, "reason"] == "udpdiff.captions:empty_caption"
    assert "udpdiff.depth:flat_depth" in rejects.at[c, "detail"]
    assert rejects.at["synth00099.0", "reason"] == "udpdiff.clips:blurry"
    kept = set(read_manifest(out)["id"])
    assert kept.isdisjoint({a, b, c}) and len(kept) == 5
    assert not (out / "clips" / f"{a}.mp4").exists() and not (out / "seg" / f"{b}.npz").exists()
    report = json.loads((out / "report" / "dense.json").read_text())
    assert report["success"] and report["info"]["accounting"] == {"kept": 5, "rejected": 4}


def test_an_id_a_later_stage_lost_is_rejected_as_missing(upstream: Path, tmp_path: Path):
    lost = ids_of(upstream)[4]
    edit_manifest(upstream / "depth", lambda m: m[m["id"] != lost])  # and no reject row for it
    metrics = run_dataset(upstream, tmp_path / "dataset")
    assert metrics["rejected_missing_in_udpdiff.depth"] == 1 and metrics["kept"] == 7
    reject = read_rejects(tmp_path / "dataset").set_index("id").loc[lost]
    assert reject["reason"] == "missing_in_udpdiff.depth"
    assert str(upstream / "depth") in reject["detail"]


def test_mismatched_shapes_and_colours_are_rejected(upstream: Path, tmp_path: Path):
    short, recoloured, wrong_ids = ids_of(upstream)[:3]
    truth = synthetic_stage.load_truth(upstream / "source" / "truth" / f"{short}.npz")
    write_depth_item(upstream / "depth", short, truth["depth"][:-1])  # one frame short
    seg_dir = upstream / "segment"
    video, _ = read_video(seg_dir / "seg" / f"{recoloured}.mp4")
    video[0, 0, 0] = (1, 2, 3)  # a colour the palette does not have
    write_video(seg_dir / "seg" / f"{recoloured}.mp4", video, PANDA.fps, lossless=True)
    with np.load(seg_dir / "seg" / f"{wrong_ids}.npz") as data:
        ids = data["ids"].copy()
    ids[0, 0, 0] = 77  # not an entity of the palette
    np.savez_compressed(seg_dir / "seg" / f"{wrong_ids}.npz", ids=ids)

    out = tmp_path / "dataset"
    metrics = run_dataset(upstream, out)
    assert metrics["kept"] == 5 and metrics["rejected_shape_mismatch"] == 1
    rejects = read_rejects(out).set_index("id")
    assert rejects.at[short, "reason"] == "shape_mismatch"
    assert f"depth_video {PANDA.frames - 1}x{SIZE}" in rejects.at[short, "detail"]
    assert f"clip_video {PANDA.frames}x{SIZE}" in rejects.at[short, "detail"]
    assert rejects.at[recoloured, "reason"] == "palette_mismatch"
    assert "[1, 2, 3]" in rejects.at[recoloured, "detail"]
    assert rejects.at[wrong_ids, "reason"] == "seg_ids_mismatch"
    assert "1 pixel(s) with an id not in the palette" in rejects.at[wrong_ids, "detail"]
    for item in (short, recoloured, wrong_ids):  # a reject's media are not part of the dataset
        assert [p for d in ("clips", "seg", "depth") for p in (out / d).glob(f"{item}.*")] == []


def test_a_rerun_removes_media_of_items_no_longer_kept(upstream: Path, tmp_path: Path):
    out = tmp_path / "dataset"
    run_dataset(upstream, out)
    gone = ids_of(upstream)[0]
    assert (out / "seg" / f"{gone}.npz").exists()
    move_to_rejects(upstream / "segment", gone, "udpdiff.segment", "segmentation_failed")
    before = read_manifest(out).set_index("id").drop(index=gone)
    metrics = run_dataset(upstream, out)
    assert metrics["kept"] == 7
    assert [p for d in ("clips", "seg", "depth") for p in (out / d).glob(f"{gone}.*")] == []
    pd.testing.assert_frame_equal(read_manifest(out).set_index("id"), before)


# --- the suite -----------------------------------------------------------------------------------


def test_suite_fails_on_bad_palette_caption_and_depth_after_saving_the_report(upstream: Path, tmp_path: Path):
    ids = ids_of(upstream)
    twin = multi_entity_id(upstream)
    blank, far = [i for i in ids if i != twin][:2]
    # Entity 2 painted in entity 1's colour: the video and ids agree with the palette, which repeats.
    segment = read_manifest(upstream / "segment").set_index("id")
    palette = {int(k): tuple(v) for k, v in json.loads(segment.at[twin, "palette"]).items()}
    palette[2] = palette[1]
    truth = synthetic_stage.load_truth(upstream / "source" / "truth" / f"{twin}.npz")
    write_segment_item(upstream / "segment", twin, truth["masks"], palette)
    segment.at[twin, "palette"] = palette_json(palette)
    write_manifest(segment.reset_index(), upstream / "segment")
    edit_manifest(
        upstream / "captions",
        lambda m: m.assign(long_caption=m["long_caption"].where(m["id"] != blank, "  ")),
    )
    truth = synthetic_stage.load_truth(upstream / "source" / "truth" / f"{far}.npz")
    write_depth_item(upstream / "depth", far, truth["depth"] * 1.5)  # beyond 1 = far

    out = tmp_path / "dataset"
    with pytest.raises(ValidationFailed) as failed:
        run_dataset(upstream, out)
    message = str(failed.value)
    assert str(out / "report" / "dense.json") in message
    assert "expect_column_values_to_match_regex[long_caption]" in message and blank in message
    assert "expect_column_values_to_be_between[depth_max]" in message and far in message
    assert "no two palette entries share a colour" in message and twin in message
    assert "the depth video decodes to the depth values" in message

    report = json.loads((out / "report" / "dense.json").read_text())
    assert not report["success"]
    assert "dense_items: expect_column_values_to_be_between[depth_max]" in report["failed"]
    assert "dense_items: expect_column_values_to_match_regex[long_caption]" in report["failed"]
    assert len(report["failed"]) == 4  # nothing else is wrong
    assert (out / "report" / "dense.html").read_text().count("FAIL") >= 4
    # The outputs are on disk for whoever debugs the failure.
    assert len(read_manifest(out)) == 8


def test_suite_fails_on_missing_files_disagreeing_manifests_and_stray_ids(upstream: Path, tmp_path: Path):
    gone, declared = ids_of(upstream)[:2]
    (upstream / "segment" / "seg" / f"{gone}.npz").unlink()
    edit_manifest(upstream / "depth", lambda m: m.assign(frames=m["frames"].where(m["id"] != declared, 5)))
    stray = pd.DataFrame([{"id": "elsewhere.0", "stage": "udpdiff.captions", "reason": "empty_caption"}])
    write_rejects(stray, upstream / "captions")

    out = tmp_path / "dataset"
    with pytest.raises(ValidationFailed) as failed:
        run_dataset(upstream, out)
    report = json.loads((out / "report" / "dense.json").read_text())
    assert sorted(report["failed"]) == sorted(
        [
            "dense_items: expect_column_values_to_be_in_set[seg_ids_exists]",
            "dense_items: expect_column_pair_values_to_be_equal",  # seg_ids_frames: none measured
            "dense_items: expect_column_pair_values_to_be_equal",  # seg_ids_height
            "dense_items: expect_column_pair_values_to_be_equal",  # seg_ids_width
            "dense_items: expect_column_pair_values_to_be_equal",  # depth_declared_frames = 5
            "dense_accounting: expect_column_values_to_be_in_set[status]",
        ]
    )
    message = str(failed.value)
    assert "seg_ids_frames equals the manifest's frames" in message and gone in message
    assert "depth_declared_frames equals the manifest's frames" in message and declared in message
    assert "elsewhere.0" in message and "not_in_clips" in message
    assert report["info"]["stray_ids"] == {"udpdiff.captions": ["elsewhere.0"]}


# --- bad input -----------------------------------------------------------------------------------


def test_bad_inputs_name_the_file_and_what_was_expected(upstream: Path, tmp_path: Path):
    edit_manifest(upstream / "segment", lambda m: m.drop(columns=["palette"]))
    with pytest.raises(ManifestError, match=r"segment/manifest.parquet: missing column\(s\) \['palette'\]"):
        run_dataset(upstream, tmp_path / "a")

    shutil.rmtree(upstream / "segment")
    with pytest.raises(ValueError, match="segment input is not a directory"):
        run_dataset(upstream, tmp_path / "b")


def test_an_id_both_kept_and_rejected_upstream_is_an_error(upstream: Path, tmp_path: Path):
    item = ids_of(upstream)[0]
    write_rejects(
        pd.DataFrame([{"id": item, "stage": "udpdiff.depth", "reason": "flat_depth"}]), upstream / "depth"
    )
    with pytest.raises(ManifestError, match=rf"depth: id\(s\) \['{item}'\].*both in manifest.parquet and in"):
        run_dataset(upstream, tmp_path / "dataset")


def test_a_malformed_palette_or_value_file_is_a_reject_that_says_what_was_expected(
    upstream: Path, tmp_path: Path
):
    bad_palette, bad_npz = ids_of(upstream)[:2]
    edit_manifest(
        upstream / "segment",
        lambda m: m.assign(
            palette=m["palette"].where(m["id"] != bad_palette, '{"0": [0, 0, 0], "1": "red"}')
        ),
    )
    np.savez_compressed(
        upstream / "depth" / "depth" / f"{bad_npz}.npz",
        values=np.zeros((PANDA.frames, PANDA.height, PANDA.width)),
    )
    metrics = run_dataset(upstream, tmp_path / "dataset")
    assert metrics["kept"] == 6
    rejects = read_rejects(tmp_path / "dataset").set_index("id")
    assert rejects.at[bad_palette, "reason"] == "malformed_palette"
    assert "entry '1': 'red'" in rejects.at[bad_palette, "detail"]
    assert rejects.at[bad_npz, "reason"] == "unreadable_media"
    assert "no array 'depth' (has ['values'])" in rejects.at[bad_npz, "detail"]


def test_parse_palette():
    assert dataset.parse_palette('{"0": [0, 0, 0], "3": [1, 2, 255]}') == {0: (0, 0, 0), 3: (1, 2, 255)}
    for bad in ("[1, 2]", '{"a": [0, 0, 0]}', '{"1": [0, 0, 256]}', '{"1": [0, 0]}', "{", None, "{}"):
        with pytest.raises(ValueError, match="palette"):
            dataset.parse_palette(bad)
