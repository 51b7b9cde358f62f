"""PIA (Personalized Image Animator) parts: the alternative image-to-video labeller of Uni-C Suppl. X.

PIA = the SD 1.5 parts (vae, text encoder, tokenizer, U-Net) + a `MotionAdapter`, the PIA condition adapter:
AnimateDiff-style temporal modules plus a 9-channel `conv_in` (noisy latent 4 + mask 1 + image latent 4).
The real usage is `MotionAdapter.from_pretrained(PIA_ADAPTER_ID)` + `PIAPipeline.from_pretrained(<sd1.5
base>, motion_adapter=adapter)`; here the SD 1.5 parts come from `build_sd15`, so both halves go through the
one door (`ModelSpec`, `pretrained:` or `tiny:`).

diffusers quirks worth knowing (0.42.1):
- `PIAPipeline` lives in `diffusers.pipelines.deprecated` (last supported 0.33.1) and logs a deprecation
  warning on every construction; `PIAParts.pipeline` mutes that one warning.
- `UNetMotionModel.from_unet2d(unet, adapter)` *shares* the adapter's `conv_in` module with the motion U-Net
  and then overwrites its input channels 0-3 and its bias with the SD U-Net's `conv_in` (only channels 4-8,
  mask + image latent, are PIA's own). Building the parts therefore mutates `motion_adapter.conv_in` in place;
  the conversion is done once, in `build_pia`, so `pipeline()` is cheap and never converts again. It also
  draws from the global torch RNG (random init before the weights are copied in), hence `seeded` around it.
- `image` given as a NumPy array is taken as floats in [0, 1]; uint8 arrays are not rescaled. `animate`
  converts uint8 frames to PIL first. The pipeline does not resize (`do_resize=False`): an image of another
  size is VAE-encoded at its own size and its latent interpolated (nearest), so `animate` resizes to
  (height, width) itself.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from diffusers import AutoencoderKL, EulerDiscreteScheduler, MotionAdapter, PIAPipeline, UNetMotionModel
from PIL import Image
from transformers import CLIPTextModel, CLIPTokenizer

from vidprior.models.loading import finish_tiny, load_pretrained, seeded
from vidprior.models.sd15 import SD15Parts
from vidprior.models.spec import ModelSpec

PIA_ADAPTER_ID = "openmmlab/PIA-condition-adapter"
# The pipeline concatenates noisy latent (4), per-frame affinity mask (1), condition-image VAE latent (4).
PIA_CONV_IN_CHANNELS = 9
# Must mirror the tiny SD 1.5 U-Net of sd15.py (block_out_channels=(32, 64), layers_per_block=1):
# UNetMotionModel.from_unet2d requires the same number of blocks and layers per block, and the motion modules
# carry per-block channel counts.
TINY_ADAPTER = dict(
    block_out_channels=(32, 64),
    motion_layers_per_block=1,
    motion_num_attention_heads=4,
    motion_norm_num_groups=32,
    motion_max_seq_length=32,  # the real PIA adapter's temporal position encoding length too
    conv_in_channels=PIA_CONV_IN_CHANNELS,
)
# Scheduler: the diffusers PIA docs use `EulerDiscreteScheduler.from_config(pipe.scheduler.config)` (the SD
# 1.5 base's own betas / offset) and advise `beta_schedule="linear"` because the PIA checkpoints are sensitive
# to the beta schedule (the PIA authors' inference config: linear betas 0.00085-0.012, steps_offset 1, no
# clipping; Euler has no sample clipping to disable). With s_churn=0 (default) Euler draws no noise while
# stepping, so a video is fixed by its initial latents. timestep_spacing stays Euler's default "linspace",
# as with the docs' from_config: SD 1.5's scheduler config leaves it unset.
PIA_SCHEDULER_OVERRIDES = dict(beta_schedule="linear")
# `motion_scale` indexes diffusers' RANGE_list: 0-2 more motion, 3-5 looping, 6-8 style transfer.
N_MOTION_SCALES = 9
# Known, harmless diffusers warnings, muted around the calls that emit them: DeprecatedPipelineMixin's
# "PIAPipeline has been deprecated" on every pipeline construction, and ModelMixin.to's "modules that should
# be kept in float32: []" that any `.to(dtype)` logs (from_unet2d ends with one, even float32 -> float32).
_PIPELINE_LOGGER = "diffusers.pipelines.pipeline_utils"
_MODELING_LOGGER = "diffusers.models.modeling_utils"


@contextmanager
def _warnings_muted(name: str) -> Iterator[None]:
    log = logging.getLogger(name)
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


@dataclass(frozen=True)
class PIAParts:
    """PIA ready to run. `unet` is the SD 1.5 U-Net converted once to a `UNetMotionModel` with the adapter's
    temporal modules and 9-channel `conv_in`; `motion_adapter` is kept for provenance / `save_pretrained` (its
    `conv_in` module is shared with `unet`, see the module docstring). The SD U-Net itself is not kept."""

    unet: UNetMotionModel
    motion_adapter: MotionAdapter
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    scheduler: EulerDiscreteScheduler
    model_id: str

    def pipeline(self) -> PIAPipeline:
        # A UNetMotionModel is used as is (no from_unet2d). The adapter is not registered: the motion U-Net
        # already holds its weights, and a registered adapter would be moved by `pipe.to(device)` for nothing.
        with _warnings_muted(_PIPELINE_LOGGER):
            return PIAPipeline(
                vae=self.vae,
                text_encoder=self.text_encoder,
                tokenizer=self.tokenizer,
                unet=self.unet,
                scheduler=self.scheduler,
                motion_adapter=None,
                feature_extractor=None,
                image_encoder=None,
            )


def _check_compatible(adapter: MotionAdapter, base: SD15Parts) -> None:
    a, u = adapter.config, base.unet.config
    n_blocks = len(a.block_out_channels)
    layers = a.motion_layers_per_block
    unet_layers = u.layers_per_block
    if isinstance(layers, int):
        layers = (layers,) * n_blocks
    if isinstance(unet_layers, int):
        unet_layers = (unet_layers,) * len(u.block_out_channels)
    if tuple(a.block_out_channels) != tuple(u.block_out_channels) or tuple(layers) != tuple(unet_layers):
        raise ValueError(
            f"motion adapter (block_out_channels={tuple(a.block_out_channels)}, layers={tuple(layers)}) "
            f"does not fit the SD 1.5 U-Net {base.model_id!r} (block_out_channels="
            f"{tuple(u.block_out_channels)}, layers={tuple(unet_layers)}); a tiny adapter needs a tiny base "
            "and a pretrained one a real base"
        )
    if a.conv_in_channels != PIA_CONV_IN_CHANNELS:
        raise ValueError(
            f"not a PIA condition adapter: conv_in_channels={a.conv_in_channels}, expected "
            f"{PIA_CONV_IN_CHANNELS} (an AnimateDiff motion adapter has none)"
        )


def adapter_and_motion_unet(
    adapter_spec: ModelSpec,
    base: SD15Parts,
    tiny_config: dict,
    check: Callable[[MotionAdapter, SD15Parts], None],
) -> tuple[MotionAdapter, UNetMotionModel]:
    """The motion adapter of `adapter_spec` (pretrained, or tiny from `tiny_config`), checked against
    `base` by `check`, and the motion U-Net made of the SD U-Net + the adapter (PIA and AnimateDiff)."""
    if adapter_spec.tiny is not None:
        with seeded(adapter_spec.tiny.seed):
            adapter = MotionAdapter(**tiny_config)
        adapter = finish_tiny(adapter, adapter_spec)
    else:
        adapter = load_pretrained(MotionAdapter, adapter_spec)
    check(adapter, base)
    # Copies the SD U-Net's weights into a new UNetMotionModel (cast to the base U-Net's dtype) and loads the
    # adapter's temporal modules (and PIA's conv_in) into it; from_config leaves it in train mode, hence
    # eval(). The fixed seed only keeps the caller's RNG alone: every random init is overwritten by copies.
    with _warnings_muted(_MODELING_LOGGER), seeded(0):
        unet = UNetMotionModel.from_unet2d(base.unet, adapter).eval()
    return adapter, unet


def build_pia(adapter_spec: ModelSpec, base: SD15Parts) -> PIAParts:
    """PIA from an adapter spec (`pretrained:` hub id or local MotionAdapter dir, or `tiny:`) + SD 1.5."""
    adapter, unet = adapter_and_motion_unet(adapter_spec, base, TINY_ADAPTER, _check_compatible)
    return PIAParts(
        unet=unet,
        motion_adapter=adapter,
        vae=base.vae,
        text_encoder=base.text_encoder,
        tokenizer=base.tokenizer,
        scheduler=EulerDiscreteScheduler.from_config(base.scheduler.config, **PIA_SCHEDULER_OVERRIDES),
        model_id=f"pia:{adapter_spec.model_id}+sd15:{base.model_id}",
    )


def _to_pil(image: np.ndarray, height: int, width: int) -> Image.Image:
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) uint8 image, got {image.dtype} {image.shape}")
    pil = Image.fromarray(image)
    if pil.size != (width, height):
        pil = pil.resize((width, height), Image.Resampling.LANCZOS)
    return pil


def animate(
    parts: PIAParts,
    images: list[np.ndarray],
    prompts: list[str],
    seeds: list[int],
    *,
    frames: int,
    steps: int,
    guidance_scale: float,
    motion_scale: int,
    height: int,
    width: int,
    batch_size: int | None = None,
) -> list[np.ndarray]:
    """One (frames, height, width, 3) uint8 video per (image, prompt, seed); the image is frame 0's condition.

    Images of another size are resized (LANCZOS) to (height, width); both must be multiples of 8. Runs where
    `parts` live (move them with `parts.pipeline().to(device)`, which moves the shared modules in place).

    Batching: PIAPipeline takes a list of images + a list of prompts + one generator per item and then draws
    every item's noise from its own generator (initial latents via randn_tensor's per-generator path, VAE
    posterior sample of the condition image per item; Euler with s_churn=0 draws nothing more), so items are
    sent through one call, `batch_size` at a time (default: all). Each item has its own CPU torch.Generator
    seeded with its seed, so a video depends only on its own (image, prompt, seed) and not on the batching;
    batched and single runs agree up to float round-off of batched kernels (at most a few uint8 levels).
    """
    n = len(images)
    if not (len(prompts) == len(seeds) == n):
        raise ValueError(
            f"got {n} images, {len(prompts)} prompts and {len(seeds)} seeds; need one of each per video"
        )
    max_frames = parts.unet.config.motion_max_seq_length
    if not 1 <= frames <= max_frames:
        raise ValueError(
            f"frames must be in [1, {max_frames}] (the adapter's temporal positions), got {frames}"
        )
    if not 0 <= motion_scale < N_MOTION_SCALES:
        raise ValueError(f"motion_scale must be in [0, {N_MOTION_SCALES - 1}], got {motion_scale}")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if height % 8 or width % 8:
        raise ValueError(f"height and width must be multiples of 8, got {height}x{width}")
    if n == 0:
        return []
    pil = [_to_pil(image, height, width) for image in images]
    pipe = parts.pipeline()
    pipe.set_progress_bar_config(disable=True)
    step = batch_size or n
    videos: list[np.ndarray] = []
    for start in range(0, n, step):
        stop = min(start + step, n)
        out = pipe(
            image=pil[start:stop],
            prompt=list(prompts[start:stop]),
            num_frames=frames,
            height=height,
            width=width,
            num_inference_steps=steps,
            guidance_scale=guidance_scale,
            motion_scale=motion_scale,
            generator=[torch.Generator().manual_seed(int(s)) for s in seeds[start:stop]],
            output_type="np",
        ).frames  # (B, T, H, W, 3) float32 in [0, 1]
        videos.extend((np.clip(out, 0.0, 1.0) * 255.0).round().astype(np.uint8))
    return videos
