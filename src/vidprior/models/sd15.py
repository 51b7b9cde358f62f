"""Stable Diffusion 1.5 parts (the image prior of Uni-C)."""

from __future__ import annotations

from dataclasses import dataclass

from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from vidprior.models.loading import finish_tiny, load_pretrained, seeded
from vidprior.models.spec import ModelSpec
from vidprior.models.tokenizers import tiny_clip_tokenizer

SD15_ID = "stable-diffusion-v1-5/stable-diffusion-v1-5"
SD15_SCHEDULER = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
)


@dataclass(frozen=True)
class SD15Parts:
    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    scheduler: DDIMScheduler
    model_id: str

    def pipeline(self) -> StableDiffusionPipeline:
        return StableDiffusionPipeline(
            vae=self.vae,
            text_encoder=self.text_encoder,
            tokenizer=self.tokenizer,
            unet=self.unet,
            scheduler=self.scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )


def tiny_clip_text_config(tokenizer: CLIPTokenizer) -> CLIPTextConfig:
    # Pooling finds the EOS id from the config, so the special ids must be the tokenizer's.
    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=37,
        projection_dim=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=tokenizer.model_max_length,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def _tiny(seed: int) -> dict:
    tokenizer = tiny_clip_tokenizer()
    with seeded(seed):
        unet = UNet2DConditionModel(
            sample_size=8,
            block_out_channels=(32, 64),
            layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=32,
            attention_head_dim=4,
        )
        vae = AutoencoderKL(
            block_out_channels=(32, 64),
            down_block_types=("DownEncoderBlock2D",) * 2,
            up_block_types=("UpDecoderBlock2D",) * 2,
            latent_channels=4,
            sample_size=16,
        )
        text_encoder = CLIPTextModel(tiny_clip_text_config(tokenizer))
    return dict(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=DDIMScheduler(**SD15_SCHEDULER),
    )


def build_sd15(spec: ModelSpec) -> SD15Parts:
    if spec.tiny is not None:
        parts = _tiny(spec.tiny.seed)
        for name in ("unet", "vae", "text_encoder"):
            parts[name] = finish_tiny(parts[name], spec)
    else:
        parts = dict(
            unet=load_pretrained(UNet2DConditionModel, spec, "unet"),
            vae=load_pretrained(AutoencoderKL, spec, "vae"),
            text_encoder=load_pretrained(CLIPTextModel, spec, "text_encoder"),
            tokenizer=load_pretrained(CLIPTokenizer, spec, "tokenizer"),
            scheduler=load_pretrained(DDIMScheduler, spec, "scheduler"),
        )
    return SD15Parts(**parts, model_id=spec.model_id)
