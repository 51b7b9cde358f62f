"""Minimal OpenAI-compatible chat-completions client.

Shared by the LLM prompt filter and the vision-LLM judge. It speaks plain HTTP through ``requests`` rather
than the ``openai`` SDK so that any compatible server (vLLM, llama.cpp, Ollama, a hosted API) works with a
dependency the project already pins.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import requests

__all__ = [
    "ChatAnswer",
    "ChatClient",
    "EndpointConfig",
    "EndpointRejected",
    "LLMError",
    "MalformedAnswer",
    "parse_json_answer",
]

log = logging.getLogger(__name__)

_EXCERPT_CHARS = 200
_FENCED_JSON = re.compile(r"```(?:json)?[ \t]*\r?\n?(.*?)```", re.DOTALL | re.IGNORECASE)
# Errors that say nothing about the request itself, so the same request may well succeed later.
_TRANSIENT_ERRORS = (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError)


class LLMError(RuntimeError):
    """The endpoint could not produce a usable answer."""


class MalformedAnswer(LLMError):
    """The model answered, but not in the format that was asked for."""


class EndpointRejected(LLMError):
    """The endpoint refused the request itself (HTTP 4xx other than 429), so retrying cannot help.

    `code` is the error body's `error.code` (or `error.type`) when it has one, so callers can tell a
    per-request content-policy rejection from a configuration error such as a bad key.
    """

    def __init__(self, message: str, status: int, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


@dataclass(frozen=True)
class EndpointConfig:
    base_url: str
    model: str
    # Name of the variable, never the key itself, so configs can be logged and versioned safely.
    api_key_env: str = "OPENAI_API_KEY"
    timeout_s: float = 60.0
    max_retries: int = 5
    backoff_s: float = 1.0
    max_backoff_s: float = 30.0

    @classmethod
    def from_settings(cls, settings: Any) -> EndpointConfig:
        """From a params section with base_url, model, api_key_env, timeout_s and max_retries."""
        return cls(
            base_url=settings.base_url,
            model=settings.model,
            api_key_env=settings.api_key_env,
            timeout_s=settings.timeout_s,
            max_retries=settings.max_retries,
        )


@dataclass(frozen=True)
class ChatAnswer:
    text: str
    raw: dict[str, Any]
    finish_reason: str | None
    refusal: str | None


def _excerpt(text: str, limit: int = _EXCERPT_CHARS) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class ChatClient:
    def __init__(
        self,
        config: EndpointConfig,
        *,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.url = config.base_url.rstrip("/") + "/chat/completions"
        self._sleep = sleep
        self._rng = rng or random.Random()
        # requests.Session is not documented as thread-safe, so each worker thread gets its own.
        self._local = threading.local()
        self._sessions: list[requests.Session] = []
        self._lock = threading.Lock()

    def __enter__(self) -> ChatClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            sessions, self._sessions = self._sessions, []
            # A fresh local makes any later call open (and track) a new session instead of a closed one.
            self._local = threading.local()
        for session in sessions:
            session.close()

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            self._local.session = session
            with self._lock:
                self._sessions.append(session)
        return session

    def complete(
        self,
        messages: list[dict[str, Any]],
        *,
        temperature: float = 0.0,
        max_tokens: int | None = None,
        response_format: dict[str, Any] | None = None,
    ) -> ChatAnswer:
        body: dict[str, Any] = {"model": self.config.model, "messages": messages, "temperature": temperature}
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        if response_format is not None:
            body["response_format"] = response_format
        # Read per call so a rotated key is picked up without rebuilding clients.
        key = os.environ.get(self.config.api_key_env) or None
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return self._post_with_retries(body, headers, key)

    def _post_with_retries(
        self, body: dict[str, Any], headers: dict[str, str], key: str | None
    ) -> ChatAnswer:
        cfg = self.config
        attempts = cfg.max_retries + 1
        last_failure = ""
        for attempt in range(1, attempts + 1):
            retry_after: float | None = None
            try:
                resp = self._session().post(self.url, json=body, headers=headers, timeout=cfg.timeout_s)
            except _TRANSIENT_ERRORS as exc:
                # The exception text names the URL, not the headers, so it is safe to keep.
                last_failure = f"{type(exc).__name__}: {_excerpt(_redact(str(exc), key))}"
            else:
                # Servers sometimes echo the key back ("invalid key sk-..."), so every body is scrubbed
                # before any of it reaches an exception or a log line.
                if resp.status_code == 200:
                    return self._decode(resp, key)
                text = _redact(resp.text, key)
                message = _server_message(text, resp.reason)
                if resp.status_code != 429 and resp.status_code < 500:
                    raise EndpointRejected(
                        f"HTTP {resp.status_code} from {self.url}: {message}",
                        resp.status_code,
                        _error_code(text),
                    )
                last_failure = f"HTTP {resp.status_code}: {message}"
                retry_after = _retry_after(resp)
            if attempt == attempts:
                break
            delay = self._delay(attempt, retry_after)
            log.warning(
                "LLM request to %s failed (%s); retry %d/%d in %.1fs",
                self.url,
                last_failure,
                attempt,
                cfg.max_retries,
                delay,
            )
            self._sleep(delay)
        raise LLMError(f"gave up on {self.url} after {attempts} attempts; last failure: {last_failure}")

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        cfg = self.config
        if retry_after is not None:
            return min(retry_after, cfg.max_backoff_s)
        # Jitter keeps a pool of threads that failed together from retrying in lockstep.
        base = min(cfg.max_backoff_s, cfg.backoff_s * 2 ** (attempt - 1))
        return base * (0.5 + 0.5 * self._rng.random())

    def _decode(self, resp: requests.Response, key: str | None) -> ChatAnswer:
        try:
            raw = resp.json()
        except ValueError:
            raise LLMError(
                f"non-JSON response from {self.url}: {_excerpt(_redact(resp.text, key))!r}"
            ) from None
        if key and key in json.dumps(raw):
            # A server or model that echoes the key must not carry it into caller logs or outputs.
            raw = json.loads(_redact(json.dumps(raw), key))
        try:
            choice = raw["choices"][0]
            message = choice["message"]
            return ChatAnswer(
                # content is null for pure refusals and tool calls; callers want a string either way.
                text=message.get("content") or "",
                raw=raw,
                finish_reason=choice.get("finish_reason"),
                refusal=message.get("refusal"),
            )
        except (KeyError, IndexError, TypeError, AttributeError):
            # Some proxies answer 200 with an {"error": ...} body instead of a proper status code.
            body = _excerpt(_redact(json.dumps(raw), key))
            raise LLMError(f"response from {self.url} has no usable choice: {body}") from None


def _redact(text: str, key: str | None) -> str:
    return text.replace(key, "***") if key else text


def _server_message(text: str, reason: str | None) -> str:
    try:
        payload = json.loads(text)
    except ValueError:
        return _excerpt(text) or reason or "(empty body)"
    error = payload.get("error") if isinstance(payload, dict) else None
    if isinstance(error, dict) and error.get("message"):
        return _excerpt(str(error["message"]))
    if isinstance(error, str):
        return _excerpt(error)
    return _excerpt(json.dumps(payload))


def _error_code(text: str) -> str | None:
    try:
        error = json.loads(text).get("error")
    except (ValueError, AttributeError):
        return None
    if not isinstance(error, dict):
        return None
    code = error.get("code") or error.get("type")
    return _excerpt(str(code), 80) if code else None


def _retry_after(resp: requests.Response) -> float | None:
    # Only the delta-seconds form; HTTP-date values fall back to our own backoff.
    try:
        value = float(resp.headers.get("Retry-After", ""))
    except ValueError:
        return None
    return value if value >= 0 else None


def parse_json_answer(text: str) -> dict[str, Any]:
    """Decode a JSON object from a model answer, bare or inside a ```json fenced block."""
    candidates = [text.strip()]
    candidates += [m.group(1).strip() for m in _FENCED_JSON.finditer(text)]
    for candidate in candidates:
        try:
            value = json.loads(candidate)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    raise MalformedAnswer(f"expected a JSON object, got: {_excerpt(text)!r}")
