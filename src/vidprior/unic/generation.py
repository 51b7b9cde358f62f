"""The loop shared by the generation stages (images, videos): shard, batch, checkpoint, account.

Items are processed in id order, in fixed batches; each finished batch's records are checkpointed
(`ChunkStore`), so a killed run resumes at the first unfinished batch and, because every item has
its own seed, produces byte-identical media and the same manifest. A record is either a kept item
(`ok`) or a reject with its reason; together they account for every input item of the shard.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from vidprior.io.checkpoint import ChunkStore, clear_partials, fingerprint
from vidprior.io.manifest import write_manifest, write_rejects
from vidprior.io.shards import Shard

OK = "ok"
__all__ = [
    "OK",
    "BatchResult",
    "finish_stage",
    "fingerprint",
    "kept_table",
    "ok",
    "rejected",
    "run_batches",
    "select_shard",
    "split_records",
]


def ok(item_id: str, **fields: object) -> dict:
    return {"id": item_id, "status": OK, **fields}


def rejected(item_id: str, reason: str, detail: str) -> dict:
    return {"id": item_id, "status": "reject", "reason": reason, "detail": detail}


@dataclass
class BatchResult:
    records: list[dict]
    reused_batches: int
    computed_batches: int


def run_batches(
    items: pd.DataFrame,
    *,
    output_dir: Path,
    name: str,
    config_fingerprint: str,
    batch_size: int,
    process: Callable[[pd.DataFrame], list[dict]],
) -> BatchResult:
    """Run `process` on `items` (sorted by id) batch by batch, resuming finished batches."""
    items = items.sort_values("id", kind="stable").reset_index(drop=True)
    store = ChunkStore(output_dir, name, fingerprint(config_fingerprint, items.to_dict("list")))
    records: list[dict] = []
    for index, start in enumerate(range(0, len(items), batch_size)):
        batch = items.iloc[start : start + batch_size]
        got = store.records(index, lambda batch=batch: process(batch))
        if sorted(r["id"] for r in got) != sorted(batch["id"]):
            raise AssertionError(f"{name}: batch {index} returned records for other ids than it was given")
        records.extend(got)
    return BatchResult(records, store.reused, store.computed)


def split_records(records: list[dict], stage: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(kept rows, rejects) from the records of `run_batches`."""
    kept = [{k: v for k, v in r.items() if k != "status"} for r in records if r["status"] == OK]
    dropped = [r for r in records if r["status"] != OK]
    rejects = pd.DataFrame(
        [{"id": r["id"], "stage": stage, "reason": r["reason"], "detail": r["detail"]} for r in dropped],
        columns=["id", "stage", "reason", "detail"],
    )
    return pd.DataFrame(kept), rejects


def kept_table(records: list[dict], stage: str, columns: Sequence[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(kept rows with `columns`, an empty frame of them when nothing was kept; rejects)."""
    kept, rejects = split_records(records, stage)
    return (kept if len(kept) else pd.DataFrame(columns=list(columns)))[list(columns)], rejects


def finish_stage(
    manifest: pd.DataFrame,
    rejects: pd.DataFrame,
    *,
    stage: str,
    items: int,
    output_dir: Path,
    reused_batches: int,
    started: float,
    noun: str = "clips",
) -> dict[str, float]:
    """Check that kept + rejected == the `items` read, write manifest and rejects, drop the checkpoints;
    the metrics every such stage reports (`<noun>_in`, kept, rejected, rejected per reason, timing)."""
    if len(manifest) + len(rejects) != items:
        raise AssertionError(f"{stage}: {len(manifest)} kept + {len(rejects)} rejected != {items} {noun}")
    write_manifest(manifest.sort_values("id", kind="stable"), output_dir)
    write_rejects(rejects, output_dir)
    clear_partials(output_dir)
    metrics: dict[str, float] = {
        f"{noun}_in": items,
        "kept": len(manifest),
        "rejected": len(rejects),
        "resumed_batches": reused_batches,
        "stage_seconds": round(time.perf_counter() - started, 4),
    }
    metrics.update({f"rejected_{k}": v for k, v in sorted(Counter(rejects["reason"]).items())})
    return metrics


def quiet_library_logs() -> None:
    """Keep generation logs readable: the pipelines warn per batch (e.g. CLIP truncating long
    prompts to 77 tokens, which SD always does) and would bury the stage's own messages."""
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.set_verbosity_error()


def select_shard(items: pd.DataFrame, shard: Shard | None) -> pd.DataFrame:
    return items if shard is None else shard.select(items)
