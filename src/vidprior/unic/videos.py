"""Stage `unic.videos`: image-to-video for every SD image (Uni-C Sec. IV-A; PIA: Suppl. X).

`unic.videos.model` selects the labeller: Stable Video Diffusion (the paper's) or PIA on the SD 1.5
base. Every video has its own seed (from the run seed and the image id) and is written as an H.264
mp4; frames, fps, motion bucket and seed are recorded per row. An unreadable image is rejected
with the reason; a video whose frames are not finite is rejected rather than written.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from vidprior.config import GenerateVideosParams, Params
from vidprior.io.checkpoint import clear_partials
from vidprior.io.manifest import write_manifest, write_rejects
from vidprior.io.media import MediaError, file_sha256, read_image, write_video
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
from vidprior.unic.images import to_uint8
from vidprior.unic.stage_inputs import input_dir, read_input_manifest

STAGE = "unic.videos"
MEDIA_DIR = "videos"


class _SVDAnimator:
    def __init__(self, params: Params):
        from vidprior.models import build_svd

        self.pipeline = build_svd(params.models.svd).pipeline()
        self.pipeline.set_progress_bar_config(disable=True)

    def __call__(
        self, images: list[np.ndarray], prompts: list[str], seeds: list[int], cfg
    ) -> list[np.ndarray]:
        from PIL import Image

        # SVD is conditioned on the image only; the prompt has no say in the video (as in the paper).
        result = self.pipeline(
            image=[Image.fromarray(im) for im in images],
            height=cfg.height,
            width=cfg.width,
            num_frames=cfg.frames,
            num_inference_steps=cfg.steps,
            fps=cfg.fps,
            motion_bucket_id=cfg.motion_bucket_id,
            noise_aug_strength=cfg.noise_aug_strength,
            decode_chunk_size=cfg.decode_chunk_size,
            generator=generators(seeds),
            output_type="np",
        )
        return [np.asarray(video) for video in result.frames]


class _PIAAnimator:
    def __init__(self, params: Params):
        from vidprior.models import build_pia, build_sd15

        self.parts = build_pia(params.models.pia, build_sd15(params.models.sd15))

    def __call__(self, images, prompts, seeds, cfg: GenerateVideosParams) -> list[np.ndarray]:
        from vidprior.models.pia import animate

        videos = animate(
            self.parts,
            images,
            prompts,
            seeds,
            frames=cfg.frames,
            steps=cfg.steps,
            guidance_scale=cfg.pia_guidance_scale,
            motion_scale=cfg.pia_motion_scale,
            height=cfg.height,
            width=cfg.width,
        )
        return videos  # uint8 already


def model_id_for(params: Params) -> str:
    cfg = params.unic.videos
    if cfg.model == "svd":
        return f"svd:{params.models.svd.model_id}"
    return f"pia:{params.models.pia.model_id}+sd15:{params.models.sd15.model_id}"


def run(
    params: Params, inputs: Sequence[Path | str] | None, output_dir: Path, shard: Shard | None = None
) -> dict[str, float]:
    """inputs: [images stage output dir]. Writes videos/<id>.mp4, manifest.parquet, rejects.parquet."""
    cfg = params.unic.videos
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    images_dir = input_dir(inputs, 0, "images")
    images = read_input_manifest(inputs, 0, "images", ["prompt_id", "prompt", "path"])

    items = images[["id", "prompt_id", "prompt", "path"]].rename(columns={"path": "image_path"})
    items = items.assign(image_id=items["id"], seed=[item_seed(params.seed, "video", i) for i in items["id"]])
    items = select_shard(items, shard)
    model_id = model_id_for(params)
    animator = None
    quiet_library_logs()

    def process(batch: pd.DataFrame) -> list[dict]:
        nonlocal animator
        records, ready = [], []
        for row in batch.itertuples():
            try:
                ready.append((row, read_image(images_dir / row.image_path)))
            except MediaError as exc:
                records.append(rejected(row.id, "unreadable_image", str(exc)))
        if not ready:
            return records
        if animator is None:
            animator = _SVDAnimator(params) if cfg.model == "svd" else _PIAAnimator(params)
        videos = animator(
            [image for _, image in ready],
            [row.prompt for row, _ in ready],
            [row.seed for row, _ in ready],
            cfg,
        )
        for (row, _), video in zip(ready, videos, strict=True):
            if video.dtype != np.uint8:  # SVD returns floats; PIA's animate() uint8 frames
                if not np.isfinite(video).all():
                    records.append(
                        rejected(row.id, "non_finite_video", "the decoder produced NaN/inf pixels")
                    )
                    continue
                video = to_uint8(video)
            relative = f"{MEDIA_DIR}/{row.id}.mp4"
            path = write_video(output_dir / relative, video, cfg.fps, crf=cfg.crf)
            records.append(ok(row.id, path=relative, sha256=file_sha256(path), n_frames=int(len(video))))
        return records

    result = run_batches(
        items,
        output_dir=output_dir,
        name="videos",
        config_fingerprint=fingerprint(model_id, cfg.model_dump(mode="json")),
        batch_size=cfg.batch_size,
        process=process,
    )
    kept, rejects = split_records(result.records, STAGE)
    if len(kept):
        manifest = items.merge(kept, on="id", how="inner")
    else:
        manifest = items.iloc[:0].assign(path="", sha256="", n_frames=0)
    manifest = manifest.assign(
        model=cfg.model,
        model_id=model_id,
        fps=cfg.fps,
        height=cfg.height,
        width=cfg.width,
        steps=cfg.steps,
        motion_bucket_id=cfg.motion_bucket_id if cfg.model == "svd" else -1,
        noise_aug_strength=cfg.noise_aug_strength if cfg.model == "svd" else float("nan"),
        pia_motion_scale=cfg.pia_motion_scale if cfg.model == "pia" else -1,
    ).sort_values("id", kind="stable")
    if len(manifest) + len(rejects) != len(items):
        raise AssertionError(
            f"{STAGE}: {len(manifest)} kept + {len(rejects)} rejected != {len(items)} images"
        )

    write_manifest(manifest, output_dir)
    write_rejects(rejects, output_dir)
    clear_partials(output_dir)
    return {
        "images_read": len(items),
        "videos_kept": len(manifest),
        "videos_rejected": len(rejects),
        "resumed_batches": result.reused_batches,
        "stage_seconds": round(time.perf_counter() - started, 4),
    }
