"""CLIP score: 100 * max(cos(text, frame), 0) with CLIP ViT-B/32, per frame, averaged over the video."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch.nn.functional as F

from vidprior.evaluate import backbones
from vidprior.evaluate.features import clip_model_image_embeds, clip_text_embeds
from vidprior.evaluate.frames import check_video

if TYPE_CHECKING:
    from vidprior.config import EvaluateParams


def clip_score(video: np.ndarray, prompt: str, params: EvaluateParams) -> float:
    video = check_video(video)
    parts = backbones.clip(params.clip)
    image = F.normalize(clip_model_image_embeds(parts.model, video, params.batch_frames), dim=-1)
    text = F.normalize(clip_text_embeds(parts.model, parts.tokenizer, [prompt]), dim=-1)
    return float((100 * (image @ text[0]).clamp(min=0)).mean())
