"""Stable Video Diffusion (img2vid-xt) parts (the video prior of UDPDiff)."""

from __future__ import annotations

from dataclasses import dataclass

from diffusers import (
    AutoencoderKLTemporalDecoder,
    EulerDiscreteScheduler,
    StableVideoDiffusionPipeline,
    UNetSpatioTemporalConditionModel,
)
from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

from vidprior.models.loading import finish_tiny, load_pretrained, seeded
from vidprior.models.spec import ModelSpec

SVD_ID = "stabilityai/stable-video-diffusion-img2vid-xt"
SVD_SCHEDULER = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    interpolation_type="linear",
    prediction_type="v_prediction",
    sigma_max=700.0,
    sigma_min=0.002,
    steps_offset=1,
    timestep_spacing="leading",
    timestep_type="continuous",
    use_karras_sigmas=True,
)
# SVD conditions on three added time ids: fps, motion bucket id, noise augmentation strength.
N_ADDED_TIME_IDS = 3


@dataclass(frozen=True)
class SVDParts:
    unet: UNetSpatioTemporalConditionModel
    vae: AutoencoderKLTemporalDecoder
    image_encoder: CLIPVisionModelWithProjection
    feature_extractor: CLIPImageProcessor
    scheduler: EulerDiscreteScheduler
    model_id: str

    def pipeline(self) -> StableVideoDiffusionPipeline:
        return StableVideoDiffusionPipeline(
            vae=self.vae,
            image_encoder=self.image_encoder,
            unet=self.unet,
            scheduler=self.scheduler,
            feature_extractor=self.feature_extractor,
        )


def _tiny(seed: int) -> dict:
    time_embed_dim = 8
    with seeded(seed):
        unet = UNetSpatioTemporalConditionModel(
            sample_size=8,
            in_channels=8,  # noisy latent + conditioning-image latent, concatenated on channels
            out_channels=4,
            down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
            up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
            block_out_channels=(32, 64),
            addition_time_embed_dim=time_embed_dim,
            projection_class_embeddings_input_dim=N_ADDED_TIME_IDS * time_embed_dim,
            layers_per_block=1,
            cross_attention_dim=32,
            num_attention_heads=(2, 4),
            num_frames=4,
        )
        vae = AutoencoderKLTemporalDecoder(
            down_block_types=("DownEncoderBlock2D",) * 2,
            block_out_channels=(32, 64),
            latent_channels=4,
            sample_size=16,
        )
        # The pipeline resizes PIL inputs to 224 px before the image encoder, so the tiny one takes 224 too.
        image_encoder = CLIPVisionModelWithProjection(
            CLIPVisionConfig(
                hidden_size=32,
                intermediate_size=37,
                projection_dim=32,
                num_hidden_layers=2,
                num_attention_heads=4,
                image_size=224,
                patch_size=32,
            )
        )
    return dict(
        unet=unet,
        vae=vae,
        image_encoder=image_encoder,
        feature_extractor=CLIPImageProcessor(),  # its defaults are OpenAI CLIP's 224 px preprocessing
        scheduler=EulerDiscreteScheduler(**SVD_SCHEDULER),
    )


def build_svd(spec: ModelSpec) -> SVDParts:
    if spec.tiny is not None:
        parts = _tiny(spec.tiny.seed)
        for name in ("unet", "vae", "image_encoder"):
            parts[name] = finish_tiny(parts[name], spec)
    else:
        parts = dict(
            unet=load_pretrained(UNetSpatioTemporalConditionModel, spec, "unet"),
            vae=load_pretrained(AutoencoderKLTemporalDecoder, spec, "vae"),
            image_encoder=load_pretrained(CLIPVisionModelWithProjection, spec, "image_encoder"),
            feature_extractor=load_pretrained(CLIPImageProcessor, spec, "feature_extractor"),
            scheduler=load_pretrained(EulerDiscreteScheduler, spec, "scheduler"),
        )
    return SVDParts(**parts, model_id=spec.model_id)
