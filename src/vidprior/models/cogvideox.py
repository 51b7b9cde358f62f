"""CogVideoX (5B, or 2B) text-to-video parts (the video prior of Uni-C)."""

from __future__ import annotations

from dataclasses import dataclass

from diffusers import (
    AutoencoderKLCogVideoX,
    CogVideoXDPMScheduler,
    CogVideoXPipeline,
    CogVideoXTransformer3DModel,
)
from transformers import T5Config, T5EncoderModel, T5TokenizerFast

from vidprior.models.loading import finish_tiny, load_pretrained, seeded
from vidprior.models.spec import ModelSpec
from vidprior.models.tokenizers import tiny_t5_tokenizer

COGVIDEOX_ID = "zai-org/CogVideoX-5b"
COGVIDEOX_2B_ID = "zai-org/CogVideoX-2b"
# CogVideoX-5b's schedule (2B differs only in snr_shift_scale=3.0); pretrained specs load the repo's own.
COGVIDEOX_SCHEDULER = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    clip_sample=False,
    set_alpha_to_one=True,
    steps_offset=0,
    prediction_type="v_prediction",
    rescale_betas_zero_snr=True,
    timestep_spacing="trailing",
    snr_shift_scale=1.0,
)


@dataclass(frozen=True)
class CogVideoXParts:
    transformer: CogVideoXTransformer3DModel
    vae: AutoencoderKLCogVideoX
    text_encoder: T5EncoderModel
    tokenizer: T5TokenizerFast
    scheduler: CogVideoXDPMScheduler
    model_id: str

    def pipeline(self) -> CogVideoXPipeline:
        return CogVideoXPipeline(
            tokenizer=self.tokenizer,
            text_encoder=self.text_encoder,
            vae=self.vae,
            transformer=self.transformer,
            scheduler=self.scheduler,
        )


def _tiny(seed: int) -> dict:
    tokenizer = tiny_t5_tokenizer()
    latent_channels, text_dim = 4, 32
    with seeded(seed):
        text_encoder = T5EncoderModel(
            T5Config(
                vocab_size=len(tokenizer),
                d_model=text_dim,
                d_kv=8,
                d_ff=37,
                num_layers=2,
                num_heads=4,
                relative_attention_num_buckets=8,
                feed_forward_proj="gated-gelu",  # T5 v1.1, as CogVideoX's T5-XXL
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
                decoder_start_token_id=tokenizer.pad_token_id,
            )
        )
        # Three blocks: 4x spatial; the first two also halve time, giving CogVideoX's 4x temporal ratio.
        vae = AutoencoderKLCogVideoX(
            down_block_types=("CogVideoXDownBlock3D",) * 3,
            up_block_types=("CogVideoXUpBlock3D",) * 3,
            block_out_channels=(8, 8, 8),
            latent_channels=latent_channels,
            layers_per_block=1,
            norm_num_groups=2,
            temporal_compression_ratio=4,
            sample_height=16,
            sample_width=16,
            scaling_factor=0.7,
        )
        # Rotary positions as in 5B; head dim 16 is the smallest that the 3D (t, h, w) rotary split accepts.
        transformer = CogVideoXTransformer3DModel(
            num_attention_heads=2,
            attention_head_dim=16,
            in_channels=latent_channels,
            out_channels=latent_channels,
            time_embed_dim=16,
            text_embed_dim=text_dim,
            num_layers=1,
            sample_width=4,
            sample_height=4,
            sample_frames=9,
            patch_size=2,
            temporal_compression_ratio=4,
            use_rotary_positional_embeddings=True,
        )
    return dict(
        transformer=transformer,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=CogVideoXDPMScheduler(**COGVIDEOX_SCHEDULER),
    )


def build_cogvideox(spec: ModelSpec) -> CogVideoXParts:
    if spec.tiny is not None:
        parts = _tiny(spec.tiny.seed)
        for name in ("transformer", "vae", "text_encoder"):
            parts[name] = finish_tiny(parts[name], spec)
    else:
        parts = dict(
            transformer=load_pretrained(CogVideoXTransformer3DModel, spec, "transformer"),
            vae=load_pretrained(AutoencoderKLCogVideoX, spec, "vae"),
            text_encoder=load_pretrained(T5EncoderModel, spec, "text_encoder"),
            tokenizer=load_pretrained(T5TokenizerFast, spec, "tokenizer"),
            scheduler=load_pretrained(CogVideoXDPMScheduler, spec, "scheduler"),
        )
    return CogVideoXParts(**parts, model_id=spec.model_id)
