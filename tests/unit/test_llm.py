"""ChatClient against a real local HTTP server that speaks the OpenAI chat-completions protocol."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from vidprior.llm import ChatClient, EndpointConfig, LLMError, MalformedAnswer, parse_json_answer

KEY_ENV = "VIDPRIOR_TEST_LLM_KEY"
SECRET = "sk-test-0123456789abcdefSECRET"


def completion(content: str | None = "hello", *, refusal: str | None = None) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if refusal is not None:
        message["refusal"] = refusal
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": "test-model",
        "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
    }


def error_body(message: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": "invalid_request_error", "code": None}}


@dataclass
class Reply:
    status: int = 200
    body: Any = field(default_factory=completion)
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0


@dataclass
class Recorded:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


class FakeOpenAI:
    """Serves the scripted replies in order, repeating the last one forever."""

    def __init__(self) -> None:
        self.base_url = ""
        self.script: list[Reply] = [Reply()]
        self.requests: list[Recorded] = []
        self._lock = threading.Lock()

    def record(self, path: str, headers: dict[str, str], body: dict[str, Any]) -> Reply:
        with self._lock:
            self.requests.append(Recorded(path, headers, body))
            return self.script[min(len(self.requests), len(self.script)) - 1]


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        headers = {k.lower(): v for k, v in self.headers.items()}
        reply = self.server.fake.record(self.path, headers, json.loads(raw))  # type: ignore[attr-defined]
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
            pass  # the client gave up on a slow reply, as the timeout test intends

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    # A proxy from the developer's environment must not intercept 127.0.0.1.
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.delenv(KEY_ENV, raising=False)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # The default backlog of 5 drops SYNs under the thread-pool test, costing a 1 s retransmit.
    request_queue_size = 64


@pytest.fixture
def server() -> Iterator[FakeOpenAI]:
    fake = FakeOpenAI()
    httpd = _Server(("127.0.0.1", 0), _Handler)
    httpd.fake = fake  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    fake.base_url = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    yield fake
    httpd.shutdown()
    httpd.server_close()


def make_client(base_url: str, sleeps: list[float], **overrides: Any) -> ChatClient:
    config = EndpointConfig(base_url=base_url, model="test-model", api_key_env=KEY_ENV, **overrides)
    return ChatClient(config, sleep=sleeps.append)


USER = [{"role": "user", "content": "Does this prompt describe motion?"}]


def test_normal_answer(server: FakeOpenAI) -> None:
    server.script = [Reply(body=completion("yes, it does"))]
    sleeps: list[float] = []
    with make_client(server.base_url, sleeps) as client:
        answer = client.complete(USER)
    assert answer.text == "yes, it does"
    assert answer.finish_reason == "stop"
    assert answer.refusal is None
    assert answer.raw["object"] == "chat.completion"
    assert answer.raw["usage"]["total_tokens"] == 6
    assert sleeps == []


def test_refusal_and_null_content(server: FakeOpenAI) -> None:
    server.script = [Reply(body=completion(None, refusal="I can't help with that."))]
    answer = make_client(server.base_url, []).complete(USER)
    assert answer.text == ""
    assert answer.refusal == "I can't help with that."


@pytest.mark.parametrize("suffix", ["", "/"])
def test_request_carries_model_messages_and_options(server: FakeOpenAI, suffix: str) -> None:
    client = make_client(server.base_url + suffix, [])
    client.complete(USER, temperature=0.7, max_tokens=32, response_format={"type": "json_object"})
    client.complete(USER)
    first, second = server.requests
    assert first.path == "/v1/chat/completions"
    assert first.headers["content-type"] == "application/json"
    assert first.body == {
        "model": "test-model",
        "messages": USER,
        "temperature": 0.7,
        "max_tokens": 32,
        "response_format": {"type": "json_object"},
    }
    # Optional fields stay out of the body when unset: some local servers reject unknown nulls.
    assert second.body == {"model": "test-model", "messages": USER, "temperature": 0.0}


def test_authorization_header_when_key_set(server: FakeOpenAI, monkeypatch: pytest.MonkeyPatch) -> None:
    client = make_client(server.base_url, [])
    monkeypatch.setenv(KEY_ENV, SECRET)
    client.complete(USER)
    assert server.requests[-1].headers["authorization"] == f"Bearer {SECRET}"


@pytest.mark.parametrize("value", [None, ""])
def test_no_authorization_header_without_key(
    server: FakeOpenAI, monkeypatch: pytest.MonkeyPatch, value: str | None
) -> None:
    if value is not None:
        monkeypatch.setenv(KEY_ENV, value)
    make_client(server.base_url, []).complete(USER)
    assert "authorization" not in server.requests[-1].headers


def test_429_is_retried_honouring_capped_retry_after(server: FakeOpenAI) -> None:
    server.script = [
        Reply(429, error_body("Rate limit reached"), {"Retry-After": "2"}),
        Reply(429, error_body("Rate limit reached"), {"Retry-After": "100"}),
        Reply(body=completion("finally")),
    ]
    sleeps: list[float] = []
    answer = make_client(server.base_url, sleeps, max_backoff_s=5.0).complete(USER)
    assert answer.text == "finally"
    assert len(server.requests) == 3
    assert sleeps == [2.0, 5.0]


def test_500_forever_gives_up_after_max_retries(server: FakeOpenAI, caplog: pytest.LogCaptureFixture) -> None:
    server.script = [Reply(500, error_body("The server had an error"))]
    sleeps: list[float] = []
    client = make_client(server.base_url, sleeps, max_retries=4, backoff_s=1.0, max_backoff_s=4.0)
    with caplog.at_level(logging.WARNING, logger="vidprior.llm"), pytest.raises(LLMError) as err:
        client.complete(USER)
    assert len(server.requests) == 5
    message = str(err.value)
    assert "5 attempts" in message
    assert "HTTP 500" in message and "The server had an error" in message
    # Exponential backoff with jitter in [half, full] of each step, capped at max_backoff_s.
    assert len(sleeps) == 4
    for slept, step in zip(sleeps, [1.0, 2.0, 4.0, 4.0], strict=True):
        assert step / 2 <= slept <= step
    assert len(caplog.records) == 4


def test_400_fails_at_once_with_server_message(server: FakeOpenAI) -> None:
    server.script = [Reply(400, error_body("'messages' must not be empty"))]
    sleeps: list[float] = []
    with pytest.raises(LLMError) as err:
        make_client(server.base_url, sleeps).complete(USER)
    message = str(err.value)
    assert "400" in message
    assert f"{server.base_url}/chat/completions" in message
    assert "'messages' must not be empty" in message
    assert len(server.requests) == 1
    assert sleeps == []


@pytest.mark.parametrize(
    "reply",
    [
        Reply(401, error_body(f"Incorrect API key provided: {SECRET}")),
        Reply(503, error_body(f"upstream rejected key {SECRET}")),
        Reply(200, error_body(f"proxy error for key {SECRET}")),
        Reply(200, f"<html>bad gateway {SECRET}</html>".encode()),
    ],
    ids=["401-echo", "503-echo", "200-error-body", "200-not-json"],
)
def test_key_never_appears_in_errors_or_logs(
    server: FakeOpenAI, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, reply: Reply
) -> None:
    monkeypatch.setenv(KEY_ENV, SECRET)
    server.script = [reply]
    client = make_client(server.base_url, [], max_retries=1)
    with caplog.at_level(logging.DEBUG), pytest.raises(LLMError) as err:
        client.complete(USER)
    assert server.requests[0].headers["authorization"] == f"Bearer {SECRET}"
    assert SECRET not in str(err.value) and SECRET not in repr(err.value)
    assert SECRET not in caplog.text


def test_timeout_is_retried(server: FakeOpenAI) -> None:
    server.script = [Reply(delay_s=0.6), Reply(body=completion("after timeout"))]
    sleeps: list[float] = []
    answer = make_client(server.base_url, sleeps, timeout_s=0.2).complete(USER)
    assert answer.text == "after timeout"
    assert len(server.requests) == 2
    assert len(sleeps) == 1


def test_connection_error_is_retried_then_reported() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    sleeps: list[float] = []
    with pytest.raises(LLMError, match=r"after 3 attempts.*ConnectionError"):
        make_client(f"http://127.0.0.1:{port}/v1", sleeps, max_retries=2, timeout_s=2.0).complete(USER)
    assert len(sleeps) == 2


def test_shared_client_across_threads(server: FakeOpenAI) -> None:
    client = make_client(server.base_url, [])
    prompts = [[{"role": "user", "content": f"prompt {i}"}] for i in range(24)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(client.complete, prompts))
    client.close()
    assert [a.text for a in answers] == ["hello"] * 24
    assert sorted(r.body["messages"][0]["content"] for r in server.requests) == sorted(
        p[0]["content"] for p in prompts
    )


def test_parse_json_answer_bare() -> None:
    assert parse_json_answer('  {"keep": true, "reason": "a dog runs"}\n') == {
        "keep": True,
        "reason": "a dog runs",
    }


@pytest.mark.parametrize(
    "text",
    [
        '```json\n{"keep": false}\n```',
        'Sure! Here is the verdict:\n\n```JSON\n{"keep": false}\n```\nLet me know if you need more.',
        '```\n{"keep": false}\n```',
    ],
)
def test_parse_json_answer_fenced(text: str) -> None:
    assert parse_json_answer(text) == {"keep": False}


@pytest.mark.parametrize("text", ["I think the prompt has motion.", "[1, 2, 3]", "", '{"keep": tru'])
def test_parse_json_answer_garbage(text: str) -> None:
    with pytest.raises(MalformedAnswer) as err:
        parse_json_answer(text)
    assert isinstance(err.value, LLMError)
    assert repr(text[:20])[1:-1] in str(err.value)


def test_parse_json_answer_excerpt_is_short() -> None:
    with pytest.raises(MalformedAnswer) as err:
        parse_json_answer("no json here " * 200)
    assert len(str(err.value)) < 300
