"""AnimateDiff parts: SD 1.5 + a motion adapter, the text-to-video prior Uni-C guides (lambda = 2).

AnimateDiff = the SD 1.5 parts (vae, text encoder, tokenizer, U-Net) + a `MotionAdapter` (temporal attention
modules inserted after every spatial block). The real usage is `MotionAdapter.from_pretrained(ANIMATEDIFF_
ADAPTER_ID)` + `AnimateDiffPipeline.from_pretrained(<sd1.5 base>, motion_adapter=adapter)`; here the SD 1.5
parts come from `build_sd15`, so both halves go through the one door (`ModelSpec`, `pretrained:` or `tiny:`).

As for PIA (vidprior.models.pia), the SD U-Net is converted once, in `build_animatediff`, into a
`UNetMotionModel` (a copy of the SD weights + the adapter's temporal modules); `pipeline()` never converts
again. The SD U-Net itself stays in `base` (the Uni-C classifier's frozen encoder runs on it, frame by frame).
"""

from __future__ import annotations

from dataclasses import dataclass

from diffusers import AnimateDiffPipeline, AutoencoderKL, DDIMScheduler, MotionAdapter, UNetMotionModel
from transformers import CLIPTextModel, CLIPTokenizer

from vidprior.models.pia import adapter_and_motion_unet
from vidprior.models.sd15 import SD15Parts
from vidprior.models.spec import ModelSpec

ANIMATEDIFF_ADAPTER_ID = "guoyww/animatediff-motion-adapter-v1-5-2"
# Must mirror the tiny SD 1.5 U-Net of sd15.py (block_out_channels=(32, 64), layers_per_block=1):
# UNetMotionModel.from_unet2d requires the same number of blocks and layers per block, and the motion modules
# carry per-block channel counts. No conv_in: an AnimateDiff adapter keeps the SD U-Net's 4-channel input.
TINY_ADAPTER = dict(
    block_out_channels=(32, 64),
    motion_layers_per_block=1,
    motion_num_attention_heads=4,
    motion_norm_num_groups=32,
    motion_max_seq_length=32,  # the real v1-5-2 adapter's temporal position encoding length too
)
# Scheduler: DDIM from the SD 1.5 scheduler config with the overrides of the diffusers AnimateDiff docs
# (`DDIMScheduler.from_pretrained(model_id, subfolder="scheduler", clip_sample=False, timestep_spacing=
# "linspace", beta_schedule="linear", steps_offset=1)`). Why: the motion modules were trained under the
# AnimateDiff authors' noise schedule, *linear* betas 0.00085-0.012 (SD 1.5 itself uses scaled_linear; the
# same end points, so only the schedule name changes), and their inference config has steps_offset 1 and no
# sample clipping (clipping x0 to [-1, 1] is meant for pixel-space models, not SD latents). "linspace"
# spacing makes the first step start at t = 999, the pure-noise end the initial latents are drawn for, where
# DDIM's default "leading" spacing would start a short trajectory well below it. DDIM is also what Uni-C's
# guidance (Eq. 3) is defined for; with eta = 0 it draws no noise while stepping.
ANIMATEDIFF_SCHEDULER_OVERRIDES = dict(
    beta_schedule="linear", clip_sample=False, timestep_spacing="linspace", steps_offset=1
)


@dataclass(frozen=True)
class AnimateDiffParts:
    """AnimateDiff ready to run. `unet` is the SD 1.5 U-Net converted once to a `UNetMotionModel` with the
    adapter's temporal modules; `motion_adapter` is kept for provenance / `save_pretrained`."""

    unet: UNetMotionModel
    motion_adapter: MotionAdapter
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    scheduler: DDIMScheduler
    model_id: str

    def pipeline(self) -> AnimateDiffPipeline:
        # A UNetMotionModel is used as is (no from_unet2d). The adapter is not registered: the motion U-Net
        # already holds its weights, and a registered adapter would be moved by `pipe.to(device)` for nothing.
        return AnimateDiffPipeline(
            vae=self.vae,
            text_encoder=self.text_encoder,
            tokenizer=self.tokenizer,
            unet=self.unet,
            motion_adapter=None,
            scheduler=self.scheduler,
            feature_extractor=None,
            image_encoder=None,
        )


def _check_compatible(adapter: MotionAdapter, base: SD15Parts) -> None:
    a, u = adapter.config, base.unet.config
    layers = a.motion_layers_per_block
    unet_layers = u.layers_per_block
    if isinstance(layers, int):
        layers = (layers,) * len(a.block_out_channels)
    if isinstance(unet_layers, int):
        unet_layers = (unet_layers,) * len(u.block_out_channels)
    if tuple(a.block_out_channels) != tuple(u.block_out_channels) or tuple(layers) != tuple(unet_layers):
        raise ValueError(
            f"motion adapter (block_out_channels={tuple(a.block_out_channels)}, layers={tuple(layers)}) "
            f"does not fit the SD 1.5 U-Net {base.model_id!r} (block_out_channels="
            f"{tuple(u.block_out_channels)}, layers={tuple(unet_layers)}); a tiny adapter needs a tiny base "
            "and a pretrained one a real base"
        )
    if a.conv_in_channels:
        raise ValueError(
            f"not an AnimateDiff motion adapter: it has its own conv_in ({a.conv_in_channels} channels), "
            "as PIA's condition adapter does; use vidprior.models.pia.build_pia for that one"
        )


def build_animatediff(adapter_spec: ModelSpec, base: SD15Parts) -> AnimateDiffParts:
    """AnimateDiff from an adapter spec (`pretrained:` hub id or local MotionAdapter dir, or `tiny:`) +
    SD 1.5 (whose U-Net is copied, not modified)."""
    adapter, unet = adapter_and_motion_unet(adapter_spec, base, TINY_ADAPTER, _check_compatible)
    return AnimateDiffParts(
        unet=unet,
        motion_adapter=adapter,
        vae=base.vae,
        text_encoder=base.text_encoder,
        tokenizer=base.tokenizer,
        scheduler=DDIMScheduler.from_config(base.scheduler.config, **ANIMATEDIFF_SCHEDULER_OVERRIDES),
        model_id=f"animatediff:{adapter_spec.model_id}+sd15:{base.model_id}",
    )
