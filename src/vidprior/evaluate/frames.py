"""Frame checks and the torch preprocessing the metrics share (VBench's transforms, without torchvision)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def check_video(video: np.ndarray, what: str = "video", min_frames: int = 1) -> np.ndarray:
    video = np.asarray(video)
    if video.ndim != 4 or video.shape[-1] != 3 or video.dtype != np.uint8:
        raise ValueError(f"{what}: expected uint8 RGB frames [T, H, W, 3], got {video.shape} {video.dtype}")
    if len(video) < min_frames:
        raise ValueError(f"{what}: needs at least {min_frames} frames, got {len(video)}")
    return video


def to_tensor(frames: np.ndarray, device: str | torch.device = "cpu") -> torch.Tensor:
    """uint8 [T, H, W, 3] -> float32 [T, 3, H, W] in [0, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(frames)).to(device)
    return x.permute(0, 3, 1, 2).float() / 255.0


def resize_short_side(x: torch.Tensor, side: int, mode: str = "bicubic") -> torch.Tensor:
    """[N, C, H, W] resized (aspect kept) so min(H, W) == side, antialiased as torchvision's Resize(side)."""
    height, width = x.shape[-2:]
    short = min(height, width)
    if short == side:
        return x
    # torchvision's Resize(int) truncates the long side: int(side * long / short)
    size = (side, int(side * width / height)) if height <= width else (int(side * height / width), side)
    out = F.interpolate(x, size=size, mode=mode, align_corners=False, antialias=True)
    return out.clamp(0.0, 1.0) if mode == "bicubic" else out


def center_crop(x: torch.Tensor, side: int) -> torch.Tensor:
    height, width = x.shape[-2:]
    top, left = int(round((height - side) / 2.0)), int(round((width - side) / 2.0))
    return x[..., top : top + side, left : left + side]


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    mean_t = torch.tensor(mean, dtype=x.dtype, device=x.device).reshape(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=x.dtype, device=x.device).reshape(1, -1, 1, 1)
    return (x - mean_t) / std_t


def batches(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


def consistency_score(features: torch.Tensor) -> float:
    """VBench's temporal consistency of per-frame features [T, D]: for each frame i > 0 the mean of
    max(0, cos(f_i, f_{i-1})) and max(0, cos(f_i, f_0)), averaged over those frames."""
    if len(features) < 2:
        raise ValueError(f"temporal consistency needs at least 2 frames, got {len(features)}")
    f = F.normalize(features.float(), dim=-1)
    previous = (f[1:] * f[:-1]).sum(-1).clamp(min=0.0)
    first = (f[1:] * f[:1]).sum(-1).clamp(min=0.0)
    return float(((previous + first) / 2).mean())
