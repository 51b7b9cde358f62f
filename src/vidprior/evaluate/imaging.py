"""VBench Imaging Quality: MUSIQ per frame, averaged, divided by 100.

VBench's "longer" preprocessing: a frame whose long side exceeds 512 px is shrunk (bilinear, no
antialiasing, as torchvision's tensor Resize with antialias=False) so that side is 512; values in
[0, 1]; MUSIQ (`vidprior.models.musiq`, VBench's SPAQ checkpoint in the paper profile) scores 0..100.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from vidprior.evaluate import backbones
from vidprior.evaluate.frames import batches, check_video, to_tensor

if TYPE_CHECKING:
    from vidprior.config import EvaluateParams


def shrink_long_side(x: torch.Tensor, max_side: int) -> torch.Tensor:
    height, width = x.shape[-2:]
    if max(height, width) <= max_side:
        return x
    scale = max_side / max(height, width)
    return F.interpolate(
        x, size=(int(scale * height), int(scale * width)), mode="bilinear", align_corners=False
    )


def imaging_quality(video: np.ndarray, params: EvaluateParams) -> float:
    video = check_video(video)
    model = backbones.musiq(params.musiq)
    parameter = next(model.parameters())
    scores = []
    with torch.inference_mode():
        for part in batches(len(video), params.batch_frames):
            x = shrink_long_side(to_tensor(video[part], parameter.device), params.imaging_quality.max_side)
            scores.append(model(x.to(parameter.dtype)).float())
    return float(torch.cat(scores).mean() / 100)
