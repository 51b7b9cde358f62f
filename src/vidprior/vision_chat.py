"""Pieces shared by the stages that show video frames to an OpenAI-compatible vision chat endpoint.

Used by the Uni-C judge (`vidprior.unic.judge_llm`) and the UDPDiff captioner
(`vidprior.udpdiff.captions`): the client built from `ChatEndpointParams`, frames as JPEG data URLs,
a one-file-per-answer disk cache, the message that stops a stage on a configuration error, and the
worker pool that aborts on the first such error.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any, TypeVar

import cv2
import numpy as np

from vidprior.config import ChatEndpointParams
from vidprior.io.atomic import write_text_atomic
from vidprior.llm import ChatClient, EndpointConfig

__all__ = [
    "CONTENT_POLICY_CODES",
    "AnswerCache",
    "config_error_message",
    "jpeg_data_url",
    "make_client",
    "run_until_first_error",
    "sha256_text",
]

log = logging.getLogger(__name__)

# JPEG keeps a few 512x512 frames well under request-size limits; quality 90 leaves no visible
# artefacts that a judge could take for distortion or a captioner describe.
JPEG_QUALITY = 90
# Error codes with which OpenAI and Azure OpenAI reject one request's content (here: an image) rather
# than the configuration; such an item is refused, not a reason to stop the stage.
CONTENT_POLICY_CODES = frozenset({"content_filter", "content_policy_violation", "moderation_blocked"})

K = TypeVar("K")


def make_client(endpoint: ChatEndpointParams, *, sleep: Callable[[float], None] = time.sleep) -> ChatClient:
    """A ChatClient for `endpoint`; `sleep` is injectable so tests need not wait out backoff."""
    return ChatClient(EndpointConfig.from_settings(endpoint), sleep=sleep)


def jpeg_data_url(frame: np.ndarray, quality: int = JPEG_QUALITY) -> str:
    """An (H, W, 3) uint8 RGB frame as a `data:image/jpeg;base64,...` URL for an `image_url` part."""
    frame = np.asarray(frame)
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"frames must be (H, W, 3) uint8 RGB, got {frame.dtype} {frame.shape}")
    ok, buf = cv2.imencode(
        ".jpg", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality]
    )
    if not ok:
        raise ValueError(f"could not encode a {frame.shape} frame as JPEG")
    return "data:image/jpeg;base64," + base64.b64encode(buf.tobytes()).decode("ascii")


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def config_error_message(what: str, section: str, endpoint: ChatEndpointParams, exc: Exception) -> str:
    """Why a stage stops on an endpoint that rejects its requests as such; names the env var, not the key."""
    env = endpoint.api_key_env
    state = "set" if os.environ.get(env) else "not set"
    return (
        f"{what} endpoint {endpoint.base_url} (model {endpoint.model!r}) rejected a request: {exc}. "
        f"Check {section}.base_url, {section}.model and the API key in ${env} (currently {state})."
    )


def run_until_first_error(task: Callable[[K], None], keys: Iterable[K], max_workers: int, name: str) -> None:
    """`task(key)` for every key on a thread pool; the first exception is re-raised at once.

    Queued keys are then dropped instead of each collecting the same failure (e.g. a 401); tasks
    already running finish. A task that wants to stop its peers early raises.
    """
    keys = list(keys)
    if not keys:
        return
    stop = threading.Event()

    def guarded(key: K) -> None:
        # A task a worker picks up between the failure and the shutdown below must not run either.
        if stop.is_set():
            return
        try:
            task(key)
        except BaseException:
            stop.set()
            raise

    pool = ThreadPoolExecutor(max_workers=max(1, min(max_workers, len(keys))), thread_name_prefix=name)
    try:
        futures = [pool.submit(guarded, key) for key in keys]
        finished, _ = wait(futures, return_when=FIRST_EXCEPTION)
        for future in finished:
            future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


class AnswerCache:
    """One JSON file per key (a dict of JSON scalars), named by the key's sha256: `{"key": ..., **fields}`.

    The stored key is compared on read, so a file copied or renamed from elsewhere never answers for
    another key; an unreadable or mismatched file is a miss (one request), never a failed run.
    """

    def __init__(self, cache_dir: Path, label: str) -> None:
        self.cache_dir = Path(cache_dir)
        self.label = label

    @staticmethod
    def digest(key: dict[str, Any]) -> str:
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode("utf-8")).hexdigest()

    def path(self, key: dict[str, Any]) -> Path:
        digest = self.digest(key)
        # Two-character fan-out keeps directories small over hundreds of thousands of videos.
        return self.cache_dir / digest[:2] / f"{digest}.json"

    def get(self, key: dict[str, Any], check: Callable[[dict[str, Any]], Any]) -> Any | None:
        """`check(record)` turns a stored record into the cached value, raising on a bad one."""
        path = self.path(key)
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            if record["key"] != key:
                raise ValueError("stored key differs")
            return check(record)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("ignoring unreadable %s cache file %s (%s)", self.label, path, type(exc).__name__)
            return None

    def put(self, key: dict[str, Any], fields: dict[str, Any]) -> None:
        record = {"key": key, **fields}
        write_text_atomic(self.path(key), json.dumps(record, ensure_ascii=False, indent=1) + "\n")
