"""Stage `udpdiff.captions`: Panda-Dense's long caption for every clip; Panda-70M's short one is kept.

Input: the `udpdiff.clips` output (manifest columns `clip_path`, `sha256`, `short_caption`). Every
clip is decoded and `udpdiff.captions.frames` frames are sampled at regular intervals from the first
to the last; one captioner (`Captioner`) answers for a batch of clips. Backends:

* ``panda``: no re-captioning; the long caption is the short Panda-70M caption, recorded as such
  (`caption_model` "panda70m", `caption_frames` 0).
* ``video_llava``: `models.video_llava` through transformers (greedy, `max_new_tokens`, the new
  tokens decoded; `vidprior.models.video_llava`), one `generate` call per batch, on the GPU if any.
* ``endpoint``: any OpenAI-compatible vision chat endpoint (`endpoint`), the frames as JPEG images
  labelled "frame 1..n", `endpoint.max_workers` requests at a time. Answers are cached on disk
  (`cache_dir`) by clip sha256, prompt version, model, instruction and frame count, so a rerun over
  the same clips costs no requests; failed answers are not cached and are asked again.

Rejects: ``unreadable_video`` (the clip cannot be decoded), ``empty_caption`` (the answer has no
letter or digit once whitespace is collapsed, as tiny random-weight models often give, or the
short caption is blank), and
``caption_failed`` (endpoint: refused, malformed, or the retries on 429/5xx/timeouts ran out).
An endpoint that rejects the requests as such (HTTP 401/403/404, other 4xx) stops the stage with
`CaptionConfigError`, naming the URL and the API key's environment variable; batches finished
before stay checkpointed and their answers cached.

A caption cut off at the token limit is kept and flagged (`caption_truncated`): the text before
the cut still describes the clip, and the text encoder truncates long captions anyway.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from vidprior import vision_chat
from vidprior.config import CaptionParams, Params
from vidprior.io.manifest import MANIFEST
from vidprior.io.media import MediaError, read_video, sample_frame_indices
from vidprior.llm import ChatClient, EndpointRejected, LLMError
from vidprior.unic.generation import (
    fingerprint,
    finish_stage,
    ok,
    rejected,
    run_batches,
    split_records,
)
from vidprior.unic.stage_inputs import input_dir, read_input_manifest
from vidprior.vision_chat import AnswerCache

STAGE = "udpdiff.captions"
REQUIRED_COLUMNS = ["clip_path", "sha256", "short_caption"]
PANDA_MODEL = "panda70m"
# Bump when the endpoint messages change: part of the cache key, so older answers are not reused.
PROMPT_VERSION = "udpdiff-caption-v1"
MANIFEST_COLUMNS = [
    "id",
    "short_caption",
    "long_caption",
    "caption_backend",
    "caption_model",
    "caption_frames",
    "caption_truncated",
    "clip_sha256",
]
_DETAIL_CHARS = 300


class CaptionConfigError(RuntimeError):
    """The caption endpoint rejects the requests as such (bad key, wrong URL or model): stop the stage."""


@dataclass(frozen=True)
class CaptionResult:
    """A long caption, or why there is none (`reason` "empty_caption" / "caption_failed")."""

    caption: str | None
    reason: str | None = None
    detail: str = ""
    truncated: bool = False
    cached: bool = False


class Captioner(Protocol):
    """What the stage needs from a backend: one result per clip, in input order. Its provenance
    (backend, model, frames shown) is `captioner_identity`, known without building the backend."""

    def caption(
        self, frames_list: Sequence[np.ndarray], short_captions: Sequence[str], content_hashes: Sequence[str]
    ) -> list[CaptionResult]: ...


def _clip(detail: str) -> str:
    return " ".join(str(detail).split())[:_DETAIL_CHARS]


def finished_caption(text: str, truncated: bool = False) -> CaptionResult:
    """Whitespace collapsed to single spaces; a caption with no letter or digit is `empty_caption`."""
    caption = " ".join(text.split())
    if not any(ch.isalnum() for ch in caption):
        return CaptionResult(None, "empty_caption", f"answer without words: {caption!r}"[:_DETAIL_CHARS])
    return CaptionResult(caption, truncated=truncated)


def _failed(detail: str) -> CaptionResult:
    return CaptionResult(None, "caption_failed", _clip(detail))


# --------------------------------------------------------------------------- backends


class PandaCaptioner:
    def caption(self, frames_list, short_captions, content_hashes) -> list[CaptionResult]:
        return [finished_caption(text) for text in short_captions]


class VideoLlavaCaptioner:
    """`models.video_llava` through transformers, on the GPU when there is one."""

    def __init__(self, params: Params) -> None:
        from vidprior.models.loading import default_device
        from vidprior.models.video_llava import build_video_llava

        self.cfg = params.udpdiff.captions
        self.parts = build_video_llava(params.models.video_llava)
        self.parts.model.to(default_device())

    def caption(self, frames_list, short_captions, content_hashes) -> list[CaptionResult]:
        from vidprior.models.video_llava import generate_captions

        answers = generate_captions(self.parts, frames_list, self.cfg.instruction, self.cfg.max_new_tokens)
        return [finished_caption(a.text, a.truncated) for a in answers]


class EndpointCaptioner:
    """Captions through an OpenAI-compatible vision chat endpoint; see the module docstring."""

    def __init__(self, cfg: CaptionParams, client: ChatClient | None = None) -> None:
        if client is not None and client.config.model != cfg.endpoint.model:
            # Answers are cached under endpoint.model; a client asking another model would misfile them.
            raise ValueError(f"client model {client.config.model!r} != endpoint model {cfg.endpoint.model!r}")
        self.cfg = cfg
        self.endpoint = cfg.endpoint
        self.cache = AnswerCache(Path(cfg.cache_dir), "caption")
        self._owns_client = client is None
        self.client = client if client is not None else vision_chat.make_client(cfg.endpoint)

    def close(self) -> None:
        if self._owns_client:
            self.client.close()

    def key(self, content_hash: str, n_frames: int) -> dict[str, Any]:
        return {
            "content_hash": content_hash,
            "prompt_version": PROMPT_VERSION,
            "model": self.endpoint.model,
            "instruction_sha256": vision_chat.sha256_text(self.cfg.instruction),
            "n_frames": n_frames,
        }

    def messages(self, frames: np.ndarray) -> list[dict[str, Any]]:
        n = len(frames)
        system = (
            f"You are shown {n} frames sampled at regular intervals from one video clip, in temporal "
            f'order, labelled "frame 1" to "frame {n}". Answer with the caption only: one paragraph of '
            "plain text, with no title, list or preamble."
        )
        content: list[dict[str, Any]] = []
        for i, frame in enumerate(frames, start=1):
            content.append({"type": "text", "text": f"frame {i}"})
            content.append({"type": "image_url", "image_url": {"url": vision_chat.jpeg_data_url(frame)}})
        content.append({"type": "text", "text": self.cfg.instruction})
        return [{"role": "system", "content": system}, {"role": "user", "content": content}]

    def caption(self, frames_list, short_captions, content_hashes) -> list[CaptionResult]:
        results: list[CaptionResult | None] = [None] * len(frames_list)
        pending: dict[str, list[int]] = {}
        keys: dict[str, dict[str, Any]] = {}
        for index, (frames, content_hash) in enumerate(zip(frames_list, content_hashes, strict=True)):
            key = self.key(content_hash, len(frames))
            hit = self.cache.get(key, _cached_result)
            if hit is not None:
                results[index] = hit
                continue
            # Clips with the same content and question share one request.
            digest = AnswerCache.digest(key)
            keys[digest] = key
            pending.setdefault(digest, []).append(index)
        lock = threading.Lock()

        def ask(digest: str) -> None:
            indices = pending[digest]
            result = self._ask(frames_list[indices[0]], keys[digest])
            with lock:
                for index in indices:
                    results[index] = result

        vision_chat.run_until_first_error(ask, pending, self.endpoint.max_workers, "caption-endpoint")
        done = [r for r in results if r is not None]
        if len(done) != len(results):
            raise RuntimeError("captioner finished without a result for every clip")  # a bug, not an input
        return done

    def _ask(self, frames: np.ndarray, key: dict[str, Any]) -> CaptionResult:
        messages = self.messages(frames)
        try:
            answer = self.client.complete(messages, temperature=0.0, max_tokens=self.endpoint.max_tokens)
        except EndpointRejected as exc:
            if exc.code in vision_chat.CONTENT_POLICY_CODES:
                return _failed(f"refused: {exc}")
            if exc.status == 408:  # a proxy's request timeout says nothing about the configuration
                return _failed(f"endpoint_error: {exc}")
            message = vision_chat.config_error_message(
                "caption", "udpdiff.captions.endpoint", self.endpoint, exc
            )
            raise CaptionConfigError(message) from None
        except LLMError as exc:
            return _failed(f"endpoint_error: {exc}")
        if answer.refusal:
            return _failed(f"refused: {answer.refusal}")
        if answer.finish_reason == "content_filter":
            return _failed("refused: finish_reason=content_filter")
        text = _answer_text(answer.raw)
        if text is None:
            return _failed(f"malformed answer: message content is not text: {answer.raw['choices'][0]!r}")
        result = finished_caption(text, truncated=answer.finish_reason == "length")
        if result.caption is not None:
            self.cache.put(key, {"caption": result.caption, "truncated": result.truncated, "raw": text})
        return result


def _answer_text(raw: dict[str, Any]) -> str | None:
    """The message content as text: a string, or a list of text parts (some servers send those)."""
    content = raw["choices"][0]["message"].get("content")
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in content):
        texts = [p.get("text") for p in content]
        if all(isinstance(t, str) for t in texts):
            return " ".join(texts)
    return None


def _cached_result(record: dict[str, Any]) -> CaptionResult:
    caption, truncated = record["caption"], record["truncated"]
    if not isinstance(caption, str) or not isinstance(truncated, bool) or not caption.strip():
        raise ValueError("caption record is not a non-empty string and a truncated flag")
    return CaptionResult(caption, truncated=truncated, cached=True)


def open_captioner(params: Params, stack: contextlib.ExitStack) -> Captioner:
    cfg = params.udpdiff.captions
    if cfg.backend == "panda":
        return PandaCaptioner()
    if cfg.backend == "video_llava":
        return VideoLlavaCaptioner(params)
    captioner = EndpointCaptioner(cfg)
    stack.callback(captioner.close)
    return captioner


def captioner_identity(params: Params) -> tuple[str, str, int]:
    """(backend, model, frames shown) without building anything: the manifest's provenance."""
    cfg = params.udpdiff.captions
    if cfg.backend == "panda":
        return "panda", PANDA_MODEL, 0
    if cfg.backend == "video_llava":
        return "video_llava", params.models.video_llava.model_id, cfg.frames
    return "endpoint", cfg.endpoint.model, cfg.frames


# --------------------------------------------------------------------------- stage


def _checked_clips(clips: pd.DataFrame, where: Path) -> pd.DataFrame:
    for column in REQUIRED_COLUMNS:
        bad = clips[~clips[column].map(lambda v: isinstance(v, str))]
        if len(bad):
            raise ValueError(
                f"{where}: column {column!r} must hold strings; row id {bad['id'].iloc[0]!r} has "
                f"{bad[column].iloc[0]!r}"
            )
    return clips[["id", *REQUIRED_COLUMNS]]


def _record(row: Any, result: CaptionResult, identity: tuple[str, str, int]) -> dict:
    if result.caption is None:
        return rejected(row.id, result.reason or "caption_failed", result.detail)
    backend, model, frames = identity
    return ok(
        row.id,
        short_caption=row.short_caption,
        long_caption=result.caption,
        caption_backend=backend,
        caption_model=model,
        caption_frames=frames,
        caption_truncated=bool(result.truncated),
        clip_sha256=row.sha256,
        cached=bool(result.cached),
    )


def _batch_processor(
    params: Params, root: Path, stack: contextlib.ExitStack
) -> Callable[[pd.DataFrame], list[dict]]:
    cfg = params.udpdiff.captions
    identity = captioner_identity(params)
    # Opened on the first batch with work: a resumed stage with nothing left builds no model.
    captioner: Captioner | None = None

    def process(batch: pd.DataFrame) -> list[dict]:
        nonlocal captioner
        records, ready, frames_list = [], [], []
        for row in batch.itertuples(index=False):
            if not row.short_caption.strip():
                # Both captions are part of the dataset (training picks the short one 20% of the time).
                records.append(rejected(row.id, "empty_caption", "the Panda-70M short caption is blank"))
                continue
            try:
                video, _ = read_video(root / row.clip_path)
            except MediaError as exc:
                records.append(rejected(row.id, "unreadable_video", str(exc)))
                continue
            ready.append(row)
            frames_list.append(video[sample_frame_indices(len(video), cfg.frames)])
        if ready:
            captioner = captioner or open_captioner(params, stack)
            results = captioner.caption(
                frames_list, [r.short_caption for r in ready], [r.sha256 for r in ready]
            )
            records.extend(_record(row, res, identity) for row, res in zip(ready, results, strict=True))
        return records

    return process


def _fingerprint(params: Params, root: Path) -> str:
    cfg = params.udpdiff.captions
    # Knobs that change no answer (workers, timeouts, retries, where the cache lives) are left out,
    # so a resumed run with other settings for them keeps its finished batches.
    settings = cfg.model_dump(
        mode="json",
        exclude={"cache_dir": True, "endpoint": {"max_workers", "timeout_s", "max_retries", "api_key_env"}},
    )
    return fingerprint(STAGE, PROMPT_VERSION, captioner_identity(params), settings, str(root.resolve()))


def run(params: Params, inputs: Sequence[Path | str] | None, output_dir: Path) -> dict[str, float]:
    """inputs: [clips dir]. Writes manifest.parquet (one row per captioned clip) and rejects.parquet."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    root = input_dir(inputs, 0, "clips")
    clips = _checked_clips(read_input_manifest(inputs, 0, "clips", REQUIRED_COLUMNS), root / MANIFEST)

    with contextlib.ExitStack() as stack:
        result = run_batches(
            clips,
            output_dir=output_dir,
            name="captions",
            config_fingerprint=_fingerprint(params, root),
            batch_size=params.udpdiff.captions.batch_size,
            process=_batch_processor(params, root, stack),
        )
    kept, rejects = split_records(result.records, STAGE)
    if not len(kept):
        kept = pd.DataFrame(columns=[*MANIFEST_COLUMNS, "cached"])
    cache_hits = int(kept["cached"].astype(bool).sum())
    manifest = kept[MANIFEST_COLUMNS].assign(seed=params.seed)
    manifest = manifest.astype({"caption_frames": "int64", "caption_truncated": "bool"})
    metrics = finish_stage(
        manifest,
        rejects,
        stage=STAGE,
        items=len(clips),
        output_dir=output_dir,
        reused_batches=result.reused_batches,
        started=started,
    )
    metrics.update(truncated=int(manifest["caption_truncated"].sum()), cache_hits=cache_hits)
    if len(manifest):
        words = manifest["long_caption"].str.split().str.len()
        metrics["mean_long_caption_words"] = float(words.mean())
    return metrics
