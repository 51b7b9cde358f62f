"""Stage `udpdiff.encode`: VAE latents and T5 embeddings of Panda-Dense, computed once for training.

Input: the `udpdiff.dataset` stage's directory (manifest with `clip_path`, `seg_path`, `depth_path`,
`short_caption`, `long_caption`; the media paths relative to it).

Per clip, with the parts of `models.cogvideox` (`vidprior.models.build_cogvideox`):

* the clip, its segmentation Pixelplanes video and its depth Pixelplanes video, as frames in
  [-1, 1] and [B, C, T, H, W], go through `AutoencoderKLCogVideoX.encode`; the posterior MEAN times
  `vae.config.scaling_factor` is kept (no sampling: the latents are a function of the videos alone),
  stored frames-first [F', C, h, w] as the CogVideoX transformer takes them;
* the long and the short caption go through `CogVideoXPipeline.encode_prompt` (the pipeline's own
  T5 path: padded/truncated to `max_text_tokens`, no attention mask), [L, D] each.

One `latents/{id}.safetensors` per clip (`video`, `segmentation`, `depth`, `long_text`,
`short_text`). Clips are rejected when a video cannot be read (`unreadable_video`), the three videos
differ in frame count or size (`mismatched_videos`), the frame count is not 1 + k x the VAE's
temporal compression (`unsupported_frame_count`: the causal VAE would silently drop or merge frames),
the size is not a multiple of the VAE's spatial compression times the transformer's patch size
(`unsupported_size`), or a caption is empty (`empty_caption`).

Work is batched and checkpointed (`run_batches`): a killed run resumes and writes the same files.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from vidprior.config import Params
from vidprior.io.atomic import atomic_path
from vidprior.io.media import MediaError, file_sha256, read_video
from vidprior.models.loading import default_device
from vidprior.unic.generation import fingerprint, finish_stage, kept_table, ok, rejected, run_batches
from vidprior.unic.stage_inputs import input_dir, read_input_manifest

STAGE = "udpdiff.encode"
LATENTS_DIR = "latents"
FORMAT = 1
METADATA_KEY = "vidprior"
# Latent key -> the dataset manifest column of its video. The dense keys are the task names of
# `vidprior.udpdiff.model.TASKS`, so the training stage reads a task's latent by its name.
VIDEO_COLUMNS = {"video": "clip_path", "segmentation": "seg_path", "depth": "depth_path"}
# Text key -> caption column.
TEXT_COLUMNS = {"long_text": "long_caption", "short_text": "short_caption"}
REQUIRED_COLUMNS = [*VIDEO_COLUMNS.values(), *TEXT_COLUMNS.values()]
MANIFEST_COLUMNS = [
    "id",
    "latent_path",
    "latent_sha256",
    "latent_frames",
    "latent_channels",
    "latent_height",
    "latent_width",
    "text_tokens",
    "text_dim",
    "frames",
    "height",
    "width",
    "short_caption",
    "long_caption",
    "long_text_truncated",
    "short_text_truncated",
]
_STORAGE = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def latent_path(item_id: str) -> str:
    return f"{LATENTS_DIR}/{item_id}.safetensors"


def frames_to_tensor(frames: np.ndarray) -> torch.Tensor:
    """(T, H, W, 3) uint8 -> (3, T, H, W) float32 in [-1, 1], the VAE's input range and layout."""
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(3, 0, 1, 2).float() / 127.5 - 1.0


@dataclass
class Encoder:
    """CogVideoX's VAE and T5 on one device, and the shape rules of the VAE and the transformer."""

    vae: Any  # AutoencoderKLCogVideoX
    pipeline: Any  # CogVideoXPipeline without a transformer: its encode_prompt is the T5 path
    device: torch.device
    temporal_ratio: int
    spatial_ratio: int
    patch_size: int
    max_text_tokens: int
    storage: torch.dtype
    model_id: str

    @property
    def scaling_factor(self) -> float:
        return float(self.vae.config.scaling_factor)

    def shape_problem(self, frames: int, height: int, width: int) -> tuple[str, str] | None:
        """(reason, detail) when the VAE or the transformer cannot take a clip of this shape."""
        if (frames - 1) % self.temporal_ratio:
            below = frames - 1 - (frames - 1) % self.temporal_ratio + 1
            return (
                "unsupported_frame_count",
                f"{frames} frames; the VAE takes 1 + k*{self.temporal_ratio} frames "
                f"(e.g. {below} or {below + self.temporal_ratio})",
            )
        step = self.spatial_ratio * self.patch_size
        if height % step or width % step:
            return (
                "unsupported_size",
                f"{width}x{height} (width x height) is not a multiple of {step} "
                f"(VAE x{self.spatial_ratio} times the transformer's patch {self.patch_size})",
            )
        return None

    @torch.no_grad()
    def encode_videos(self, videos: Sequence[np.ndarray]) -> torch.Tensor:
        """Same-shape (T, H, W, 3) uint8 videos -> (n, F', C, h, w) float32 scaled posterior means."""
        batch = torch.stack([frames_to_tensor(v) for v in videos])
        batch = batch.to(device=self.device, dtype=self.vae.dtype)
        mean = self.vae.encode(batch).latent_dist.mean.float() * self.scaling_factor
        return mean.permute(0, 2, 1, 3, 4).contiguous().cpu()

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """Captions -> (n, max_text_tokens, D) float32 T5 embeddings, as the pipeline makes them."""
        embeds, _ = self.pipeline.encode_prompt(
            prompt=list(texts),
            do_classifier_free_guidance=False,
            num_videos_per_prompt=1,
            max_sequence_length=self.max_text_tokens,
            device=self.device,
            dtype=self.pipeline.text_encoder.dtype,
        )
        return embeds.float().cpu()

    def truncated(self, text: str) -> bool:
        """Whether `encode_prompt` cuts this caption (its tokens, EOS included, exceed the length)."""
        return len(self.pipeline.tokenizer(text).input_ids) > self.max_text_tokens


def load_encoder(params: Params, device: torch.device) -> Encoder:
    from diffusers import CogVideoXPipeline

    from vidprior.models import build_cogvideox

    spec = params.models.cogvideox
    cfg = params.udpdiff.encode
    parts = build_cogvideox(spec)
    transformer = parts.transformer.config
    vae = parts.vae.to(device)
    vae.enable_slicing()  # one video at a time through the VAE: the same numbers, less memory
    pipeline = CogVideoXPipeline(
        tokenizer=parts.tokenizer,
        text_encoder=parts.text_encoder.to(device),
        vae=vae,
        transformer=None,  # not needed here; dropping it frees the 5B weights at once
        scheduler=parts.scheduler,
    )
    if vae.config.latent_channels != transformer.in_channels:
        raise ValueError(
            f"models.cogvideox: the VAE has {vae.config.latent_channels} latent channels, the "
            f"transformer takes {transformer.in_channels}"
        )
    return Encoder(
        vae=vae,
        pipeline=pipeline,
        device=device,
        temporal_ratio=int(vae.config.temporal_compression_ratio),
        spatial_ratio=int(pipeline.vae_scale_factor_spatial),
        patch_size=int(transformer.patch_size),
        max_text_tokens=cfg.max_text_tokens,
        storage=_STORAGE[cfg.storage_dtype],
        model_id=spec.model_id,
    )


# --------------------------------------------------------------------------- one batch


def _read_clip(row: pd.Series, root: Path) -> tuple[dict[str, np.ndarray] | None, dict | None]:
    videos = {}
    for key, column in VIDEO_COLUMNS.items():
        path = root / str(row[column])
        try:
            videos[key], _ = read_video(path)
        except MediaError as exc:
            return None, rejected(row["id"], "unreadable_video", f"{column}: {exc}")
    shapes = {VIDEO_COLUMNS[k]: v.shape[:3] for k, v in videos.items()}
    if len(set(shapes.values())) > 1:
        detail = ", ".join(f"{c} {'x'.join(map(str, s))}" for c, s in shapes.items())
        return None, rejected(row["id"], "mismatched_videos", f"frames x height x width: {detail}")
    return videos, None


def _captions(row: pd.Series) -> tuple[dict[str, str] | None, dict | None]:
    captions = {}
    for key, column in TEXT_COLUMNS.items():
        value = row[column]
        text = "" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)
        if not text.strip():
            return None, rejected(row["id"], "empty_caption", f"{column} is empty")
        captions[key] = text
    return captions, None


def file_metadata(item_id: str, enc: Encoder) -> dict[str, str]:
    # One key holding sorted JSON: safetensors writes a metadata map in hash order, which would make
    # two runs' files differ byte for byte.
    record = {
        "format": FORMAT,
        "id": item_id,
        "base_model": enc.model_id,
        "scaling_factor": enc.scaling_factor,
        "layout": "video, segmentation, depth: [F', C, h, w]; long_text, short_text: [L, D]",
    }
    return {METADATA_KEY: json.dumps(record, sort_keys=True)}


def read_metadata(path: Path) -> dict[str, Any]:
    """The record `file_metadata` wrote into a latents file."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
    if METADATA_KEY not in metadata:
        raise ValueError(f"{path}: no {METADATA_KEY!r} metadata; not written by {STAGE}")
    return json.loads(metadata[METADATA_KEY])


def encode_batch(batch: pd.DataFrame, root: Path, output_dir: Path, enc: Encoder) -> list[dict]:
    """Encode the batch's clips; one safetensors file per kept clip, a record per clip."""
    from safetensors.torch import save_file

    records: dict[str, dict] = {}
    kept: list[tuple[pd.Series, dict[str, np.ndarray], dict[str, str]]] = []
    for _, row in batch.iterrows():
        captions, reject = _captions(row)
        videos = None
        if reject is None:
            videos, reject = _read_clip(row, root)
        if reject is None:
            problem = enc.shape_problem(*videos["video"].shape[:3])
            if problem is not None:
                reject = rejected(row["id"], *problem)
        if reject is not None:
            records[row["id"]] = reject
        else:
            kept.append((row, videos, captions))
    if kept:
        texts = [c[key] for _, _, c in kept for key in TEXT_COLUMNS]
        embeddings = enc.encode_texts(texts).reshape(len(kept), len(TEXT_COLUMNS), enc.max_text_tokens, -1)
        for (row, videos, captions), text in zip(kept, embeddings, strict=True):
            latents = enc.encode_videos([videos[key] for key in VIDEO_COLUMNS])
            tensors = {key: latents[i] for i, key in enumerate(VIDEO_COLUMNS)}
            tensors.update({key: text[i] for i, key in enumerate(TEXT_COLUMNS)})
            tensors = {k: v.to(enc.storage).contiguous() for k, v in tensors.items()}
            relative = latent_path(row["id"])
            with atomic_path(output_dir / relative) as tmp:
                save_file(tensors, str(tmp), metadata=file_metadata(row["id"], enc))
            frames, height, width = videos["video"].shape[:3]
            f_lat, channels, h_lat, w_lat = tensors["video"].shape
            records[row["id"]] = ok(
                row["id"],
                latent_path=relative,
                latent_sha256=file_sha256(output_dir / relative),
                latent_frames=int(f_lat),
                latent_channels=int(channels),
                latent_height=int(h_lat),
                latent_width=int(w_lat),
                text_tokens=int(tensors["long_text"].shape[0]),
                text_dim=int(tensors["long_text"].shape[1]),
                frames=int(frames),
                height=int(height),
                width=int(width),
                short_caption=captions["short_text"],
                long_caption=captions["long_text"],
                long_text_truncated=enc.truncated(captions["long_text"]),
                short_text_truncated=enc.truncated(captions["short_text"]),
            )
    return [records[i] for i in batch["id"]]


# --------------------------------------------------------------------------- the stage


def run(params: Params, inputs: Sequence[Path | str] | None, output_dir: Path) -> dict[str, float]:
    """inputs: [dataset dir]. Writes latents/{id}.safetensors, manifest.parquet and rejects.parquet."""
    from vidprior.unic.generation import quiet_library_logs

    cfg = params.udpdiff.encode
    spec = params.models.cogvideox
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    root = input_dir(inputs, 0, "dataset")
    dataset = read_input_manifest(inputs, 0, "dataset", REQUIRED_COLUMNS)
    items = dataset[["id", *REQUIRED_COLUMNS]].astype({"id": str})
    quiet_library_logs()  # encode_prompt warns on every truncated caption; they are counted instead

    device = torch.device(default_device())
    encoder: list[Encoder] = []  # loaded on the first batch that is not already checkpointed

    def process(batch: pd.DataFrame) -> list[dict]:
        if not encoder:
            encoder.append(load_encoder(params, device))
        return encode_batch(batch, root, output_dir, encoder[0])

    result = run_batches(
        items,
        output_dir=output_dir,
        name="latents",
        # Media are named by id; as in the other stages, a file changed under the same name is not
        # noticed by a resumed run.
        config_fingerprint=fingerprint(
            STAGE, FORMAT, cfg.model_dump(mode="json"), spec.model_dump(mode="json"), str(root.resolve())
        ),
        batch_size=cfg.batch_size,
        process=process,
    )
    manifest, rejects = kept_table(result.records, STAGE, MANIFEST_COLUMNS)
    if encoder:
        scaling = encoder[0].scaling_factor
    elif len(manifest):  # every batch was resumed, no model loaded: the files record the factor
        scaling = float(read_metadata(output_dir / manifest["latent_path"].iloc[0])["scaling_factor"])
    else:
        scaling = math.nan
    manifest = manifest.assign(
        base_model=spec.model_id,
        latent_statistic="posterior_mean",
        vae_scaling_factor=scaling,
        storage_dtype=cfg.storage_dtype,
        max_text_tokens=cfg.max_text_tokens,
        seed=params.seed,
    )
    metrics = finish_stage(
        manifest,
        rejects,
        stage=STAGE,
        items=len(items),
        output_dir=output_dir,
        reused_batches=result.reused_batches,
        started=started,
    )
    metrics["long_captions_truncated"] = int(manifest["long_text_truncated"].astype(bool).sum())
    metrics["short_captions_truncated"] = int(manifest["short_text_truncated"].astype(bool).sum())
    if len(manifest):
        first = manifest.iloc[0]
        for key in ("latent_frames", "latent_channels", "latent_height", "latent_width", "text_tokens"):
            metrics[key] = int(first[key])
    return metrics
