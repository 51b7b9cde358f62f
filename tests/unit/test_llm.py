"""ChatClient against a real local HTTP server that speaks the OpenAI chat-completions protocol."""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import pytest

from vidprior.llm import (
    ChatClient,
    EndpointConfig,
    EndpointRejected,
    LLMError,
    MalformedAnswer,
    parse_json_answer,
)

if TYPE_CHECKING:
    from conftest import ChatServer, Reply

KEY_ENV = "VIDPRIOR_TEST_LLM_KEY"
SECRET = "sk-test-0123456789abcdefSECRET"


@pytest.fixture(autouse=True)
def _clean_env(local_no_proxy: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)


def make_client(base_url: str, sleeps: list[float], **overrides: Any) -> ChatClient:
    config = EndpointConfig(base_url=base_url, model="test-model", api_key_env=KEY_ENV, **overrides)
    return ChatClient(config, sleep=sleeps.append)


USER = [{"role": "user", "content": "Does this prompt describe motion?"}]


def test_normal_answer(chat_server: ChatServer) -> None:
    chat_server.script = [chat_server.ok("yes, it does")]
    sleeps: list[float] = []
    with make_client(chat_server.base_url, sleeps) as client:
        answer = client.complete(USER)
    assert answer.text == "yes, it does"
    assert answer.finish_reason == "stop"
    assert answer.refusal is None
    assert answer.raw["object"] == "chat.completion"
    assert answer.raw["usage"]["total_tokens"] == 6
    assert sleeps == []


def test_refusal_and_null_content(chat_server: ChatServer) -> None:
    chat_server.script = [chat_server.ok(None, refusal="I can't help with that.")]
    answer = make_client(chat_server.base_url, []).complete(USER)
    assert answer.text == ""
    assert answer.refusal == "I can't help with that."


@pytest.mark.parametrize("suffix", ["", "/"])
def test_request_carries_model_messages_and_options(chat_server: ChatServer, suffix: str) -> None:
    client = make_client(chat_server.base_url + suffix, [])
    client.complete(USER, temperature=0.7, max_tokens=32, response_format={"type": "json_object"})
    client.complete(USER)
    first, second = chat_server.requests
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


def test_authorization_header_when_key_set(chat_server: ChatServer, monkeypatch: pytest.MonkeyPatch) -> None:
    client = make_client(chat_server.base_url, [])
    monkeypatch.setenv(KEY_ENV, SECRET)
    client.complete(USER)
    assert chat_server.requests[-1].headers["authorization"] == f"Bearer {SECRET}"


@pytest.mark.parametrize("value", [None, ""])
def test_no_authorization_header_without_key(
    chat_server: ChatServer, monkeypatch: pytest.MonkeyPatch, value: str | None
) -> None:
    if value is not None:
        monkeypatch.setenv(KEY_ENV, value)
    make_client(chat_server.base_url, []).complete(USER)
    assert "authorization" not in chat_server.requests[-1].headers


def test_429_is_retried_honouring_capped_retry_after(chat_server: ChatServer) -> None:
    chat_server.script = [
        chat_server.error(429, "Rate limit reached", headers={"Retry-After": "2"}),
        chat_server.error(429, "Rate limit reached", headers={"Retry-After": "100"}),
        chat_server.ok("finally"),
    ]
    sleeps: list[float] = []
    answer = make_client(chat_server.base_url, sleeps, max_backoff_s=5.0).complete(USER)
    assert answer.text == "finally"
    assert len(chat_server.requests) == 3
    assert sleeps == [2.0, 5.0]


def test_500_forever_gives_up_after_max_retries(
    chat_server: ChatServer, caplog: pytest.LogCaptureFixture
) -> None:
    chat_server.script = [chat_server.error(500, "The server had an error")]
    sleeps: list[float] = []
    client = make_client(chat_server.base_url, sleeps, max_retries=4, backoff_s=1.0, max_backoff_s=4.0)
    with caplog.at_level(logging.WARNING, logger="vidprior.llm"), pytest.raises(LLMError) as err:
        client.complete(USER)
    assert len(chat_server.requests) == 5
    message = str(err.value)
    assert "5 attempts" in message
    assert "HTTP 500" in message and "The server had an error" in message
    # Exponential backoff with jitter in [half, full] of each step, capped at max_backoff_s.
    assert len(sleeps) == 4
    for slept, step in zip(sleeps, [1.0, 2.0, 4.0, 4.0], strict=True):
        assert step / 2 <= slept <= step
    assert len(caplog.records) == 4


def test_400_fails_at_once_with_server_message(chat_server: ChatServer) -> None:
    chat_server.script = [chat_server.error(400, "'messages' must not be empty")]
    sleeps: list[float] = []
    with pytest.raises(LLMError) as err:
        make_client(chat_server.base_url, sleeps).complete(USER)
    message = str(err.value)
    assert "400" in message
    assert f"{chat_server.base_url}/chat/completions" in message
    assert "'messages' must not be empty" in message
    assert len(chat_server.requests) == 1
    assert sleeps == []
    # A subclass, so callers can tell "the request itself was refused" from "gave up retrying".
    assert isinstance(err.value, EndpointRejected)
    assert err.value.status == 400 and err.value.code == "invalid_request_error"


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (
            {"error": {"message": "unsafe image", "type": "invalid_request_error", "code": "content_filter"}},
            "content_filter",
        ),
        ({"error": {"message": "no such model", "type": "NotFoundError"}}, "NotFoundError"),
        ({"error": "plain string"}, None),
        ([1, 2], None),
    ],
)
def test_endpoint_rejected_carries_status_and_error_code(
    chat_server: ChatServer, body: Any, code: str | None
) -> None:
    chat_server.script = [chat_server.reply(404, body)]
    with pytest.raises(EndpointRejected) as err:
        make_client(chat_server.base_url, []).complete(USER)
    assert err.value.status == 404 and err.value.code == code


def test_gave_up_is_not_endpoint_rejected(chat_server: ChatServer) -> None:
    chat_server.script = [chat_server.error(500, "down")]
    with pytest.raises(LLMError) as err:
        make_client(chat_server.base_url, [], max_retries=1).complete(USER)
    assert not isinstance(err.value, EndpointRejected)


@pytest.mark.parametrize(
    "reply",
    [
        lambda s: s.error(401, f"Incorrect API key provided: {SECRET}"),
        lambda s: s.error(503, f"upstream rejected key {SECRET}"),
        lambda s: s.reply(200, s.error_body(f"proxy error for key {SECRET}")),
        lambda s: s.reply(200, f"<html>bad gateway {SECRET}</html>".encode()),
    ],
    ids=["401-echo", "503-echo", "200-error-body", "200-not-json"],
)
def test_key_never_appears_in_errors_or_logs(
    chat_server: ChatServer,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    reply: Callable[[ChatServer], Reply],
) -> None:
    monkeypatch.setenv(KEY_ENV, SECRET)
    chat_server.script = [reply(chat_server)]
    client = make_client(chat_server.base_url, [], max_retries=1)
    with caplog.at_level(logging.DEBUG), pytest.raises(LLMError) as err:
        client.complete(USER)
    assert chat_server.requests[0].headers["authorization"] == f"Bearer {SECRET}"
    assert SECRET not in str(err.value) and SECRET not in repr(err.value)
    assert SECRET not in caplog.text


def test_timeout_is_retried(chat_server: ChatServer) -> None:
    chat_server.script = [chat_server.ok(delay_s=0.6), chat_server.ok("after timeout")]
    sleeps: list[float] = []
    answer = make_client(chat_server.base_url, sleeps, timeout_s=0.2).complete(USER)
    assert answer.text == "after timeout"
    assert len(chat_server.requests) == 2
    assert len(sleeps) == 1


def test_connection_error_is_retried_then_reported() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    sleeps: list[float] = []
    with pytest.raises(LLMError, match=r"after 3 attempts.*ConnectionError"):
        make_client(f"http://127.0.0.1:{port}/v1", sleeps, max_retries=2, timeout_s=2.0).complete(USER)
    assert len(sleeps) == 2


def test_shared_client_across_threads(chat_server: ChatServer) -> None:
    client = make_client(chat_server.base_url, [])
    prompts = [[{"role": "user", "content": f"prompt {i}"}] for i in range(24)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(client.complete, prompts))
    client.close()
    assert [a.text for a in answers] == ["hello"] * 24
    assert sorted(r.body["messages"][0]["content"] for r in chat_server.requests) == sorted(
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
