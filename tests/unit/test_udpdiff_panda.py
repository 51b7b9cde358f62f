"""Panda-70M CSV reader and the `udpdiff.clips` stage on a tiny source built here."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import yaml

from vidprior import synthetic_video
from vidprior.config import Params, params_from_dict
from vidprior.io.manifest import read_manifest, read_rejects
from vidprior.io.media import read_video, write_video
from vidprior.udpdiff import clips as clips_stage
from vidprior.udpdiff.panda import (
    CLIP_FILE_TEMPLATE,
    COLUMNS,
    PandaFormatError,
    clip_file_name,
    parse_timecode,
    read_panda_csv,
)

ROOT = Path(__file__).resolve().parents[2]
SPAN = "['0:00:00.000', '0:00:02.500']"


def write_csv(path: Path, rows: list[dict], columns=COLUMNS) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def row(video_id: str, spans: str, captions: str, scores: str) -> dict:
    url = f"https://www.youtube.com/watch?v={video_id}"
    return dict(videoID=video_id, url=url, timestamp=spans, caption=captions, matching_score=scores)


def touch_clips(clips_dir: Path, *names: str) -> None:
    clips_dir.mkdir(parents=True, exist_ok=True)
    for name in names:
        (clips_dir / name).write_bytes(b"")


def test_timecodes_parse_as_panda_writes_them():
    assert parse_timecode("0:00:07.474") == pytest.approx(7.474)
    assert parse_timecode("1:02:03.5") == pytest.approx(3723.5)
    assert parse_timecode("0:00:05") == 5.0
    for bad in ("7.474", "0:60:00.000", "a:00:00.000", "", None):
        with pytest.raises(ValueError, match="timecode"):
            parse_timecode(bad)


def test_clip_files_follow_the_splitting_tool():
    assert CLIP_FILE_TEMPLATE == "{video_id}.{index}.mp4"
    assert clip_file_name("abc_DEF-123", 2) == "abc_DEF-123.2.mp4"


def test_good_rows_expand_into_clips(tmp_path: Path):
    spans = "[['0:00:00.000', '0:00:05.005'], ['0:00:07.474', '0:01:12.512']]"
    csv_path = write_csv(
        tmp_path / "panda.csv",
        [
            row("vidA", spans, "['A man talks.', 'A  dog runs, \"fast\".']", "[0.45, 0.51]"),
            row("vidB", f"[{SPAN}]", "['Waves.']", "[0.3]"),
        ],
    )
    touch_clips(tmp_path / "clips", "vidA.0.mp4", "vidA.1.mp4", "vidB.0.mp4")
    read = read_panda_csv(csv_path, tmp_path / "clips")
    assert read.rejects == [] and not read.capped
    assert [c.id for c in read.clips] == ["vidA.0", "vidA.1", "vidB.0"]
    second = read.clips[1]
    assert (second.video_id, second.clip_index) == ("vidA", 1)
    assert (second.start, second.end) == pytest.approx((7.474, 72.512))
    assert second.caption == 'A dog runs, "fast".'
    assert second.matching_score == pytest.approx(0.51)
    assert second.url == "https://www.youtube.com/watch?v=vidA"
    assert second.source_path == tmp_path / "clips" / "vidA.1.mp4"


def test_malformed_cells_become_rejects_with_reasons(tmp_path: Path):
    rows = [
        row("ok", f"[{SPAN}]", "['fine']", "[0.5]"),
        row("notlist", "0:00:00.000-0:00:01.000", "['x']", "[0.5]"),
        row("uneven", f"[{SPAN}, {SPAN}]", "['x']", "[0.5, 0.5]"),
        row("empty", "[]", "[]", "[]"),
        row("../evil", f"[{SPAN}]", "['x']", "[0.5]"),
        # One row, one bad cell per clip: only that clip is rejected.
        row(
            "mixed",
            f"[['0:00:01.000', '0:00:00.500'], ['bad', '0:00:01.000'], {SPAN}, {SPAN}, {SPAN}, {SPAN}]",
            "['a', 'b', '  ', 'd', 'e', 'f']",
            "[0.5, 0.5, 0.5, 'high', 0.01, 0.5]",
        ),
        row("ok", f"[{SPAN}]", "['again']", "[0.5]"),
    ]
    csv_path = write_csv(tmp_path / "panda.csv", rows)
    with open(csv_path, "a", encoding="utf-8") as handle:
        handle.write("short,row\n")
    names = ["ok.0.mp4"] + [f"mixed.{i}.mp4" for i in range(5)]  # mixed.5 has no file
    touch_clips(tmp_path / "clips", *names)

    read = read_panda_csv(csv_path, tmp_path / "clips", min_matching_score=0.1)
    reasons = {r["id"]: r["reason"] for r in read.rejects}
    assert [c.id for c in read.clips] == ["ok.0"]
    assert reasons == {
        "notlist": "malformed_row",
        "uneven": "malformed_row",
        "empty": "malformed_row",
        "row5": "malformed_row",
        "mixed.0": "malformed_timestamp",
        "mixed.1": "malformed_timestamp",
        "mixed.2": "malformed_caption",
        "mixed.3": "malformed_matching_score",
        "mixed.4": "low_matching_score",
        "mixed.5": "missing_clip",
        "ok.0#row7": "duplicate_id",
        "short": "malformed_row",
    }
    assert read.items == len(read.clips) + len(read.rejects) == 13
    details = {r["id"]: r["detail"] for r in read.rejects}
    assert "timestamp" in details["notlist"] and "1 captions" in details["uneven"]
    assert "not after start" in details["mixed.0"] and "mixed.5.mp4" in details["mixed.5"]


def test_missing_columns_name_the_file_and_the_expected_columns(tmp_path: Path):
    csv_path = write_csv(tmp_path / "bad.csv", [{"videoID": "a", "url": "u"}], columns=("videoID", "url"))
    (tmp_path / "clips").mkdir()
    with pytest.raises(PandaFormatError) as info:
        read_panda_csv(csv_path, tmp_path / "clips")
    message = str(info.value)
    assert str(csv_path) in message
    assert "['timestamp', 'caption', 'matching_score']" in message
    assert "videoID, url, timestamp, caption, matching_score" in message
    with pytest.raises(PandaFormatError, match="clips directory not found"):
        read_panda_csv(csv_path, tmp_path / "nowhere")


def test_max_clips_caps_items_in_csv_order(tmp_path: Path):
    spans = f"[{SPAN}, {SPAN}, {SPAN}]"
    rows = [row(v, spans, "['a', 'b', 'c']", "[1, 1, 1]") for v in ("v1", "v2")]
    csv_path = write_csv(tmp_path / "panda.csv", rows)
    touch_clips(tmp_path / "clips", *(f"{v}.{i}.mp4" for v in ("v1", "v2") for i in range(3)))
    read = read_panda_csv(csv_path, tmp_path / "clips", max_clips=4)
    assert [c.id for c in read.clips] == ["v1.0", "v1.1", "v1.2", "v2.0"] and read.capped
    assert not read_panda_csv(csv_path, tmp_path / "clips", max_clips=6).capped


# --------------------------------------------------------------------------- the clips stage

FRAMES, HEIGHT, WIDTH = 9, 32, 48


def stage_params(**panda) -> Params:
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    data["udpdiff"]["panda"].update(
        {
            "frames": FRAMES,
            "height": HEIGHT,
            "width": WIDTH,
            "fps": 8,
            "min_source_height": 16,
            "min_source_width": 16,
            "min_sharpness": 0.0,
            "flow": {"backend": "dis", "analysis_height": HEIGHT, "analysis_width": WIDTH},
            "min_motion": 0.1,
            "max_motion": 20.0,
            **panda,
        }
    )
    return params_from_dict(data)


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """A Panda-70M-shaped source: one row with a pan, a still scene, a missing file and a short clip."""
    root = tmp_path_factory.mktemp("panda_source")
    clips = root / "clips"
    size = dict(frames=12, height=48, width=64)
    write_video(clips / "vid0.0.mp4", synthetic_video.pan(dx=2.0, dy=1.0, **size, seed=1).frames, fps=24)
    write_video(clips / "vid0.1.mp4", synthetic_video.static(**size, seed=2).frames, fps=24)
    short = synthetic_video.pan(dx=2.0, dy=1.0, frames=4, height=48, width=64, seed=3).frames
    write_video(clips / "vid0.3.mp4", short, fps=24)  # vid0.2 is never downloaded
    spans = f"[{SPAN}, {SPAN}, {SPAN}, {SPAN}]"
    captions = "['a pan', 'a still scene', 'gone', 'too short']"
    write_csv(root / "panda70m.csv", [row("vid0", spans, captions, "[0.5, 0.5, 0.5, 0.5]")])
    return root


def test_clips_stage_keeps_moving_clips_and_accounts_for_every_clip(source: Path, tmp_path: Path):
    out = tmp_path / "clips_out"
    metrics = clips_stage.run(stage_params(), [source], out)
    manifest, rejects = read_manifest(out), read_rejects(out)
    assert list(manifest["id"]) == ["vid0.0"]
    assert dict(zip(rejects["id"], rejects["reason"], strict=True)) == {
        "vid0.1": "too_static",
        "vid0.2": "missing_clip",
        "vid0.3": "too_few_frames",
    }
    assert set(rejects["stage"]) == {"udpdiff.clips"}
    assert len(manifest) + len(rejects) == metrics["clips_in"] == 4
    assert (
        metrics["kept"] == 1 and metrics["rejected_too_static"] == 1 and metrics["rejected_missing_clip"] == 1
    )

    kept = manifest.iloc[0]
    assert kept["clip_path"] == "clips/vid0.0.mp4" and kept["source_path"] == "clips/vid0.0.mp4"
    assert (kept["video_id"], kept["clip_index"], kept["short_caption"]) == ("vid0", 0, "a pan")
    assert (kept["source_frames"], kept["source_height"], kept["source_width"]) == (12, 48, 64)
    assert (kept["start"], kept["end"], kept["matching_score"]) == pytest.approx((0.0, 2.5, 0.5))
    # A 2 px/frame pan at 64 px wide, 12 frames resampled to 9 and shrunk to 48: about 2.0 px a pair.
    assert 1.0 < kept["flow_mean_magnitude"] < 4.0 and kept["sharpness"] > 0
    frames, fps = read_video(out / kept["clip_path"])
    assert frames.shape == (FRAMES, HEIGHT, WIDTH, 3) and fps == pytest.approx(8.0)
    assert not (out / "clips" / "vid0.1.mp4").exists()


def test_clips_stage_quality_thresholds(source: Path, tmp_path: Path):
    params = stage_params(min_sharpness=1e9, max_clips=2)
    metrics = clips_stage.run(params, [source], tmp_path / "out")
    rejects = read_rejects(tmp_path / "out")
    assert dict(zip(rejects["id"], rejects["reason"], strict=True)) == {
        "vid0.0": "blurry",
        "vid0.1": "blurry",
    }
    assert metrics["clips_in"] == 2 and metrics["capped"] == 1 and metrics["kept"] == 0

    fast = clips_stage.run(stage_params(max_motion=0.5, min_source_width=100), [source], tmp_path / "o2")
    reasons = read_rejects(tmp_path / "o2").set_index("id")["reason"]
    assert reasons["vid0.0"] == "source_too_small" and fast["kept"] == 0
    clips_stage.run(stage_params(max_motion=0.5), [source], tmp_path / "o3")
    assert read_rejects(tmp_path / "o3").set_index("id")["reason"]["vid0.0"] == "too_fast"


def test_normalise_samples_uniformly_and_resizes():
    frames = np.stack([np.full((48, 64, 3), i, np.uint8) for i in range(12)])
    out = clips_stage.normalise(frames, 4, 32, 48)
    assert out.shape == (4, 32, 48, 3)
    assert [int(f[0, 0, 0]) for f in out] == [0, 4, 7, 11]
