"""Optional LLM prompt filter (Uni-C Suppl. VI: Qwen-72B removed non-English, unclear and
motionless prompts), through any OpenAI-compatible chat endpoint.

An unanswerable item (transport failure after retries, malformed or refused answer) is never
guessed: it is rejected as `llm_unanswered` with the error. A resumed run reuses checkpointed
verdicts, unanswered ones included; the next complete run (checkpoints are cleared on success)
asks again.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from vidprior.config import LLMFilterParams
from vidprior.llm import ChatClient, EndpointConfig, LLMError, parse_json_answer

PROMPT_VERSION = "prompt-filter-v1"

INSTRUCTIONS = (
    "You screen prompts for a text-to-video dataset. Keep a prompt only if all hold: "
    "(1) it is written in English; (2) it clearly describes a visual scene; "
    "(3) it describes motion of an object, animal or person (camera movement alone does not count). "
    'Answer with JSON only: {"keep": true|false, "reason": "<a few words>"}.'
)

# (keep, reason): keep is None when no usable answer came back.
Verdict = tuple[bool | None, str]


def make_client(params: LLMFilterParams) -> ChatClient:
    return ChatClient(EndpointConfig.from_settings(params))


def judge_one(client: ChatClient, prompt: str) -> Verdict:
    messages = [
        {"role": "system", "content": INSTRUCTIONS},
        {"role": "user", "content": f"Prompt: {prompt}"},
    ]
    try:
        answer = client.complete(messages, temperature=0.0, max_tokens=64)
        if answer.refusal:
            return None, f"refused: {answer.refusal}"
        verdict = parse_json_answer(answer.text)
    except LLMError as exc:
        return None, str(exc)
    keep = verdict.get("keep")
    if not isinstance(keep, bool):
        return None, f"answer has no boolean 'keep': {answer.text[:200]!r}"
    return keep, str(verdict.get("reason", ""))[:200]


def judge_prompts(client: ChatClient, prompts: list[str], max_workers: int) -> list[Verdict]:
    with ThreadPoolExecutor(max_workers=max_workers) as pool:
        return list(pool.map(lambda p: judge_one(client, p), prompts))
