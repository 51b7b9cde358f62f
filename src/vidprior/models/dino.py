"""DINO ViT-B/16 (facebook/dino-vitb16): VBench Subject Consistency's frame features.

A `ViTModel` without the pooler: DINO's feature is the final-norm CLS token (`last_hidden_state[:, 0]`),
what torch.hub's DINO returns. Frames are resized so the short side is the model's `image_size` (224)
without cropping, as VBench, and run with `interpolate_pos_encoding=True`; ImageNet mean/std. A tiny
spec builds a 2-layer ViT of width 32 with 8 px patches at 32 px, random weights.
"""

from __future__ import annotations

from transformers import ViTConfig, ViTModel

from vidprior.models.loading import finish_tiny, load_pretrained, seeded
from vidprior.models.spec import ModelSpec

DINO_ID = "facebook/dino-vitb16"


def build_dino(spec: ModelSpec) -> ViTModel:
    if spec.tiny is not None:
        config = ViTConfig(
            image_size=32,
            patch_size=8,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
        )
        with seeded(spec.tiny.seed):
            model = ViTModel(config, add_pooling_layer=False)
        return finish_tiny(model, spec)
    return load_pretrained(ViTModel, spec, add_pooling_layer=False).eval()
