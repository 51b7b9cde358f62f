"""Stage `unic.images`: Stable Diffusion text-to-image, `per_prompt` images per kept prompt (Uni-C Sec. IV-A).

Each image has its own seed, derived from the run seed and the image id and recorded in the
manifest, so shards, batch sizes and resumed runs all give the same pixels. An image that comes
out non-finite (fp16 overflow) or blank is rejected with the reason, not kept.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from vidprior.config import Params
from vidprior.io.checkpoint import clear_partials
from vidprior.io.manifest import write_manifest, write_rejects
from vidprior.io.media import file_sha256, write_image
from vidprior.io.shards import Shard
from vidprior.seeding import generators, item_seed
from vidprior.unic.generation import (
    fingerprint,
    ok,
    quiet_library_logs,
    rejected,
    run_batches,
    select_shard,
    split_records,
)
from vidprior.unic.stage_inputs import read_input_manifest

STAGE = "unic.images"
MEDIA_DIR = "images"


def image_items(prompts: pd.DataFrame, per_prompt: int, run_seed: int) -> pd.DataFrame:
    """One row per image to generate: id `<prompt id>-<k>`, its prompt and its seed."""
    rows = [
        {
            "id": f"{prompt_id}-{k}",
            "prompt_id": prompt_id,
            "prompt": prompt,
            "image_index": k,
            "seed": item_seed(run_seed, "image", f"{prompt_id}-{k}"),
        }
        for prompt_id, prompt in zip(prompts["id"], prompts["prompt"], strict=True)
        for k in range(per_prompt)
    ]
    return pd.DataFrame(rows, columns=["id", "prompt_id", "prompt", "image_index", "seed"])


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Floats in [0, 1] (clipped) to uint8: how every generated image and video frame is stored."""
    return (np.clip(images, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def run(
    params: Params, inputs: Sequence[Path | str] | None, output_dir: Path, shard: Shard | None = None
) -> dict[str, float]:
    """inputs: [prompts stage output dir]. Writes images/<id>.png, manifest.parquet, rejects.parquet."""
    cfg = params.unic.images
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    prompts = read_input_manifest(inputs, 0, "prompts", ["prompt"])

    blank = prompts["prompt"].fillna("").str.strip() == ""
    upstream_rejects = pd.DataFrame(
        {"id": prompts.loc[blank, "id"], "stage": STAGE, "reason": "empty_prompt", "detail": "blank prompt"}
    )
    items = select_shard(image_items(prompts[~blank], cfg.per_prompt, params.seed), shard)
    if shard is not None:
        upstream_rejects = select_shard(upstream_rejects, shard)

    model_id = f"sd15:{params.models.sd15.model_id}"
    pipeline = None
    quiet_library_logs()

    def process(batch: pd.DataFrame) -> list[dict]:
        nonlocal pipeline
        if pipeline is None:
            from vidprior.models import build_sd15

            pipeline = build_sd15(params.models.sd15).pipeline()
            pipeline.set_progress_bar_config(disable=True)
        result = pipeline(
            prompt=batch["prompt"].tolist(),
            generator=generators(batch["seed"].tolist()),
            num_inference_steps=cfg.steps,
            guidance_scale=cfg.guidance_scale,
            height=cfg.height,
            width=cfg.width,
            output_type="np",
        )
        records = []
        for row, image in zip(batch.itertuples(), result.images, strict=True):
            if not np.isfinite(image).all():
                records.append(rejected(row.id, "non_finite_image", "the decoder produced NaN/inf pixels"))
                continue
            relative = f"{MEDIA_DIR}/{row.id}.png"
            path = write_image(output_dir / relative, to_uint8(image))
            records.append(ok(row.id, path=relative, sha256=file_sha256(path)))
        return records

    result = run_batches(
        items,
        output_dir=output_dir,
        name="images",
        config_fingerprint=fingerprint(model_id, cfg.model_dump(mode="json")),
        batch_size=cfg.batch_size,
        process=process,
    )
    kept, rejects = split_records(result.records, STAGE)
    manifest = (
        items.merge(kept, on="id", how="inner") if len(kept) else items.iloc[:0].assign(path="", sha256="")
    )
    manifest = manifest.assign(
        model_id=model_id,
        height=cfg.height,
        width=cfg.width,
        steps=cfg.steps,
        guidance_scale=cfg.guidance_scale,
    ).sort_values("id", kind="stable")
    all_rejects = pd.concat(
        [r for r in (upstream_rejects, rejects) if len(r)] or [rejects], ignore_index=True
    )
    if len(manifest) + len(rejects) != len(items):
        raise AssertionError(
            f"{STAGE}: {len(manifest)} kept + {len(rejects)} rejected != {len(items)} images"
        )

    write_manifest(manifest, output_dir)
    write_rejects(all_rejects, output_dir)
    clear_partials(output_dir)
    return {
        "prompts_read": len(prompts),
        "images_planned": len(items),
        "images_kept": len(manifest),
        "images_rejected": len(rejects),
        "prompts_rejected": len(upstream_rejects),
        "resumed_batches": result.reused_batches,
        "stage_seconds": round(time.perf_counter() - started, 4),
    }
