"""VBench Aesthetic Quality: the LAION aesthetic predictor per frame, averaged, divided by 10.

CLIP ViT-L/14 image embeddings (VBench's clip_transform: 224 px bicubic, centre crop), L2-normalised,
scored by the linear LAION head (`sa_0_4_vit_l_14_linear`, 1..10 scale), so the video's value is in
about [0.1, 1] (`vbench/aesthetic_quality.py`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from vidprior.evaluate import backbones
from vidprior.evaluate.features import clip_vision_image_embeds
from vidprior.evaluate.frames import check_video

if TYPE_CHECKING:
    from vidprior.config import EvaluateParams


def aesthetic_quality(video: np.ndarray, params: EvaluateParams) -> float:
    video = check_video(video)
    clip = backbones.clip_vision(params.aesthetic_clip)
    head = backbones.aesthetic_head(params.aesthetic_head, clip.config.projection_dim)
    embeds = F.normalize(clip_vision_image_embeds(clip, video, params.batch_frames), dim=-1)
    with torch.inference_mode():
        scores = head(embeds.to(next(head.parameters()).dtype)).float()[:, 0]
    return float((scores / 10).mean())
