"""The vision-LLM judge against a real local Chat Completions server (the `chat_server` fixture)."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
import pytest

from vidprior.config import JudgeEndpointParams
from vidprior.unic import judge_llm
from vidprior.unic.judge_llm import CacheKey, JudgeCache, JudgeConfigError, LLMJudge, make_client
from vidprior.unic.judge_types import CRITERIA, TEMPORAL_CRITERIA, JudgeItem, Verdict

if TYPE_CHECKING:
    from conftest import ChatServer, Recorded

KEY_ENV = "VIDPRIOR_TEST_JUDGE_KEY"
SECRET = "sk-judge-test-7f3a9c0e55SECRET"
MODEL = "test-vision-model"
KEYS = list(CRITERIA)
IMAGE_KEYS = [k for k in CRITERIA if k not in TEMPORAL_CRITERIA]
# Distinct solid colours, so the decoded images tell which frame arrived where.
COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]


@pytest.fixture(autouse=True)
def _key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, SECRET)


def frames(n: int = 4) -> list[np.ndarray]:
    return [np.full((32, 48, 3), COLOURS[i % len(COLOURS)], np.uint8) for i in range(n)]


def item(i: int = 0, *, prompt: str | None = None, n_frames: int = 4) -> JudgeItem:
    return JudgeItem(
        id=f"v{i}",
        prompt=prompt or f"a dog number {i} runs across a meadow",
        frames=frames(n_frames),
        content_hash=hashlib.sha256(f"video-{i}".encode()).hexdigest(),
    )


def answer(
    keys: list[str] = KEYS, *, fail: tuple[str, ...] = (), explanation: str | None = "looks fine"
) -> str:
    body: dict[str, Any] = {k: k not in fail for k in keys}
    if explanation is not None:
        body["explanation"] = explanation
    return json.dumps(body)


def endpoint(server: ChatServer, **update: Any) -> JudgeEndpointParams:
    base = {
        "base_url": server.base_url,
        "model": MODEL,
        "api_key_env": KEY_ENV,
        "max_workers": 4,
        "timeout_s": 5.0,
        "max_retries": 3,
    }
    return JudgeEndpointParams(**{**base, **update})


class Judges:
    """Builds judges on one cache dir with a recorded no-op sleep, so backoff costs no time."""

    def __init__(self, server: ChatServer, cache_dir: Path) -> None:
        self.server = server
        self.cache_dir = cache_dir
        self.sleeps: list[float] = []

    def __call__(self, image_only: bool = False, **update: Any) -> LLMJudge:
        params = endpoint(self.server, **update)
        client = make_client(params, sleep=self.sleeps.append)
        return LLMJudge(params, self.cache_dir, image_only=image_only, client=client)


@pytest.fixture
def judges(chat_server: ChatServer, tmp_path: Path) -> Judges:
    return Judges(chat_server, tmp_path / "cache")


def user_parts(request: Recorded) -> list[dict[str, Any]]:
    return request.body["messages"][-1]["content"]


def system_text(request: Recorded) -> str:
    return request.body["messages"][0]["content"]


def number_of(request: Recorded) -> int:
    """The i of the item the request is about (its prompt says "number i")."""
    return int(user_parts(request)[0]["text"].split("number ")[1].split()[0])


def decoded_colours(request: Recorded) -> list[tuple[int, ...]]:
    colours = []
    for part in user_parts(request):
        if part["type"] != "image_url":
            continue
        url = part["image_url"]["url"]
        assert url.startswith("data:image/jpeg;base64,")
        data = np.frombuffer(base64.b64decode(url.split(",", 1)[1]), np.uint8)
        bgr = cv2.imdecode(data, cv2.IMREAD_COLOR)
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        colours.append(tuple(int(round(c / 255) * 255) for c in rgb.reshape(-1, 3).mean(axis=0)))
    return colours


def all_cache_bytes(cache_dir: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(cache_dir.rglob("*")) if p.is_file())


# --------------------------------------------------------------------------- answers


@pytest.mark.parametrize("fail", [(), ("c4_motion",), ("c1_object_visible", "c5_not_camera_only")])
def test_good_answer_labels_the_item(chat_server: ChatServer, judges: Judges, fail: tuple[str, ...]) -> None:
    chat_server.script = [chat_server.ok(answer(fail=fail, explanation="the dog runs"))]
    with judges() as judge:
        verdict = judge.judge(item())
    assert verdict.labelled and verdict.reason == ""
    assert verdict.criteria == {k: k not in fail for k in KEYS}
    assert list(verdict.criteria) == KEYS
    assert verdict.positive is (not fail)
    assert verdict.failed_criteria == [k for k in KEYS if k in fail]
    assert verdict.detail == "the dog runs"
    assert json.loads(verdict.raw)["explanation"] == "the dog runs"
    assert verdict.judge == MODEL and verdict.id == "v0" and not verdict.cached
    assert judges.sleeps == []


def test_fenced_answer_without_explanation(chat_server: ChatServer, judges: Judges) -> None:
    text = f"Here is my verdict:\n```json\n{answer(explanation=None)}\n```"
    chat_server.script = [chat_server.ok(text)]
    verdict = judges().judge(item())
    assert verdict.positive is True and verdict.detail == "" and verdict.raw == text


@pytest.mark.parametrize(
    ("text", "detail"),
    [
        ("The video shows a dog running; all criteria pass.", "expected a JSON object"),
        ('{"c1_object_visible": true, "c2_not', "expected a JSON object"),
        (json.dumps({k: True for k in KEYS[:-1]}), "missing keys: c5_not_camera_only"),
        (json.dumps({**{k: True for k in KEYS}, "c6_bonus": True}), "unexpected keys: c6_bonus"),
        (json.dumps({**{k: True for k in KEYS}, "c4_motion": "yes"}), "not boolean: c4_motion='yes'"),
        (json.dumps({**{k: True for k in KEYS}, "c3_consistent": 1}), "not boolean: c3_consistent=1"),
        (json.dumps({**{k: True for k in KEYS}, "c2_not_distorted": None}), "not boolean"),
        (json.dumps([True] * 5), "expected a JSON object"),
    ],
    ids=["prose", "truncated", "missing", "extra", "string", "int", "null", "list"],
)
def test_malformed_answer_is_unlabelled_with_raw(
    chat_server: ChatServer, judges: Judges, text: str, detail: str
) -> None:
    chat_server.script = [chat_server.ok(text)]
    verdict = judges().judge(item())
    assert verdict.criteria is None and verdict.positive is None and verdict.failed_criteria == []
    assert verdict.reason == "malformed_answer"
    assert detail in verdict.detail
    assert verdict.raw == text
    assert len(chat_server.requests) == 1  # a bad answer is not retried, and never guessed


def test_cut_off_answer_says_so(chat_server: ChatServer, judges: Judges) -> None:
    chat_server.script = [chat_server.ok('{"c1_object_visible": true, "c2', finish_reason="length")]
    verdict = judges(max_tokens=16).judge(item())
    assert verdict.reason == "malformed_answer" and "max_tokens=16" in verdict.detail


@pytest.mark.parametrize(
    ("reply", "detail"),
    [
        (lambda s: s.ok(None, refusal="I can't assist with that."), "I can't assist with that."),
        (lambda s: s.ok(answer(), refusal="I can't assist with that."), "I can't assist with that."),
        (lambda s: s.ok("", finish_reason="content_filter"), "content_filter"),
        (
            lambda s: s.error(400, "image rejected by the safety system", code="content_policy_violation"),
            "400",
        ),
        (lambda s: s.error(400, "The response was filtered", code="content_filter"), "filtered"),
    ],
    ids=["refusal", "refusal-with-content", "finish-content-filter", "400-policy", "400-azure-filter"],
)
def test_refusal_is_unlabelled(chat_server: ChatServer, judges: Judges, reply: Any, detail: str) -> None:
    chat_server.script = [reply(chat_server)]
    verdict = judges().judge(item())
    assert verdict.criteria is None and verdict.reason == "refused"
    assert detail in verdict.detail
    assert len(chat_server.requests) == 1


# --------------------------------------------------------------------------- transport


def test_429_then_success_honours_retry_after(chat_server: ChatServer, judges: Judges) -> None:
    chat_server.script = [
        chat_server.error(429, "Rate limit reached", headers={"Retry-After": "3"}),
        chat_server.ok(answer()),
    ]
    verdict = judges().judge(item())
    assert verdict.positive is True
    assert len(chat_server.requests) == 2
    assert judges.sleeps == [3.0]


def test_timeout_then_success(chat_server: ChatServer, judges: Judges) -> None:
    chat_server.script = [chat_server.ok(answer(), delay_s=0.6), chat_server.ok(answer(fail=("c4_motion",)))]
    verdict = judges(timeout_s=0.2).judge(item())
    assert verdict.criteria == {k: k != "c4_motion" for k in KEYS}
    assert len(chat_server.requests) == 2 and len(judges.sleeps) == 1


def test_500_until_retries_run_out_is_endpoint_error(chat_server: ChatServer, judges: Judges) -> None:
    chat_server.script = [chat_server.error(500, "The server had an error")]
    verdict = judges(max_retries=2).judge(item())
    assert verdict.criteria is None and verdict.reason == "endpoint_error"
    assert "3 attempts" in verdict.detail and "HTTP 500" in verdict.detail
    assert verdict.raw == ""
    assert len(chat_server.requests) == 3 and len(judges.sleeps) == 2


def test_200_without_choices_is_endpoint_error(chat_server: ChatServer, judges: Judges) -> None:
    chat_server.script = [chat_server.reply(200, {"error": {"message": "upstream failed"}})]
    verdict = judges().judge(item())
    assert verdict.reason == "endpoint_error" and "no usable choice" in verdict.detail


@pytest.mark.parametrize("status", [401, 403, 404, 400])
def test_request_rejected_as_such_aborts_the_stage(
    chat_server: ChatServer, judges: Judges, status: int, caplog: pytest.LogCaptureFixture
) -> None:
    chat_server.script = [chat_server.error(status, f"Incorrect API key provided: {SECRET}")]
    items = [item(i) for i in range(12)]
    with caplog.at_level(logging.DEBUG), pytest.raises(JudgeConfigError) as err:
        judges(max_workers=1).judge_many(items)
    message = str(err.value)
    assert f"HTTP {status}" in message
    assert chat_server.base_url in message and KEY_ENV in message and "(currently set)" in message
    assert SECRET not in message and SECRET not in repr(err.value) and SECRET not in caplog.text
    # Queued items are dropped rather than each collecting the same error; none is retried.
    assert len(chat_server.requests) == 1
    assert judges.sleeps == []


def test_config_error_says_when_the_key_is_missing(
    chat_server: ChatServer, judges: Judges, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(KEY_ENV)
    chat_server.script = [chat_server.error(401, "You didn't provide an API key.")]
    with pytest.raises(JudgeConfigError, match=rf"\${KEY_ENV} \(currently not set\)"):
        judges().judge(item())
    assert "authorization" not in chat_server.requests[0].headers


def test_verdicts_finished_before_an_abort_stay_cached(chat_server: ChatServer, judges: Judges) -> None:
    chat_server.script = [
        chat_server.ok(answer()),
        chat_server.ok(answer()),
        chat_server.error(401, "bad key"),
    ]
    items = [item(i) for i in range(5)]
    with pytest.raises(JudgeConfigError):
        judges(max_workers=1).judge_many(items)
    chat_server.script = [chat_server.ok(answer())]
    before = len(chat_server.requests)
    verdicts = judges(max_workers=1).judge_many(items)
    assert [v.cached for v in verdicts] == [True, True, False, False, False]
    assert len(chat_server.requests) - before == 3


# --------------------------------------------------------------------------- request content


def test_request_carries_criteria_verbatim_and_four_frames_in_order(
    chat_server: ChatServer, judges: Judges
) -> None:
    chat_server.script = [chat_server.ok(answer())]
    judges(max_tokens=123).judge(item(prompt="a red kite flying over the beach"))
    (request,) = chat_server.requests
    assert request.path == "/v1/chat/completions"
    body = request.body
    assert body["model"] == MODEL and body["temperature"] == 0.0 and body["max_tokens"] == 123
    system = system_text(request)
    for key, text in CRITERIA.items():
        assert f"{key}: {text}" in system
    parts = user_parts(request)
    assert parts[0] == {"type": "text", "text": "Prompt: a red kite flying over the beach"}
    labels = [p["text"] for p in parts[1:] if p["type"] == "text"]
    kinds = [p["type"] for p in parts[1:]]
    assert labels == ["frame 1", "frame 2", "frame 3", "frame 4"]
    assert kinds == ["text", "image_url"] * 4
    assert decoded_colours(request) == COLOURS


def test_image_only_mode_sends_one_image_and_asks_c1_c2(chat_server: ChatServer, judges: Judges) -> None:
    chat_server.script = [chat_server.ok(answer(IMAGE_KEYS, fail=("c2_not_distorted",)))]
    with judges(image_only=True) as judge:
        verdict = judge.judge(item(n_frames=1))
    assert verdict.criteria == {"c1_object_visible": True, "c2_not_distorted": False}
    assert verdict.failed_criteria == ["c2_not_distorted"]
    (request,) = chat_server.requests
    assert decoded_colours(request) == COLOURS[:1]
    assert [p["text"] for p in user_parts(request) if p["type"] == "text"][1:] == ["image"]
    system = system_text(request)
    for key in IMAGE_KEYS:
        assert f"{key}: {CRITERIA[key]}" in system
    for key in TEMPORAL_CRITERIA:
        assert key not in system and CRITERIA[key] not in system
    assert "frame" not in system


def test_image_only_mode_rejects_temporal_keys(chat_server: ChatServer, judges: Judges) -> None:
    chat_server.script = [chat_server.ok(answer())]
    verdict = judges(image_only=True).judge(item(n_frames=1))
    assert verdict.reason == "malformed_answer" and "unexpected keys: c3_consistent" in verdict.detail


def test_bad_frames_are_a_caller_error(chat_server: ChatServer, judges: Judges) -> None:
    with pytest.raises(ValueError, match="exactly one image"):
        judges(image_only=True).judge(item(n_frames=4))
    bad = replace(item(), frames=[np.zeros((8, 8), np.float32)])
    with pytest.raises(ValueError, match="uint8"):
        judges().judge(bad)
    assert chat_server.requests == []


def test_client_for_another_model_is_refused(chat_server: ChatServer, tmp_path: Path) -> None:
    client = make_client(endpoint(chat_server, model="other"))
    with pytest.raises(ValueError, match="other"):
        LLMJudge(endpoint(chat_server), tmp_path, client=client)


# --------------------------------------------------------------------------- many items


def test_judge_many_keeps_order_and_bounds_concurrency(chat_server: ChatServer, judges: Judges) -> None:
    lock = threading.Lock()
    active = peak = 0

    def respond(request: Recorded) -> str:
        nonlocal active, peak
        with lock:
            active += 1
            peak = max(peak, active)
        number = number_of(request)
        time.sleep(0.002 * (7 - number % 7))  # later items often finish first
        with lock:
            active -= 1
        return answer(fail=("c4_motion",) if number % 3 == 0 else ())

    chat_server.responder = respond
    items = [item(i) for i in range(20)]
    progress: list[int] = []
    verdicts = judges(max_workers=3).judge_many(items, progress=progress.append)
    assert [v.id for v in verdicts] == [it.id for it in items]
    assert [v.positive for v in verdicts] == [i % 3 != 0 for i in range(20)]
    assert len(chat_server.requests) == 20
    assert 1 < peak <= 3
    assert sum(progress) == 20


def test_same_key_twice_in_a_batch_is_asked_once(chat_server: ChatServer, judges: Judges) -> None:
    chat_server.script = [chat_server.ok(answer())]
    twin = replace(item(0), id="twin")
    verdicts = judges().judge_many([item(0), twin, item(1)])
    assert [v.id for v in verdicts] == ["v0", "twin", "v1"]
    assert all(v.positive for v in verdicts)
    assert len(chat_server.requests) == 2


def test_judge_many_empty(chat_server: ChatServer, judges: Judges) -> None:
    assert judges().judge_many([]) == []
    assert chat_server.requests == []


# --------------------------------------------------------------------------- cache


def _uncached(verdicts: list[Verdict]) -> list[Verdict]:
    return [replace(v, cached=False) for v in verdicts]


def test_rerun_is_served_from_the_cache(chat_server: ChatServer, judges: Judges) -> None:
    chat_server.responder = lambda r: answer(fail=("c5_not_camera_only",) if number_of(r) == 1 else ())
    items = [item(i) for i in range(4)]
    first = judges().judge_many(items)
    assert len(chat_server.requests) == 4 and not any(v.cached for v in first)
    files = sorted(judges.cache_dir.rglob("*.json"))
    assert len(files) == 4
    assert all(len(path.stem) == 64 and int(path.stem, 16) >= 0 for path in files)

    progress: list[int] = []
    second = judges().judge_many(items, progress=progress.append)
    assert len(chat_server.requests) == 4  # zero new requests
    assert all(v.cached for v in second)
    assert _uncached(second) == first
    assert sum(progress) == 4


def test_cache_file_is_named_by_the_key_and_holds_the_answer(chat_server: ChatServer, judges: Judges) -> None:
    chat_server.script = [chat_server.ok(answer(explanation="dog runs"))]
    it = item()
    judges().judge(it)
    key = CacheKey.of(it, MODEL, "video")
    assert key.prompt_version == judge_llm.PROMPT_VERSION and key.content_hash == it.content_hash
    path = JudgeCache(judges.cache_dir).path(key)
    assert path.name == f"{key.digest()}.json"
    record = json.loads(path.read_text())
    assert record["key"]["model"] == MODEL and record["key"]["mode"] == "video"
    assert record["criteria"] == dict.fromkeys(KEYS, True)
    assert json.loads(record["raw"])["explanation"] == "dog runs"
    assert not list(judges.cache_dir.rglob("*.tmp"))


@pytest.mark.parametrize(
    "change",
    ["model", "prompt_version", "image_only", "prompt", "frames"],
)
def test_cache_misses_when_the_question_changes(
    chat_server: ChatServer, judges: Judges, monkeypatch: pytest.MonkeyPatch, change: str
) -> None:
    chat_server.responder = lambda r: answer(KEYS if "c3_consistent" in system_text(r) else IMAGE_KEYS)
    base = item(n_frames=1) if change == "image_only" else item()
    judges().judge(base)
    assert len(chat_server.requests) == 1
    kwargs: dict[str, Any] = {}
    other = base
    if change == "model":
        kwargs["model"] = "another-model"
    elif change == "prompt_version":
        monkeypatch.setattr(judge_llm, "PROMPT_VERSION", "unic-judge-test-bumped")
    elif change == "image_only":
        kwargs["image_only"] = True
    elif change == "prompt":
        other = replace(base, prompt="a cat sleeps on a sofa")
    else:
        other = replace(base, frames=frames(6))
    verdict = judges(**kwargs).judge(other)
    assert not verdict.cached and verdict.labelled
    assert len(chat_server.requests) == 2
    if change == "model":
        assert chat_server.requests[-1].body["model"] == "another-model" and verdict.judge == "another-model"
    # The original question still hits its own entry.
    monkeypatch.undo()
    assert judges().judge(base).cached


def test_unlabelled_verdicts_are_not_cached(chat_server: ChatServer, judges: Judges) -> None:
    chat_server.script = [chat_server.ok("no idea")]
    assert judges().judge(item()).reason == "malformed_answer"
    assert not list(judges.cache_dir.rglob("*.json"))
    chat_server.script = [chat_server.ok(answer())]
    verdict = judges().judge(item())
    assert verdict.positive is True and not verdict.cached
    assert len(chat_server.requests) == 2


@pytest.mark.parametrize(
    "corrupt",
    [
        b"",
        b'{"key": {"content_hash": "',
        b"[1, 2, 3]",
        b'{"key": {}, "criteria": {}, "raw": ""}',
        "valid-json-wrong-criteria",
    ],
    ids=["empty", "torn", "list", "wrong-key", "wrong-criteria"],
)
def test_corrupt_cache_file_is_recomputed(
    chat_server: ChatServer, judges: Judges, caplog: pytest.LogCaptureFixture, corrupt: bytes | str
) -> None:
    chat_server.script = [chat_server.ok(answer())]
    it = item()
    judges().judge(it)
    path = JudgeCache(judges.cache_dir).path(CacheKey.of(it, MODEL, "video"))
    if isinstance(corrupt, str):
        record = json.loads(path.read_text())
        record["criteria"]["c4_motion"] = "yes"
        corrupt = json.dumps(record).encode()
    path.write_bytes(corrupt)
    with caplog.at_level(logging.WARNING):
        verdict = judges().judge(it)
    assert verdict.positive is True and not verdict.cached
    assert len(chat_server.requests) == 2
    assert "ignoring unreadable judge cache file" in caplog.text
    # The recomputed answer replaced the bad file, so the next run hits again.
    assert judges().judge(it).cached


# --------------------------------------------------------------------------- the key


def test_key_is_sent_but_never_logged_returned_or_cached(
    chat_server: ChatServer, judges: Judges, caplog: pytest.LogCaptureFixture
) -> None:
    # The server echoes the key everywhere it can: in answers, refusals, errors and a malformed answer.
    echoes = {
        0: chat_server.ok(answer(explanation=f"your key is {SECRET}")),
        1: chat_server.ok(f"not json, key {SECRET}"),
        2: chat_server.ok(None, refusal=f"refusing key {SECRET}"),
        3: chat_server.error(503, f"upstream rejected key {SECRET}"),
        4: chat_server.ok(json.dumps({**json.loads(answer()), "c4_motion": SECRET})),
        5: chat_server.error(400, f"unsafe image for key {SECRET}", code="content_policy_violation"),
    }

    chat_server.responder = lambda r: echoes[number_of(r)]
    items = [item(i) for i in range(len(echoes))]
    with caplog.at_level(logging.DEBUG):
        verdicts = judges(max_retries=1).judge_many(items)
        again = judges(max_retries=1).judge_many(items)
    assert [v.reason for v in verdicts] == [
        "",
        "malformed_answer",
        "refused",
        "endpoint_error",
        "malformed_answer",
        "refused",
    ]
    assert again[0].cached
    assert all(r.headers["authorization"] == f"Bearer {SECRET}" for r in chat_server.requests)
    assert SECRET not in caplog.text
    for verdict in verdicts + again:
        assert SECRET not in repr(verdict)
    cache = all_cache_bytes(judges.cache_dir)
    assert cache and SECRET.encode() not in cache
    assert "***" in verdicts[0].detail  # redacted, not dropped
