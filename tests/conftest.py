"""Shared fixtures: one torch thread for tiny models, and a local OpenAI-compatible Chat Completions
server on 127.0.0.1.

Tests script it per request (status, JSON body, headers such as Retry-After, a delay to provoke client
timeouts) and read back what it received, so LLM clients are exercised over real HTTP without a network.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """One torch thread for a test module, restored after it: tiny models on a shared 2-core machine run
    many times faster so, and a leaked setting would change the float kernels later tests (and the
    child processes they compare against) use. Module scope: module fixtures see the same kernels."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def completion(
    content: str | None = "hello",
    *,
    refusal: str | None = None,
    finish_reason: str = "stop",
    model: str = "test-model",
) -> dict[str, Any]:
    """A chat.completion body as OpenAI returns it."""
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if refusal is not None:
        message["refusal"] = refusal
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
    }


def error_body(message: str, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": "invalid_request_error", "code": code}}


@dataclass
class Reply:
    status: int = 200
    body: Any = field(default_factory=completion)  # JSON-encoded, unless already bytes
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0  # sleep before answering, to run past a client's timeout


@dataclass
class Recorded:
    path: str
    headers: dict[str, str]  # names lower-cased
    body: Any  # the decoded JSON body (raw bytes if it was not JSON)


# A responder gets each request and returns the reply, or just the answer text for a 200 completion.
Responder = Callable[[Recorded], "Reply | str"]


class ChatServer:
    """Answers from `responder` when one is set, else from `script` in order, repeating its last reply."""

    def __init__(self) -> None:
        self.base_url = ""
        self.script: list[Reply] = [Reply()]
        self.responder: Responder | None = None
        self.requests: list[Recorded] = []
        self._lock = threading.Lock()

    # Builders, so test modules need no import from this file.
    completion = staticmethod(completion)
    error_body = staticmethod(error_body)

    @staticmethod
    def reply(
        status: int = 200, body: Any = None, *, headers: dict[str, str] | None = None, delay_s: float = 0.0
    ) -> Reply:
        return Reply(status, completion() if body is None else body, dict(headers or {}), delay_s)

    @staticmethod
    def ok(
        content: str | None = "hello",
        *,
        refusal: str | None = None,
        finish_reason: str = "stop",
        headers: dict[str, str] | None = None,
        delay_s: float = 0.0,
    ) -> Reply:
        body = completion(content, refusal=refusal, finish_reason=finish_reason)
        return Reply(200, body, dict(headers or {}), delay_s)

    @staticmethod
    def error(
        status: int,
        message: str,
        *,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        delay_s: float = 0.0,
    ) -> Reply:
        return Reply(status, error_body(message, code), dict(headers or {}), delay_s)

    def _respond(self, request: Recorded) -> Reply:
        with self._lock:
            self.requests.append(request)
            scripted = self.script[min(len(self.requests), len(self.script)) - 1]
        if self.responder is None:
            return scripted
        # Outside the lock: a responder may be slow on purpose, and requests must stay concurrent.
        reply = self.responder(request)
        return self.ok(reply) if isinstance(reply, str) else reply


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        try:
            body: Any = json.loads(raw)
        except ValueError:
            body = raw
        headers = {k.lower(): v for k, v in self.headers.items()}
        reply = self.server.chat._respond(Recorded(self.path, headers, body))
        time.sleep(reply.delay_s)
        payload = reply.body if isinstance(reply.body, bytes) else json.dumps(reply.body).encode()
        try:
            self.send_response(reply.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(payload)
        except OSError:
            pass  # the client gave up on a slow reply, as timeout tests intend

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # The default backlog of 5 drops SYNs under thread-pool tests, costing a 1 s retransmit.
    request_queue_size = 64
    chat: ChatServer


@pytest.fixture
def local_no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    # A proxy from the developer's environment must not intercept 127.0.0.1.
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


@pytest.fixture
def chat_server(local_no_proxy: None) -> Iterator[ChatServer]:
    chat = ChatServer()
    httpd = _Server(("127.0.0.1", 0), _Handler)
    httpd.chat = chat
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    chat.base_url = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    yield chat
    httpd.shutdown()
    httpd.server_close()
