"""flow -> judge -> labels -> validate -> review on synthetic videos whose motion is known.

The videos stage output is built by hand from `vidprior.synthetic_video` scenes written as H.264,
plus a corrupt and a truncated file, so every verdict has a known right answer.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pytest
import yaml

from vidprior import synthetic_video
from vidprior.config import Params, params_from_dict
from vidprior.flow import FlowStats
from vidprior.io.manifest import read_manifest, read_rejects, write_manifest, write_rejects
from vidprior.io.media import file_sha256, write_image, write_video
from vidprior.stages import execute
from vidprior.unic import flow_stats, judge, labels, review_stage, validate
from vidprior.validation.runner import ValidationFailed

if TYPE_CHECKING:
    from conftest import ChatServer

ROOT = Path(__file__).resolve().parents[2]
SIZE = 128
SCENES = {
    "static": lambda: synthetic_video.static(frames=10, height=SIZE, width=SIZE),
    "pan": lambda: synthetic_video.pan(dx=2.0, dy=1.0, frames=10, height=SIZE, width=SIZE),
    "zoom": lambda: synthetic_video.zoom(frames=10, height=SIZE, width=SIZE),
    "object": lambda: synthetic_video.moving_object(
        dx=2.5, dy=0.0, size=0.2, frames=10, height=SIZE, width=SIZE
    ),
    "flicker": lambda: synthetic_video.flicker(frames=10, height=SIZE, width=SIZE),
}
BROKEN = {"corrupt": "unreadable_video", "truncated": "unreadable_video"}
KEY_ENV, KEY = "VIDPRIOR_TEST_JUDGE_KEY", "sk-test-DO-NOT-LEAK-4d7f2a"


def make_params(**judge_update) -> Params:
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    data["unic"]["flow"] = {"backend": "dis", "analysis_height": SIZE, "analysis_width": SIZE}
    data["unic"]["flow_rule"] = {"overall_factor": 1.0, "axis_factor": 5.0, "min_mean_magnitude": 0.25}
    # Judge every measured video, so each scene's verdict can be checked, not only the flow survivors.
    data["unic"]["judge"] = {"backend": "offline", "only_flow_passed": False, **judge_update}
    data["unic"]["review"] = {"sample_size": 5}
    return params_from_dict(data)


@pytest.fixture(scope="module")
def upstream(tmp_path_factory) -> dict[str, Path]:
    """An images and a videos stage output: one image + mp4 per scene, and two broken mp4s."""
    root = tmp_path_factory.mktemp("upstream")
    images_dir, videos_dir = root / "images", root / "videos"
    image_rows, video_rows = [], []
    for name, make in SCENES.items():
        video = make()
        image_rows.append(
            {
                "id": name,
                "prompt_id": f"p-{name}",
                "prompt": f"a <{name}> scene & more",
                "seed": 1,
                "path": f"images/{name}.png",
            }
        )
        write_image(images_dir / f"images/{name}.png", video.frames[0])
        write_video(videos_dir / f"videos/{name}.mp4", video.frames, fps=7)
        video_rows.append({"id": name, "prompt": f"a <{name}> scene & more", "path": f"videos/{name}.mp4"})
    good = (videos_dir / "videos/pan.mp4").read_bytes()
    (videos_dir / "videos/corrupt.mp4").write_bytes(b"\x00not an mp4" * 50)
    (videos_dir / "videos/truncated.mp4").write_bytes(good[: len(good) // 3])
    for name in BROKEN:
        image_rows.append(
            {
                "id": name,
                "prompt_id": f"p-{name}",
                "prompt": "broken",
                "seed": 1,
                "path": f"images/{name}.png",
            }
        )
        write_image(images_dir / f"images/{name}.png", np.zeros((SIZE, SIZE, 3), np.uint8))
        video_rows.append({"id": name, "prompt": "broken", "path": f"videos/{name}.mp4"})
    videos = pd.DataFrame(video_rows)
    videos["sha256"] = [file_sha256(videos_dir / p) for p in videos["path"]]
    write_manifest(pd.DataFrame(image_rows), images_dir)
    write_rejects(pd.DataFrame(), images_dir)
    write_manifest(videos, videos_dir)
    write_rejects(pd.DataFrame(), videos_dir)
    return {"images": images_dir, "videos": videos_dir}


@pytest.fixture(scope="module")
def chain(upstream, tmp_path_factory) -> dict[str, Path]:
    """flow, judge (offline) and labels run once for the module."""
    out = tmp_path_factory.mktemp("chain")
    params = make_params()
    dirs = {**upstream, "flow": out / "flow", "judge": out / "judge", "labels": out / "labels"}
    flow_stats.run(params, [dirs["videos"]], dirs["flow"])
    judge.run(params, [dirs["videos"], dirs["flow"]], dirs["judge"])
    labels.run(params, [dirs["images"], dirs["videos"], dirs["flow"], dirs["judge"]], dirs["labels"])
    return dirs


def by_id(df: pd.DataFrame) -> dict[str, dict]:
    return {row["id"]: row for row in df.to_dict("records")}


# --------------------------------------------------------------------------- flow


def test_flow_statistics_follow_the_known_motion(chain):
    stats = by_id(read_manifest(chain["flow"]))
    assert set(stats) == set(SCENES)
    # Tolerance after H.264 (crf 18): 5% for a pure pan of (2, 1) px/frame.
    assert stats["pan"]["mean_u"] == pytest.approx(2.0, rel=0.05)
    assert stats["pan"]["mean_v"] == pytest.approx(1.0, rel=0.05)
    assert stats["pan"]["mean_mag"] == pytest.approx(np.hypot(2.0, 1.0), rel=0.05)
    assert stats["pan"]["var_mag"] < 0.01  # the same motion in every pair
    assert stats["static"]["mean_mag"] < 0.05
    assert stats["pan"]["n_pairs"] == 9
    assert set(read_manifest(chain["flow"]).columns) >= set(flow_stats.STAT_COLUMNS) | {
        "flow_pass",
        "flow_clause",
    }


def test_flow_rule_verdicts_and_clauses(chain):
    stats = by_id(read_manifest(chain["flow"]))
    assert not stats["static"]["flow_pass"] and stats["static"]["flow_clause"].startswith("min_motion")
    for name in ("pan", "zoom", "object"):
        assert stats[name]["flow_pass"], (name, stats[name]["flow_clause"])
        assert stats[name]["flow_clause"] == ""


def test_unreadable_videos_are_rejected_with_the_reason(chain):
    rejects = read_rejects(chain["flow"]).set_index("id")
    assert dict(rejects["reason"]) == BROKEN
    assert "truncated.mp4" in rejects.at["truncated", "detail"]
    assert (chain["flow"] / "report" / "flow_statistics.png").stat().st_size > 1000


def test_non_finite_statistic_is_a_reject_not_a_crash(upstream, tmp_path, monkeypatch):
    import vidprior.flow as flow_module

    real_read, real_stats = flow_stats.read_video, flow_module.video_flow_statistics
    last_read: list[Path] = []

    def reading(path):
        last_read.append(Path(path))
        return real_read(path)

    def nan_for_zoom(frames, backend, size):
        stats = real_stats(frames, backend, size)
        if last_read[-1].stem != "zoom":
            return stats
        return FlowStats(**{**stats.as_dict(), "var_mag": float("nan")})

    monkeypatch.setattr(flow_stats, "read_video", reading)
    monkeypatch.setattr(flow_module, "video_flow_statistics", nan_for_zoom)
    metrics = flow_stats.run(make_params(), [upstream["videos"]], tmp_path / "flow")
    rejects = read_rejects(tmp_path / "flow").set_index("id")
    assert rejects.at["zoom", "reason"] == "non_finite_statistic"
    assert "var_mag=nan" in rejects.at["zoom", "detail"]
    assert metrics["videos_measured"] + metrics["videos_rejected"] == len(SCENES) + len(BROKEN)


# --------------------------------------------------------------------------- judge and labels


def test_offline_judge_verdicts_on_known_motion(chain):
    verdicts = by_id(read_manifest(chain["judge"]))
    assert verdicts["object"]["positive"], verdicts["object"]["failed_criteria"]
    assert verdicts["pan"]["c5_not_camera_only"] is False  # camera-only motion
    assert verdicts["zoom"]["c5_not_camera_only"] is False
    assert verdicts["static"]["c4_motion"] is False
    assert verdicts["flicker"]["c3_consistent"] is False
    assert {v["judge"] for v in verdicts.values()} == {"offline-v1"}
    raw = json.loads(verdicts["pan"]["raw_answer"])
    assert raw["camera_motion_px"] > 1.0


def test_labels_join_flow_rule_and_judge_and_account_for_every_image(chain):
    table = by_id(read_manifest(chain["labels"]))
    rejects = read_rejects(chain["labels"]).set_index("id")
    assert set(table) | set(rejects.index) == set(SCENES) | set(BROKEN)
    assert set(table).isdisjoint(rejects.index)

    assert table["static"]["label"] == 0 and table["static"]["decided_by"] == "flow_rule"
    assert table["static"]["reasons"].startswith("min_motion")
    assert table["object"]["label"] == 1 and table["object"]["decided_by"] == "judge"
    assert table["pan"]["label"] == 0 and "c5_not_camera_only" in table["pan"]["reasons"]
    assert table["zoom"]["label"] == 0 and "c5_not_camera_only" in table["zoom"]["reasons"]
    assert rejects.at["corrupt", "reason"] == "unic.flow:unreadable_video"
    assert table["object"]["image_path"] == "images/object.png"
    assert table["object"]["video_path"] == "videos/object.mp4"


def test_judge_skips_flow_negatives_by_default(upstream, chain, tmp_path):
    params = make_params(only_flow_passed=True)
    metrics = judge.run(params, [upstream["videos"], chain["flow"]], tmp_path / "judge")
    judged = set(read_manifest(tmp_path / "judge")["id"])
    assert "static" not in judged and metrics["skipped_flow_negative"] >= 1


def test_image_only_mode_labels_images_alone(upstream, tmp_path):
    params = make_params(image_only=True)
    judge.run(params, [upstream["images"]], tmp_path / "judge")
    verdicts = read_manifest(tmp_path / "judge")
    assert verdicts["c4_motion"].isna().all() and verdicts["c1_object_visible"].notna().all()
    labels.run(params, [upstream["images"], tmp_path / "judge"], tmp_path / "labels")
    table = read_manifest(tmp_path / "labels")
    assert len(table) + len(read_rejects(tmp_path / "labels")) == len(SCENES) + len(BROKEN)
    assert (table["decided_by"] == "judge").all()
    with pytest.raises(ValueError, match="image_only"):
        judge.run(params, [upstream["videos"], upstream["videos"]], tmp_path / "bad")


# --------------------------------------------------------------------------- validation and review


def test_validation_passes_on_the_chain(chain, tmp_path):
    metrics = validate.run(
        make_params(), [chain[k] for k in ("images", "videos", "flow", "labels")], tmp_path
    )
    assert metrics["suites_passed"] == 2
    assert (tmp_path / "report" / "flow_statistics.json").exists()
    assert json.loads((tmp_path / "report" / "labels.json").read_text())["success"] is True
    assert metrics["labels_positives"] >= 1


def test_validation_fails_the_stage_and_keeps_both_reports(chain, tmp_path):
    broken = tmp_path / "labels"
    table = read_manifest(chain["labels"])
    table.loc[0, "label"] = 2
    write_manifest(table.iloc[:-1], broken)  # and one image is now neither labelled nor rejected
    write_rejects(read_rejects(chain["labels"]), broken)
    out = tmp_path / "validation"
    with pytest.raises(ValidationFailed, match="labels") as failed:
        validate.run(make_params(), [chain["images"], chain["videos"], chain["flow"], broken], out)
    assert str(out / "report" / "labels.json") in str(failed.value)
    report = json.loads((out / "report" / "labels.json").read_text())
    assert report["success"] is False and len(report["failed"]) >= 2
    assert json.loads((out / "report" / "flow_statistics.json").read_text())["success"] is True


def test_review_exports_positives_with_frame_strips(chain, tmp_path):
    metrics = review_stage.run(make_params(), [chain["labels"], chain["images"], chain["videos"]], tmp_path)
    page = (tmp_path / "report" / "index.html").read_text()
    assert metrics["review_items"] == 1 and metrics["positives_available"] == 1
    assert "a &lt;object&gt; scene &amp; more" in page and "data:image/jpeg;base64," in page
    assert "pan" not in pd.read_csv(tmp_path / "report" / "review.csv")["id"].tolist()


# --------------------------------------------------------------------------- the LLM backend


def _answer(request) -> str:
    prompt = request.body["messages"][-1]["content"][0]["text"]
    if "<zoom>" in prompt:  # a video the flow rule keeps, so its label depends on the judge alone
        return "I cannot judge this, sorry."  # malformed: no JSON at all
    keys = ["c1_object_visible", "c2_not_distorted", "c3_consistent", "c4_motion", "c5_not_camera_only"]
    return json.dumps({k: "<object>" in prompt or k != "c5_not_camera_only" for k in keys})


def test_llm_judge_stage_labels_caches_and_never_leaks_the_key(
    chat_server: ChatServer, upstream, chain, tmp_path, monkeypatch, caplog
):
    caplog.set_level("DEBUG")
    monkeypatch.setenv(KEY_ENV, KEY)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("VIDPRIOR_HOME", str(tmp_path))
    chat_server.responder = _answer
    endpoint = {
        "base_url": chat_server.base_url,
        "model": "judge-test",
        "api_key_env": KEY_ENV,
        "max_retries": 0,
    }
    params = make_params(backend="llm", endpoint=endpoint, cache_dir=str(tmp_path / "cache"))

    metrics = execute("unic.judge", params, [upstream["videos"], chain["flow"]], tmp_path / "judge")
    verdicts = by_id(read_manifest(tmp_path / "judge"))
    rejects = read_rejects(tmp_path / "judge").set_index("id")
    assert verdicts["object"]["positive"] and not verdicts["pan"]["positive"]
    assert rejects.at["zoom", "reason"] == "malformed_answer"
    assert all(r.headers.get("authorization") == f"Bearer {KEY}" for r in chat_server.requests)
    assert all(
        len([p for p in r.body["messages"][-1]["content"] if p["type"] == "image_url"]) == 4
        for r in chat_server.requests
    )

    asked = len(chat_server.requests)
    again = execute("unic.judge", params, [upstream["videos"], chain["flow"]], tmp_path / "judge2")
    assert len(chat_server.requests) == asked + 1  # only the malformed one is asked again
    assert again["labelled"] == metrics["labelled"]

    labels.run(
        params,
        [upstream["images"], upstream["videos"], chain["flow"], tmp_path / "judge"],
        tmp_path / "labels",
    )
    assert (
        read_rejects(tmp_path / "labels").set_index("id").at["zoom", "reason"]
        == "unic.judge:malformed_answer"
    )

    leaked = [str(p) for p in tmp_path.rglob("*") if p.is_file() and KEY.encode() in p.read_bytes()]
    assert leaked == []  # manifests, rejects, cache, mlflow.db and MLflow artifacts
    assert KEY not in caplog.text
