"""VBench Subject Consistency (DINO ViT-B/16 features) and Background Consistency (CLIP ViT-B/32).

Both score a video by how alike its frames' features are: for every frame after the first, the mean
of its cosine similarity to the previous frame and to the first frame (each clamped at 0), averaged
over those frames (`vbench/subject_consistency.py`, `background_consistency.py`). 1 = all frames
alike; the paper's table shows x100.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from vidprior.evaluate import backbones
from vidprior.evaluate.features import clip_model_image_embeds, dino_cls
from vidprior.evaluate.frames import check_video, consistency_score

if TYPE_CHECKING:
    from vidprior.config import EvaluateParams


def subject_consistency(video: np.ndarray, params: EvaluateParams) -> float:
    video = check_video(video, min_frames=2)
    return consistency_score(dino_cls(backbones.dino(params.dino), video, params.batch_frames))


def background_consistency(video: np.ndarray, params: EvaluateParams) -> float:
    video = check_video(video, min_frames=2)
    model = backbones.clip(params.clip).model
    return consistency_score(clip_model_image_embeds(model, video, params.batch_frames))
