"""Uni-C guided sampling workflows: the guided SD / AnimateDiff calls a sampling stage runs.

- `sample_sd`: SD 1.5 text-to-image with Uni-C guidance (Eq. 3) on the DDIM scheduler.
- `sample_animatediff`: AnimateDiff text-to-video, guided frame by frame.
- `sd_then_pia` / `sd_then_svd`: the image-to-video tasks of the paper (sd-pia, sd-svd): a guided SD image,
  animated (unguided) by PIA or SVD.

Every item has its own seed and CPU `torch.Generator` (vidprior.seeding.generators); diffusers draws each
item's initial noise from its own generator and DDIM with eta = 0 draws nothing more, so an output depends
only on its own (prompt, seed) and not on the batching (up to float round-off of batched kernels). The
classifier gradient is per item too (its log p of one image depends on that image's latent only).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from vidprior.seeding import generators
from vidprior.unic.classifier import UniCClassifier, text_condition
from vidprior.unic.guidance import guided
from vidprior.unic.images import to_uint8

if TYPE_CHECKING:
    from vidprior.models.animatediff import AnimateDiffParts
    from vidprior.models.pia import PIAParts
    from vidprior.models.sd15 import SD15Parts
    from vidprior.models.svd import SVDParts

TextConditionMode = Literal["prompt", "empty"]


def _check_items(prompts: list[str], seeds: list[int], batch_size: int | None, height: int, width: int):
    if len(prompts) != len(seeds):
        raise ValueError(f"got {len(prompts)} prompts and {len(seeds)} seeds; need one seed per prompt")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if height % 8 or width % 8:
        raise ValueError(f"height and width must be multiples of 8, got {height}x{width}")


def _chunks(n: int, batch_size: int | None) -> list[slice]:
    step = batch_size or max(n, 1)
    return [slice(i, min(i + step, n)) for i in range(0, n, step)]


def sample_sd(
    parts: SD15Parts,
    classifier: UniCClassifier,
    prompts: list[str],
    seeds: list[int],
    *,
    lambda_: float,
    steps: int,
    guidance_scale: float,
    height: int,
    width: int,
    start: float = 0.0,
    end: float = 1.0,
    text_condition_mode: TextConditionMode = "prompt",
    batch_size: int | None = None,
) -> list[np.ndarray]:
    """One (height, width, 3) uint8 image per (prompt, seed), Uni-C-guided with strength `lambda_`.

    `classifier` must be built on `parts.unet` (its frozen encoder); its text condition is each prompt's CLIP
    embedding (`text_condition_mode="prompt"`) or the empty prompt's ("empty"), as it was trained. Guidance
    is applied to the steps in [start, end) of the trajectory (fractions of `steps`); lambda_ = 0 gives the
    plain SD images. Runs where `parts` live; `batch_size` items per pipeline call (default: all).
    """
    _check_items(prompts, seeds, batch_size, height, width)
    pipe = parts.pipeline()
    pipe.set_progress_bar_config(disable=True)
    images: list[np.ndarray] = []
    for chunk in _chunks(len(prompts), batch_size):
        batch = list(prompts[chunk])
        cond = text_condition(parts.tokenizer, parts.text_encoder, batch, text_condition_mode)
        with guided(pipe, classifier, lambda_, cond, start=start, end=end):
            out = pipe(
                prompt=batch,
                num_inference_steps=steps,
                guidance_scale=guidance_scale,
                height=height,
                width=width,
                generator=generators(list(seeds[chunk])),
                output_type="np",
            ).images  # (B, H, W, 3) float32 in [0, 1]
        images.extend(to_uint8(image) for image in out)
    return images


def sample_animatediff(
    parts: AnimateDiffParts,
    classifier: UniCClassifier,
    prompts: list[str],
    seeds: list[int],
    *,
    lambda_: float,
    frames: int,
    steps: int,
    guidance_scale: float,
    height: int,
    width: int,
    start: float = 0.0,
    end: float = 1.0,
    text_condition_mode: TextConditionMode = "prompt",
    batch_size: int | None = None,
    chunk_size: int | None = None,
) -> list[np.ndarray]:
    """One (frames, height, width, 3) uint8 video per (prompt, seed), Uni-C-guided frame by frame.

    `classifier` is built on the SD 1.5 U-Net the motion U-Net was made from (`build_sd15(...).unet`, not
    `parts.unet`): each frame's latent goes through its encoder with the prompt's (or the empty) condition.
    `chunk_size` bounds how many frames go through the classifier's backward pass at once (memory only).
    """
    _check_items(prompts, seeds, batch_size, height, width)
    max_frames = parts.unet.config.motion_max_seq_length
    if not 1 <= frames <= max_frames:
        raise ValueError(
            f"frames must be in [1, {max_frames}] (the adapter's temporal positions), got {frames}"
        )
    pipe = parts.pipeline()
    pipe.set_progress_bar_config(disable=True)
    videos: list[np.ndarray] = []
    for chunk in _chunks(len(prompts), batch_size):
        batch = list(prompts[chunk])
        cond = text_condition(parts.tokenizer, parts.text_encoder, batch, text_condition_mode)
        with guided(pipe, classifier, lambda_, cond, start=start, end=end, chunk_size=chunk_size):
            out = pipe(
                prompt=batch,
                num_frames=frames,
                num_inference_steps=steps,
                guidance_scale=guidance_scale,
                height=height,
                width=width,
                generator=generators(list(seeds[chunk])),
                output_type="np",
            ).frames  # (B, T, H, W, 3) float32 in [0, 1]
        videos.extend(to_uint8(video) for video in out)
    return videos


def sd_then_pia(
    sd_parts: SD15Parts,
    pia_parts: PIAParts,
    classifier: UniCClassifier,
    prompts: list[str],
    image_seeds: list[int],
    video_seeds: list[int],
    *,
    lambda_: float,
    sd: dict[str, Any],
    pia: dict[str, Any],
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The sd-pia task: guided SD images (`sample_sd` keyword arguments in `sd`), animated by PIA with the
    same prompts (`vidprior.models.pia.animate` keyword arguments in `pia`). Returns (images, videos)."""
    from vidprior.models.pia import animate

    images = sample_sd(sd_parts, classifier, prompts, image_seeds, lambda_=lambda_, **sd)
    return images, animate(pia_parts, images, prompts, video_seeds, **pia)


def animate_svd(
    parts: SVDParts,
    images: list[np.ndarray],
    seeds: list[int],
    *,
    frames: int,
    steps: int,
    height: int,
    width: int,
    fps: int = 7,
    motion_bucket_id: int = 127,
    noise_aug_strength: float = 0.02,
    decode_chunk_size: int = 8,
    batch_size: int | None = None,
) -> list[np.ndarray]:
    """One (frames, height, width, 3) uint8 SVD video per (image, seed); SVD sees the image only."""
    from PIL import Image

    if len(images) != len(seeds):
        raise ValueError(f"got {len(images)} images and {len(seeds)} seeds; need one seed per image")
    pipe = parts.pipeline()
    pipe.set_progress_bar_config(disable=True)
    videos: list[np.ndarray] = []
    for chunk in _chunks(len(images), batch_size):
        out = pipe(
            image=[Image.fromarray(image) for image in images[chunk]],
            height=height,
            width=width,
            num_frames=frames,
            num_inference_steps=steps,
            fps=fps,
            motion_bucket_id=motion_bucket_id,
            noise_aug_strength=noise_aug_strength,
            decode_chunk_size=decode_chunk_size,
            generator=generators(list(seeds[chunk])),
            output_type="np",
        ).frames
        videos.extend(to_uint8(np.asarray(video)) for video in out)
    return videos


def sd_then_svd(
    sd_parts: SD15Parts,
    svd_parts: SVDParts,
    classifier: UniCClassifier,
    prompts: list[str],
    image_seeds: list[int],
    video_seeds: list[int],
    *,
    lambda_: float,
    sd: dict[str, Any],
    svd: dict[str, Any],
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The sd-svd task (the paper's): guided SD images (`sample_sd` keyword arguments in `sd`), animated by
    SVD (`animate_svd` keyword arguments in `svd`). Returns (images, videos)."""
    images = sample_sd(sd_parts, classifier, prompts, image_seeds, lambda_=lambda_, **sd)
    return images, animate_svd(svd_parts, images, video_seeds, **svd)
