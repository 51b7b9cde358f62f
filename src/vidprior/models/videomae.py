"""VideoMAE (MCG-NJU/videomae-base-finetuned-kinetics): FVD's video feature extractor.

`VideoMAEModel` (the encoder without the Kinetics classifier); a video's feature is the mean over
tokens of the last hidden state, for `config.num_frames` frames (16) at `config.image_size` (224),
ImageNet mean/std. A tiny spec builds a 2-layer encoder of width 32, 8 px patches at 32 px, 4 frames
in tubelets of 2, random weights.
"""

from __future__ import annotations

from transformers import VideoMAEConfig, VideoMAEModel

from vidprior.models.loading import finish_tiny, load_pretrained, seeded
from vidprior.models.spec import ModelSpec

VIDEOMAE_ID = "MCG-NJU/videomae-base-finetuned-kinetics"


def build_videomae(spec: ModelSpec) -> VideoMAEModel:
    if spec.tiny is not None:
        config = VideoMAEConfig(
            image_size=32,
            patch_size=8,
            num_frames=4,
            tubelet_size=2,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            use_mean_pooling=True,
        )
        with seeded(spec.tiny.seed):
            model = VideoMAEModel(config)
        return finish_tiny(model, spec)
    return load_pretrained(VideoMAEModel, spec).eval()
