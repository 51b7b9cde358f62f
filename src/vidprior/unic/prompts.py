"""Stage `unic.prompts`: VidProM-format prompts -> rule filter -> semantic de-duplication ->
optional LLM filter -> prompt manifest (Uni-C Sec. III-C, Suppl. VI).

Order: the cheap rule filter first so near-duplicates of a rejected prompt are not shadowed by it;
de-duplication before the LLM so the (paid, slow) LLM only sees unique prompts, as in the paper.
Embeddings and LLM verdicts are checkpointed per chunk, so an interrupted run resumes where it
stopped and produces the same manifest.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from vidprior.config import Params
from vidprior.io.checkpoint import ChunkStore, clear_partials, fingerprint
from vidprior.io.manifest import write_manifest, write_rejects
from vidprior.models import build_text_embedder
from vidprior.unic import prompt_llm_filter
from vidprior.unic.dedup import greedy_dedup
from vidprior.unic.prompt_rules import MOTION_WORDS, rule_reason
from vidprior.unic.prompt_sources import read_source

STAGE = "unic.prompts"
_SPACES = re.compile(r"\s+")


def _reject(rows: pd.DataFrame, stage: str, reason: str | Sequence[str], detail: str | Sequence[str]):
    out = rows[["id", "prompt", "source", "source_row"]].copy()
    out["stage"], out["reason"], out["detail"] = stage, reason, detail
    return out


def _collect(sources: Sequence[str]) -> tuple[pd.DataFrame, list[pd.DataFrame]]:
    """All input rows with a usable id and text; the rest as rejects."""
    raw = pd.concat([read_source(s) for s in sources], ignore_index=True)
    raw["id"] = raw["uuid"]
    raw["prompt"] = raw["prompt"].map(lambda t: _SPACES.sub(" ", t).strip())
    rejects = []

    no_id = raw["id"] == ""
    rejects.append(_reject(raw[no_id], "sources", "missing_id", "empty 'uuid'"))
    raw = raw[~no_id]

    repeated = raw["id"].duplicated(keep="first")
    first_seen = raw.drop_duplicates("id").set_index("id")
    detail = [
        f"uuid already read from {first_seen.at[i, 'source']} row {first_seen.at[i, 'source_row']}"
        for i in raw.loc[repeated, "id"]
    ]
    rejects.append(_reject(raw[repeated], "sources", "duplicate_id", detail))
    raw = raw[~repeated]

    empty = raw["prompt"] == ""
    rejects.append(_reject(raw[empty], "sources", "empty", "blank prompt"))
    return raw[~empty].reset_index(drop=True), rejects


def _embed(texts: list[str], params: Params, output_dir: Path) -> tuple[np.ndarray, ChunkStore]:
    cfg = params.unic.prompts
    chunk = cfg.dedup.chunk_size
    store = ChunkStore(output_dir, "embeddings", fingerprint(cfg.embedder.model_id, chunk, texts))
    embedder = None
    parts = []
    for index, start in enumerate(range(0, len(texts), chunk)):

        def compute(start=start):
            nonlocal embedder
            embedder = embedder or build_text_embedder(cfg.embedder)
            return embedder.embed(texts[start : start + chunk])

        parts.append(store.array(index, compute))
    return (np.concatenate(parts) if parts else np.zeros((0, 1), np.float32)), store


def run(params: Params, inputs: Sequence[Path | str] | None, output_dir: Path) -> dict[str, float]:
    """Write `manifest.parquet` (kept prompts) and `rejects.parquet` (every other input row)."""
    cfg = params.unic.prompts
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    sources = [str(p) for p in inputs] if inputs else list(cfg.sources)
    started = time.perf_counter()

    prompts, rejects = _collect(sources)
    n_input = len(prompts) + sum(len(r) for r in rejects)

    rules = cfg.rule_filter
    vocabulary = MOTION_WORDS | {w.lower() for w in rules.extra_motion_words}
    verdicts = [
        rule_reason(
            text,
            english_only=rules.english_only,
            min_words=rules.min_words,
            max_words=rules.max_words,
            require_motion=rules.require_motion,
            vocabulary=vocabulary,
        )
        for text in prompts["prompt"]
    ]
    failed = np.array([v is not None for v in verdicts], dtype=bool)
    failed_verdicts = [v for v in verdicts if v is not None]
    rejects.append(
        _reject(
            prompts[failed], "rule_filter", [v[0] for v in failed_verdicts], [v[1] for v in failed_verdicts]
        )
    )
    prompts = prompts[~failed].reset_index(drop=True)

    embed_started = time.perf_counter()
    embeddings, embed_store = _embed(prompts["prompt"].tolist(), params, output_dir)
    embed_seconds = time.perf_counter() - embed_started
    dedup_started = time.perf_counter()
    result = greedy_dedup(embeddings, cfg.dedup.threshold) if len(prompts) else None
    dedup_seconds = time.perf_counter() - dedup_started
    if result is not None:
        dropped = ~result.kept
        dups = _reject(prompts[dropped], "dedup", "duplicate", "")  # detail is filled in below
        dups["duplicate_of"] = prompts["id"].to_numpy()[result.duplicate_of[dropped]]
        dups["similarity"] = result.similarity[dropped].astype(float)
        dups["detail"] = [
            f"cosine {s:.4f} >= {cfg.dedup.threshold} with {d}"
            for s, d in zip(dups["similarity"], dups["duplicate_of"], strict=True)
        ]
        rejects.append(dups)
        prompts = prompts[result.kept].reset_index(drop=True)

    llm_model = "off"
    llm_store = None
    if cfg.llm_filter.enabled and len(prompts):
        llm_model = cfg.llm_filter.model
        prompts, llm_rejects, llm_store = _llm_filter(prompts, params, output_dir)
        rejects.extend(llm_rejects)

    if cfg.max_prompts is not None and len(prompts) > cfg.max_prompts:
        over = prompts.iloc[cfg.max_prompts :]
        rejects.append(_reject(over, "cap", "over_max_prompts", f"max_prompts={cfg.max_prompts}"))
        prompts = prompts.iloc[: cfg.max_prompts]

    manifest = prompts[["id", "prompt", "source", "source_row"]].copy()
    manifest["n_words"] = manifest["prompt"].str.split().str.len().astype("int64")
    manifest["embedder"] = cfg.embedder.model_id
    manifest["dedup_threshold"] = cfg.dedup.threshold
    manifest["llm_filter"] = llm_model
    manifest["llm_prompt_version"] = prompt_llm_filter.PROMPT_VERSION if llm_model != "off" else ""
    all_rejects = (
        pd.concat([r for r in rejects if len(r)], ignore_index=True)
        if any(len(r) for r in rejects)
        else pd.DataFrame()
    )
    for column, dtype in (("duplicate_of", "string"), ("similarity", "float64")):
        if column not in all_rejects.columns:  # same schema whether or not duplicates were found
            all_rejects[column] = pd.Series(dtype=dtype, index=all_rejects.index)
    if len(manifest) + len(all_rejects) != n_input:  # the contract: every input row is accounted for
        raise AssertionError(f"{STAGE}: {len(manifest)} kept + {len(all_rejects)} rejected != {n_input} read")

    write_manifest(manifest, output_dir)
    write_rejects(all_rejects, output_dir)
    clear_partials(output_dir)

    reasons = Counter(all_rejects["reason"]) if len(all_rejects) else Counter()
    metrics: dict[str, float] = {
        "prompts_read": n_input,
        "prompts_kept": len(manifest),
        "prompts_rejected": len(all_rejects),
        "kept_fraction": len(manifest) / n_input if n_input else 0.0,
        "resumed_chunks": embed_store.reused + (llm_store.reused if llm_store else 0),
        "embed_seconds": round(embed_seconds, 4),
        "dedup_seconds": round(dedup_seconds, 4),
        "stage_seconds": round(time.perf_counter() - started, 4),
    }
    metrics.update({f"rejected_{reason}": count for reason, count in sorted(reasons.items())})
    return metrics


def _llm_filter(prompts: pd.DataFrame, params: Params, output_dir: Path):
    cfg = params.unic.prompts
    chunk = cfg.dedup.chunk_size
    texts = prompts["prompt"].tolist()
    store = ChunkStore(
        output_dir,
        "llm_filter",
        fingerprint(
            prompt_llm_filter.PROMPT_VERSION, cfg.llm_filter.model, cfg.llm_filter.base_url, chunk, texts
        ),
    )
    client = prompt_llm_filter.make_client(cfg.llm_filter)
    keep = np.zeros(len(texts), dtype=bool)
    status: list[tuple[str, str]] = [("", "")] * len(texts)
    examined = len(texts)
    for index, start in enumerate(range(0, len(texts), chunk)):
        # Enough prompts kept already: the rest need no paid LLM calls and go to the cap below.
        if cfg.max_prompts is not None and keep.sum() >= cfg.max_prompts:
            examined = start
            break
        verdicts = store.records(
            index,
            lambda start=start: prompt_llm_filter.judge_prompts(
                client, texts[start : start + chunk], cfg.llm_filter.max_workers
            ),
        )
        for offset, (verdict, reason) in enumerate(verdicts):
            row = start + offset
            keep[row] = verdict is True
            if verdict is False:
                status[row] = ("llm_rejected", reason)
            elif verdict is None:
                status[row] = ("llm_unanswered", reason)

    judged = prompts.iloc[:examined]
    rejected_rows = [i for i in range(examined) if not keep[i]]
    rejects = [
        _reject(
            judged.iloc[rejected_rows],
            "llm_filter",
            [status[i][0] for i in rejected_rows],
            [status[i][1] for i in rejected_rows],
        )
    ]
    kept = pd.concat([judged[keep[:examined]], prompts.iloc[examined:]], ignore_index=True)
    return kept, rejects, store
