"""Stage `unic.judge`: the five criteria of Uni-C Suppl. VI for every video the flow rule kept.

Backends: `llm` (any OpenAI-compatible vision endpoint, 4 frames sampled at regular intervals
starting with the first; `vidprior.unic.judge_llm`) or `offline` (the embedded default, an
approximation from the flow: `vidprior.unic.offline_judge`). In image-only mode (the paper's
Image-Priors ablation) every SD image is judged alone, with no video and no flow rule.

An item the judge could not label (malformed or refused answer, endpoint failure, unreadable
video) is a reject with the reason, never a guessed label.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd

from vidprior.config import Params
from vidprior.io.checkpoint import clear_partials
from vidprior.io.manifest import write_manifest, write_rejects
from vidprior.io.media import MediaError, file_sha256, read_image, read_video, sample_frame_indices
from vidprior.unic.generation import fingerprint, ok, rejected, run_batches, split_records
from vidprior.unic.judge_types import CRITERIA, JudgeItem, Verdict
from vidprior.unic.stage_inputs import input_dir, read_input_manifest

STAGE = "unic.judge"
BATCH = 64  # items read, judged and checkpointed together; bounds the frames held in memory


def judge_version(params: Params) -> tuple[str, str]:
    """(judge name, prompt/measurement version): recorded per row and part of the checkpoint key."""
    cfg = params.unic.judge
    if cfg.backend == "offline":
        from vidprior.unic.offline_judge import OFFLINE_JUDGE_NAME

        return OFFLINE_JUDGE_NAME, OFFLINE_JUDGE_NAME
    from vidprior.unic.judge_llm import PROMPT_VERSION

    return cfg.endpoint.model, PROMPT_VERSION


def _open_judge(params: Params, stack: contextlib.ExitStack) -> Callable[[list[JudgeItem]], list[Verdict]]:
    cfg = params.unic.judge
    if cfg.backend == "offline":
        from vidprior.unic.offline_judge import OfflineJudge

        flow = params.unic.flow
        judge = OfflineJudge(cfg.offline, flow.backend, (flow.analysis_height, flow.analysis_width))
        return lambda items: [judge.judge(item) for item in items]
    from vidprior.unic.judge_llm import LLMJudge

    return stack.enter_context(
        LLMJudge(cfg.endpoint, Path(cfg.cache_dir), image_only=cfg.image_only)
    ).judge_many


def _load_item(row, root: Path, params: Params) -> JudgeItem | dict:
    """The frames a judge sees, or a reject record when the file cannot be read."""
    cfg = params.unic.judge
    path = root / row.path
    try:
        if cfg.image_only:
            frames = [read_image(path)]
        else:
            video, _ = read_video(path)
            # The LLM sees the paper's 4 sampled frames; the offline judge measures flow on all of them.
            indices = (
                range(len(video))
                if cfg.backend == "offline"
                else sample_frame_indices(len(video), cfg.frames)
            )
            frames = [video[i] for i in indices]
    except MediaError as exc:
        return rejected(row.id, "unreadable_video" if not cfg.image_only else "unreadable_image", str(exc))
    return JudgeItem(id=row.id, prompt=row.prompt, frames=frames, content_hash=file_sha256(path))


RECORD_COLUMNS = ["judge", "positive", "failed_criteria", "criteria_json", "raw_answer", "cached"]


def _record(verdict: Verdict) -> dict:
    if not verdict.labelled:
        return rejected(verdict.id, verdict.reason or "unlabelled", verdict.detail or verdict.raw[:500])
    return ok(
        verdict.id,
        judge=verdict.judge,
        positive=bool(verdict.positive),
        failed_criteria=",".join(verdict.failed_criteria),
        criteria_json=json.dumps(verdict.criteria, sort_keys=True),
        raw_answer=verdict.raw,
        cached=bool(verdict.cached),
    )


def run(params: Params, inputs: Sequence[Path | str] | None, output_dir: Path) -> dict[str, float]:
    """inputs: [images dir] in image-only mode, else [videos dir, flow dir].

    Writes manifest.parquet (one row per labelled item: judge, positive, one column per criterion,
    the raw answer) and rejects.parquet (unlabelled items with the reason)."""
    cfg = params.unic.judge
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    expected = 1 if cfg.image_only else 2
    if inputs is not None and len([i for i in inputs if i is not None]) != expected:
        wanted = "[images dir] (image_only: true)" if cfg.image_only else "[videos dir, flow dir]"
        raise ValueError(f"{STAGE}: expected inputs {wanted}, got {[str(i) for i in inputs]}")
    if cfg.image_only:
        root = input_dir(inputs, 0, "images")
        items = read_input_manifest(inputs, 0, "images", ["prompt", "path"])[["id", "prompt", "path"]]
        skipped = 0
    else:
        root = input_dir(inputs, 0, "videos")
        videos = read_input_manifest(inputs, 0, "videos", ["prompt", "path"])
        flow = read_input_manifest(inputs, 1, "flow", ["flow_pass"])
        measured = videos.merge(flow[["id", "flow_pass"]], on="id", how="inner")
        chosen = measured[measured["flow_pass"]] if cfg.only_flow_passed else measured
        skipped = len(measured) - len(chosen)
        items = chosen[["id", "prompt", "path"]]

    judge = None
    name, version = judge_version(params)

    def process(batch: pd.DataFrame) -> list[dict]:
        nonlocal judge
        loaded = [_load_item(row, root, params) for row in batch.itertuples()]
        records = [x for x in loaded if isinstance(x, dict)]
        ready = [x for x in loaded if isinstance(x, JudgeItem)]
        if ready:
            judge = judge or _open_judge(params, stack)
            records.extend(_record(v) for v in judge(ready))
        return records

    with contextlib.ExitStack() as stack:
        result = run_batches(
            items,
            output_dir=output_dir,
            name="judge",
            config_fingerprint=fingerprint(
                name, version, cfg.model_dump(mode="json"), params.unic.flow.model_dump()
            ),
            batch_size=BATCH,
            process=process,
        )
    kept, rejects = split_records(result.records, STAGE)
    if not len(kept):
        kept = pd.DataFrame(columns=["id", *RECORD_COLUMNS])
    manifest = items[["id", "prompt"]].merge(kept, on="id", how="inner")
    manifest = manifest.astype({"positive": "bool", "cached": "bool"})
    for key in CRITERIA:
        # Nullable: a criterion the judge was not asked (image-only mode) is null, not False.
        manifest[key] = pd.array([json.loads(c).get(key) for c in manifest["criteria_json"]], dtype="boolean")
    manifest = manifest.assign(judge_version=version, image_only=cfg.image_only).sort_values(
        "id", kind="stable"
    )
    if len(manifest) + len(rejects) != len(items):
        raise AssertionError(f"{STAGE}: {len(manifest)} + {len(rejects)} rejected != {len(items)} items")

    write_manifest(manifest, output_dir)
    write_rejects(rejects, output_dir)
    clear_partials(output_dir)

    positives = int(manifest["positive"].sum()) if len(manifest) else 0
    metrics: dict[str, float] = {
        "items_judged": len(items),
        "skipped_flow_negative": skipped,
        "labelled": len(manifest),
        "unlabelled": len(rejects),
        "positives": positives,
        "negatives": len(manifest) - positives,
        "resumed_batches": result.reused_batches,
        "stage_seconds": round(time.perf_counter() - started, 4),
    }
    metrics["cache_hits"] = int(manifest["cached"].sum())
    if len(manifest):
        for key in CRITERIA:
            asked = manifest[key].dropna()
            if len(asked):
                metrics[f"pass_rate_{key}"] = float(asked.mean())
    for reason, count in sorted(Counter(rejects["reason"]).items()):
        metrics[f"rejected_{reason}"] = count
    return metrics
