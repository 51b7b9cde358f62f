"""CLIP image towers for the metrics: ViT-B/32 (image + text: background consistency, CLIP score) and
ViT-L/14 (image only: the LAION aesthetic predictor's features).

`build_clip` gives a `CLIPModel` and its tokenizer, `build_clip_vision` a `CLIPVisionModelWithProjection`
(which loads the image half of a full CLIP checkpoint). Images are preprocessed in torch by the caller
(`vidprior.evaluate.frames`), as VBench does, so no image processor (and no torchvision) is needed:
the CLIP constants are here. Tiny specs build the same classes with a 32 px, 8 px patch ViT and the
byte-level tiny tokenizer, random weights.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import (
    CLIPConfig,
    CLIPModel,
    CLIPTokenizer,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
)

from vidprior.models.loading import finish_tiny, load_pretrained, seeded
from vidprior.models.sd15 import tiny_clip_text_config
from vidprior.models.spec import ModelSpec
from vidprior.models.tokenizers import tiny_clip_tokenizer

CLIP_B32_ID = "openai/clip-vit-base-patch32"
CLIP_L14_ID = "openai/clip-vit-large-patch14"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_TINY_PROJECTION = 32


@dataclass(frozen=True)
class ClipParts:
    model: CLIPModel
    tokenizer: CLIPTokenizer
    model_id: str


def _tiny_vision_config() -> CLIPVisionConfig:
    return CLIPVisionConfig(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        projection_dim=_TINY_PROJECTION,
    )


def build_clip(spec: ModelSpec) -> ClipParts:
    if spec.tiny is not None:
        tokenizer = tiny_clip_tokenizer()
        config = CLIPConfig(
            text_config=tiny_clip_text_config(tokenizer).to_dict(),
            vision_config=_tiny_vision_config().to_dict(),
            projection_dim=_TINY_PROJECTION,
        )
        with seeded(spec.tiny.seed):
            model = CLIPModel(config)
        model = finish_tiny(model, spec)
    else:
        model = load_pretrained(CLIPModel, spec).eval()
        tokenizer = load_pretrained(CLIPTokenizer, spec)
    return ClipParts(model=model, tokenizer=tokenizer, model_id=spec.model_id)


def build_clip_vision(spec: ModelSpec) -> CLIPVisionModelWithProjection:
    if spec.tiny is not None:
        with seeded(spec.tiny.seed):
            model = CLIPVisionModelWithProjection(_tiny_vision_config())
        return finish_tiny(model, spec)
    return load_pretrained(CLIPVisionModelWithProjection, spec).eval()
