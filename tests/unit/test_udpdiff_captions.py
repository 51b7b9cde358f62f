"""Stage `udpdiff.captions`: the panda, Video-LLaVA (tiny) and endpoint backends, accounting, resume."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from vidprior import vision_chat
from vidprior.config import Params, params_from_dict
from vidprior.io.manifest import read_manifest, read_rejects, write_manifest
from vidprior.io.media import file_sha256, write_video
from vidprior.models import video_llava
from vidprior.models.loading import ModelUnavailableError
from vidprior.models.spec import ModelSpec, TinySpec
from vidprior.udpdiff import captions, synthetic
from vidprior.udpdiff import clips as clips_stage
from vidprior.udpdiff.captions import CaptionConfigError, finished_caption

if TYPE_CHECKING:
    from conftest import ChatServer, Recorded

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROOT = Path(__file__).resolve().parents[2]
KEY_ENV = "VIDPRIOR_TEST_CAPTION_KEY"
SECRET = "sk-caption-test-91b2SECRET"
MODEL = "test-caption-model"
# Readable, captioned clips in id order; BLANK's short caption is blank and BROKEN is not a video.
CLIPS = {
    "vidA.0": "A red square.",
    "vidA.1": "A green disc moves.",
    "vidB.0": "Blue waves.",
    "vidB.2": "Yellow light.",
}
BLANK, BROKEN = "vidB.1", "vidC.0"
ITEMS = 6
COLOURS = {
    "vidA.0": (220, 30, 30),
    "vidA.1": (30, 200, 40),
    "vidB.0": (20, 40, 210),
    BLANK: (90, 90, 90),
    "vidB.2": (200, 200, 0),
}
EXPECTED_REJECTS = {BLANK: "empty_caption", BROKEN: "unreadable_video"}
SOURCE_FRAMES = 6


@pytest.fixture(autouse=True)
def _key(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv(KEY_ENV, SECRET)


@pytest.fixture(autouse=True)
def _no_backoff(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The endpoint captioner's client records its backoff instead of sleeping it."""
    sleeps: list[float] = []
    build = vision_chat.make_client
    monkeypatch.setattr(vision_chat, "make_client", lambda endpoint: build(endpoint, sleep=sleeps.append))
    return sleeps


def clip_frames(clip_id: str) -> np.ndarray:
    """A solid-colour clip whose brightness ramps over time, so the sampled frames can be told apart."""
    base = np.array(COLOURS[clip_id], np.float64)
    return np.stack(
        [
            np.full((32, 48, 3), np.clip(base * (0.5 + 0.1 * t), 0, 255), np.uint8)
            for t in range(SOURCE_FRAMES)
        ]
    )


@pytest.fixture(scope="module")
def clips_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A `udpdiff.clips`-shaped output: five readable clips (one with a blank caption) and a non-video."""
    root = tmp_path_factory.mktemp("clips")
    rows = []
    for clip_id, caption in sorted({**CLIPS, BLANK: "  ", BROKEN: "Broken."}.items()):
        path = root / "clips" / f"{clip_id}.mp4"
        if clip_id == BROKEN:
            path.write_bytes(b"not an mp4 at all")
        else:
            write_video(path, clip_frames(clip_id), fps=8)
        video_id, index = clip_id.split(".")
        rows.append(
            dict(
                id=clip_id,
                clip_path=f"clips/{clip_id}.mp4",
                sha256=file_sha256(path),
                video_id=video_id,
                clip_index=int(index),
                short_caption=caption,
                frames=SOURCE_FRAMES,
                height=32,
                width=48,
                fps=8,
            )
        )
    write_manifest(pd.DataFrame(rows), root)
    return root


def stage_params(**caption_settings: Any) -> Params:
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    data["udpdiff"]["captions"].update(caption_settings)
    return params_from_dict(data)


def with_captions(params: Params, **update: Any) -> Params:
    cfg = params.udpdiff.captions.model_copy(update=update)
    return params.model_copy(update={"udpdiff": params.udpdiff.model_copy(update={"captions": cfg})})


def endpoint_params(server: ChatServer, cache_dir: Path, **endpoint: Any) -> Params:
    settings = {
        "base_url": server.base_url,
        "model": MODEL,
        "api_key_env": KEY_ENV,
        "max_workers": 1,  # requests in clip order, so scripted replies land on known clips
        "timeout_s": 5.0,
        "max_retries": 2,
        "max_tokens": 64,
        **endpoint,
    }
    return stage_params(backend="endpoint", cache_dir=str(cache_dir), endpoint=settings)


def rejects_by_id(out: Path) -> dict[str, str]:
    rejects = read_rejects(out)
    assert set(rejects["stage"]) <= {captions.STAGE}
    return dict(zip(rejects["id"], rejects["reason"], strict=True))


def image_parts(request: Recorded) -> list[np.ndarray]:
    user = request.body["messages"][1]["content"]
    urls = [part["image_url"]["url"] for part in user if part["type"] == "image_url"]
    prefix = "data:image/jpeg;base64,"
    assert all(url.startswith(prefix) for url in urls)
    decoded = [cv2.imdecode(np.frombuffer(base64.b64decode(u[len(prefix) :]), np.uint8), 1) for u in urls]
    return [cv2.cvtColor(img, cv2.COLOR_BGR2RGB) for img in decoded]


# --------------------------------------------------------------------------- panda


def test_panda_backend_keeps_the_short_caption_and_accounts_for_every_clip(clips_dir: Path, tmp_path: Path):
    out = tmp_path / "out"
    metrics = captions.run(stage_params(backend="panda"), [clips_dir], out)
    manifest = read_manifest(out)
    assert list(manifest["id"]) == list(CLIPS)
    assert list(manifest["long_caption"]) == list(manifest["short_caption"]) == list(CLIPS.values())
    assert set(manifest["caption_backend"]) == {"panda"} and set(manifest["caption_model"]) == {"panda70m"}
    assert set(manifest["caption_frames"]) == {0} and not manifest["caption_truncated"].any()
    upstream = read_manifest(clips_dir).set_index("id")["sha256"]
    assert list(manifest["clip_sha256"]) == [upstream[i] for i in manifest["id"]]
    assert rejects_by_id(out) == EXPECTED_REJECTS
    details = read_rejects(out).set_index("id")["detail"]
    assert "vidC.0.mp4" in details[BROKEN] and "not a readable video" in details[BROKEN]
    assert details[BLANK] == "the Panda-70M short caption is blank"
    assert metrics["clips_in"] == ITEMS and metrics["kept"] == 4 and metrics["rejected"] == 2
    assert metrics["rejected_unreadable_video"] == 1 and metrics["rejected_empty_caption"] == 1
    assert not list(out.glob("*.partial*")) and not (out / ".partial").exists()


def test_upstream_clips_stage_output_is_captioned(tmp_path: Path):
    params = stage_params(backend="panda")
    synthetic.run(params, None, tmp_path / "source")
    clips_stage.run(params, [tmp_path / "source"], tmp_path / "clips")
    clips = read_manifest(tmp_path / "clips")
    assert len(clips) > 0
    metrics = captions.run(params, [tmp_path / "clips"], tmp_path / "captions")
    manifest = read_manifest(tmp_path / "captions")
    assert list(manifest["id"]) == sorted(clips["id"]) and metrics["kept"] == len(clips)
    expected = clips.set_index("id")["short_caption"]
    assert all(manifest["long_caption"] == [expected[i] for i in manifest["id"]])


def test_bad_clips_manifest_names_the_file_and_field(clips_dir: Path, tmp_path: Path):
    manifest = read_manifest(clips_dir)
    bad = tmp_path / "bad"
    write_manifest(manifest.drop(columns=["sha256"]), bad)
    with pytest.raises(ValueError, match=r"manifest.parquet.*sha256"):
        captions.run(stage_params(), [bad], tmp_path / "out")
    write_manifest(manifest.assign(short_caption=[None, *manifest["short_caption"][1:]]), bad)
    with pytest.raises(
        ValueError, match=r"manifest.parquet: column 'short_caption' must hold strings; row id"
    ):
        captions.run(stage_params(), [bad], tmp_path / "out")
    with pytest.raises(ValueError, match="missing input #1: the clips stage"):
        captions.run(stage_params(), [], tmp_path / "out")


def test_finished_caption_collapses_whitespace_and_rejects_wordless_text():
    assert finished_caption("  A dog\n runs.\t").caption == "A dog runs."
    for text in ("", "   ", "...", "\u00bf?"):
        result = finished_caption(text)
        assert result.caption is None and result.reason == "empty_caption"
    assert finished_caption("cut off mid", truncated=True).truncated


# --------------------------------------------------------------------------- video_llava


@pytest.fixture(scope="module")
def tiny_llava() -> video_llava.VideoLlavaParts:
    return video_llava.build_video_llava(ModelSpec(tiny=TinySpec(seed=0)))


def test_video_inputs_expand_the_video_token_per_frame(tiny_llava: video_llava.VideoLlavaParts):
    videos = [clip_frames("vidA.0")[:4], clip_frames("vidB.0")[:4]]
    prompts = [video_llava.chat_prompt("Describe."), video_llava.chat_prompt("Describe the video in detail.")]
    inputs = video_llava.video_inputs(tiny_llava, videos, prompts)
    assert inputs["pixel_values_videos"].shape == (2, 4, 3, 32, 32)
    video_id = tiny_llava.model.config.video_token_id
    # 4 frames x (4 x 4 patches + CLIP's class token).
    assert (inputs["input_ids"] == video_id).sum(dim=1).tolist() == [4 * 17, 4 * 17]
    mask = inputs["attention_mask"]
    assert mask[0, 0] == 0 and mask[1].all() and mask[:, -1].all()  # left padding
    with pytest.raises(ValueError, match="same number of frames"):
        video_llava.video_inputs(tiny_llava, [videos[0], videos[1][:3]], prompts)
    with pytest.raises(ValueError, match="exactly one <video>"):
        video_llava.video_inputs(tiny_llava, videos[:1], ["USER: describe ASSISTANT:"])


def test_batched_generation_equals_one_clip_at_a_time(tiny_llava: video_llava.VideoLlavaParts):
    videos = [clip_frames(i)[:4] for i in ("vidA.0", "vidA.1", "vidB.0")]
    batched = video_llava.generate_captions(tiny_llava, videos, "Describe this video.", 8)
    single = [video_llava.generate_captions(tiny_llava, [v], "Describe this video.", 8)[0] for v in videos]
    assert batched == single
    assert all(isinstance(g.text, str) for g in batched)


def test_video_llava_backend_captions_every_readable_clip(clips_dir: Path, tmp_path: Path):
    params = stage_params(backend="video_llava", frames=4, max_new_tokens=6, batch_size=2)
    metrics = captions.run(params, [clips_dir], tmp_path / "a")
    manifest, reasons = read_manifest(tmp_path / "a"), rejects_by_id(tmp_path / "a")
    assert reasons.pop(BROKEN) == "unreadable_video" and reasons.pop(BLANK) == "empty_caption"
    # Random weights: any answer without a word is an empty caption, never a silent fallback.
    assert set(reasons.values()) <= {"empty_caption"}
    assert sorted([*manifest["id"], *reasons]) == sorted(CLIPS)
    assert metrics["kept"] >= 1 and metrics["kept"] + metrics["rejected"] == ITEMS
    assert metrics["truncated"] == manifest["caption_truncated"].sum()
    assert set(manifest["caption_backend"]) <= {"video_llava"}
    assert set(manifest["caption_model"]) <= {params.models.video_llava.model_id}
    assert set(manifest["caption_frames"]) <= {4}
    assert all(isinstance(c, str) and c.strip() == c and c for c in manifest["long_caption"])
    assert list(manifest["short_caption"]) == [CLIPS[i] for i in manifest["id"]]
    again = captions.run(params, [clips_dir], tmp_path / "b")
    pd.testing.assert_frame_equal(read_manifest(tmp_path / "b"), manifest)
    assert again["kept"] == metrics["kept"]


def test_video_llava_empty_answer_is_a_reject(
    clips_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    build = video_llava.build_video_llava

    def silent(spec: ModelSpec) -> video_llava.VideoLlavaParts:
        parts = build(spec)
        # All logits equal: greedy picks token 0, <unk>, a special token that decodes to nothing.
        torch.nn.init.zeros_(parts.model.lm_head.weight)
        return parts

    monkeypatch.setattr(video_llava, "build_video_llava", silent)
    metrics = captions.run(stage_params(backend="video_llava", max_new_tokens=4), [clips_dir], tmp_path / "o")
    reasons = rejects_by_id(tmp_path / "o")
    assert reasons == {**dict.fromkeys(CLIPS, "empty_caption"), **EXPECTED_REJECTS}
    assert metrics["kept"] == 0 and len(read_manifest(tmp_path / "o")) == 0
    assert "answer without words: ''" in set(read_rejects(tmp_path / "o")["detail"])


# --------------------------------------------------------------------------- endpoint


def test_endpoint_captions_from_the_sampled_frames(chat_server: ChatServer, clips_dir: Path, tmp_path: Path):
    chat_server.script = [chat_server.ok("  A bright square\n fades in. ")]
    params = endpoint_params(chat_server, tmp_path / "cache")
    metrics = captions.run(params, [clips_dir], tmp_path / "out")
    manifest = read_manifest(tmp_path / "out")
    assert list(manifest["id"]) == list(CLIPS)
    assert set(manifest["long_caption"]) == {"A bright square fades in."}
    assert set(manifest["caption_backend"]) == {"endpoint"} and set(manifest["caption_model"]) == {MODEL}
    assert set(manifest["caption_frames"]) == {4} and not manifest["caption_truncated"].any()
    assert rejects_by_id(tmp_path / "out") == EXPECTED_REJECTS
    assert len(chat_server.requests) == 4 and metrics["cache_hits"] == 0

    first = chat_server.requests[0]
    assert first.path == "/v1/chat/completions"
    assert first.headers["authorization"] == f"Bearer {SECRET}"
    assert first.body["model"] == MODEL and first.body["max_tokens"] == 64 and first.body["temperature"] == 0
    system, user = first.body["messages"]
    assert system["role"] == "system" and '"frame 1" to "frame 4"' in system["content"]
    assert user["content"][-1] == {"type": "text", "text": params.udpdiff.captions.instruction}
    labels = [p["text"] for p in user["content"] if p["type"] == "text"][:-1]
    assert labels == ["frame 1", "frame 2", "frame 3", "frame 4"]
    # Frames 0, 2, 3, 5 of six, in order: the brightness ramp is visible through the JPEGs.
    shown = image_parts(first)
    expected = clip_frames("vidA.0")[[0, 2, 3, 5]]
    assert len(shown) == 4
    for got, want in zip(shown, expected, strict=True):
        assert np.abs(got.astype(int).mean((0, 1)) - want.astype(int).mean((0, 1))).max() < 6


def test_endpoint_rerun_is_served_from_the_cache(chat_server: ChatServer, clips_dir: Path, tmp_path: Path):
    chat_server.responder = lambda request: f"Caption number {len(chat_server.requests)}."
    params = endpoint_params(chat_server, tmp_path / "cache")
    captions.run(params, [clips_dir], tmp_path / "a")
    assert len(chat_server.requests) == 4
    files = sorted((tmp_path / "cache").rglob("*.json"))
    assert len(files) == 4
    record = json.loads(files[0].read_text())
    assert record["key"]["model"] == MODEL and record["key"]["n_frames"] == 4
    assert record["key"]["content_hash"] in set(read_manifest(clips_dir)["sha256"])
    assert SECRET not in "".join(f.read_text() for f in files)

    metrics = captions.run(params, [clips_dir], tmp_path / "b")
    assert len(chat_server.requests) == 4  # zero new requests
    assert metrics["cache_hits"] == 4
    pd.testing.assert_frame_equal(read_manifest(tmp_path / "b"), read_manifest(tmp_path / "a"))

    # Another frame count, instruction or model is another question.
    asked = len(chat_server.requests)
    for changed in (
        with_captions(params, frames=3),
        with_captions(params, instruction="Say what moves."),
        endpoint_params(chat_server, tmp_path / "cache", model="another-model"),
    ):
        metrics = captions.run(changed, [clips_dir], tmp_path / "c")
        assert metrics["cache_hits"] == 0 and len(chat_server.requests) == asked + 4
        asked += 4
    assert chat_server.requests[-1].body["model"] == "another-model"


def test_endpoint_bad_answers_become_caption_failed(chat_server: ChatServer, clips_dir: Path, tmp_path: Path):
    chat_server.script = [
        chat_server.reply(200, {"error": {"message": "upstream overloaded"}}),  # vidA.0: no choice
        chat_server.ok(None, refusal="I cannot describe this."),  # vidA.1
        chat_server.reply(200, chat_server.completion([{"type": "image_url", "image_url": {}}])),  # vidB.0
        chat_server.ok("..."),  # vidB.2: no words
    ]
    metrics = captions.run(endpoint_params(chat_server, tmp_path / "cache"), [clips_dir], tmp_path / "out")
    rejects = read_rejects(tmp_path / "out").set_index("id")
    assert dict(rejects["reason"]) == {
        "vidA.0": "caption_failed",
        "vidA.1": "caption_failed",
        "vidB.0": "caption_failed",
        "vidB.2": "empty_caption",
        **EXPECTED_REJECTS,
    }
    assert "no usable choice" in rejects.loc["vidA.0", "detail"]
    assert rejects.loc["vidA.1", "detail"] == "refused: I cannot describe this."
    assert rejects.loc["vidB.0", "detail"].startswith("malformed answer: message content is not text")
    assert metrics["kept"] == 0 and metrics["rejected_caption_failed"] == 3
    # Failures are not cached: the next run asks again and keeps what now succeeds.
    chat_server.script = [chat_server.ok("A fine caption.")]
    metrics = captions.run(endpoint_params(chat_server, tmp_path / "cache"), [clips_dir], tmp_path / "again")
    assert metrics["kept"] == 4 and len(chat_server.requests) == 8


def test_endpoint_retries_a_500_then_succeeds(
    chat_server: ChatServer, clips_dir: Path, tmp_path: Path, _no_backoff: list[float]
):
    chat_server.script = [chat_server.error(500, "boom"), chat_server.ok("A caption after a retry.")]
    metrics = captions.run(endpoint_params(chat_server, tmp_path / "cache"), [clips_dir], tmp_path / "out")
    assert metrics["kept"] == 4 and len(chat_server.requests) == 5
    assert len(_no_backoff) == 1
    assert set(read_manifest(tmp_path / "out")["long_caption"]) == {"A caption after a retry."}


def test_endpoint_failures_that_outlast_the_retries_or_are_refused(
    chat_server: ChatServer, clips_dir: Path, tmp_path: Path
):
    chat_server.script = [
        *[chat_server.error(503, "busy")] * 3,  # vidA.0: max_retries=2, so three attempts
        chat_server.error(400, "image rejected", code="content_policy_violation"),  # vidA.1
        chat_server.ok("Kept.", finish_reason="length"),  # vidB.0, vidB.2: cut off but kept
    ]
    captions.run(endpoint_params(chat_server, tmp_path / "cache"), [clips_dir], tmp_path / "out")
    rejects = read_rejects(tmp_path / "out").set_index("id")
    assert rejects.loc["vidA.0", "reason"] == "caption_failed"
    assert rejects.loc["vidA.0", "detail"].startswith("endpoint_error: gave up on")
    assert rejects.loc["vidA.1", "detail"].startswith("refused: HTTP 400")
    manifest = read_manifest(tmp_path / "out")
    assert list(manifest["id"]) == ["vidB.0", "vidB.2"] and manifest["caption_truncated"].all()


def test_endpoint_401_stops_the_stage_naming_url_and_env_var(
    chat_server: ChatServer, clips_dir: Path, tmp_path: Path
):
    chat_server.script = [chat_server.error(401, "Incorrect API key provided")]
    params = endpoint_params(chat_server, tmp_path / "cache", max_workers=4)
    with pytest.raises(CaptionConfigError) as caught:
        captions.run(params, [clips_dir], tmp_path / "out")
    message = str(caught.value)
    assert chat_server.base_url in message and f"${KEY_ENV}" in message and "(currently set)" in message
    assert "udpdiff.captions.endpoint.base_url" in message and "HTTP 401" in message
    assert SECRET not in message
    assert len(chat_server.requests) <= 4  # queued clips were dropped, not each sent to collect a 401
    assert not (tmp_path / "out" / "manifest.parquet").exists()


def test_killed_endpoint_stage_resumes_finished_batches(
    chat_server: ChatServer, clips_dir: Path, tmp_path: Path
):
    answers = iter(["First.", "Second.", "Third.", "Fourth."])
    seen: list[str] = []

    def respond(request: Recorded) -> Any:
        if len(seen) == 2 and not resumed:
            seen.append("403")
            return chat_server.error(403, "key revoked")
        seen.append("ok")
        return next(answers)

    resumed = False
    chat_server.responder = respond
    # Batches [vidA.0, vidA.1], [vidB.0, BLANK], [vidB.2, BROKEN]: the second dies on its request.
    params = with_captions(endpoint_params(chat_server, tmp_path / "cache"), batch_size=2)
    with pytest.raises(CaptionConfigError, match="HTTP 403"):
        captions.run(params, [clips_dir], tmp_path / "out")
    assert not (tmp_path / "out" / "manifest.parquet").exists()
    resumed = True
    # Another cache dir: the finished batch must come from the stage's checkpoint, not the cache.
    metrics = captions.run(
        with_captions(params, cache_dir=str(tmp_path / "cache2")), [clips_dir], tmp_path / "out"
    )
    assert metrics["resumed_batches"] == 1 and len(chat_server.requests) == 5
    manifest = read_manifest(tmp_path / "out")
    assert list(manifest["long_caption"]) == ["First.", "Second.", "Third.", "Fourth."]
    assert rejects_by_id(tmp_path / "out") == EXPECTED_REJECTS


def test_pretrained_path_loads_saved_parts_and_answers_alike(
    tiny_llava: video_llava.VideoLlavaParts, tmp_path: Path
):
    for part in (tiny_llava.model, tiny_llava.image_processor, tiny_llava.tokenizer):
        part.save_pretrained(tmp_path)
    loaded = video_llava.build_video_llava(ModelSpec(pretrained=str(tmp_path)))
    assert loaded.model_id == f"{tmp_path}@main" and not loaded.model.training
    assert loaded.tokenizer.padding_side == "left"
    videos = [clip_frames("vidA.0")[:4], clip_frames("vidB.2")[:4]]
    expected = video_llava.generate_captions(tiny_llava, videos, "Describe this video.", 6)
    assert video_llava.generate_captions(loaded, videos, "Describe this video.", 6) == expected
    (tmp_path / "preprocessor_config.json").unlink()
    with pytest.raises(ModelUnavailableError, match="has no preprocessor_config.json"):
        video_llava.build_video_llava(ModelSpec(pretrained=str(tmp_path)))
