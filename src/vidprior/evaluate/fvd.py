"""FVD: the Frechet distance between Gaussian fits of video features of two sets of videos.

The usual FVD uses an I3D network; the backbone here is VideoMAE (`params.evaluate.videomae`, in the
paper profile MCG-NJU/videomae-base-finetuned-kinetics): each video is sampled to the backbone's
frame count (evenly over its length, repeating frames of a shorter video), each frame resized so the
short side is the backbone's size and centre-cropped, ImageNet mean/std, and the video's feature is
the mean over tokens of the last hidden state. Values are therefore not comparable with I3D FVDs.

d = |mu_g - mu_r|^2 + tr(S_g + S_r - 2 sqrt(S_g S_r)), S the covariances (ddof 1; a single video
has a zero covariance). Sets smaller than the feature width have singular covariances: `eps` is
added to both diagonals and the real part of the matrix square root taken.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import scipy.linalg
import torch

from vidprior.evaluate import backbones
from vidprior.evaluate.frames import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    center_crop,
    check_video,
    normalize,
    resize_short_side,
    to_tensor,
)

if TYPE_CHECKING:
    from vidprior.config import Params


def sample_frame_indices(n_frames: int, count: int) -> np.ndarray:
    return np.linspace(0, n_frames - 1, count).round().astype(int)


def video_features(videos: list[np.ndarray], params: Params) -> np.ndarray:
    """[N, D] float64 VideoMAE features, one row per video."""
    model = backbones.videomae(params.evaluate.videomae)
    parameter = next(model.parameters())
    frames = params.evaluate.fvd.frames or model.config.num_frames
    side = model.config.image_size
    rows = []
    with torch.inference_mode():
        for i, video in enumerate(videos):
            video = check_video(video, f"video {i}")
            clip = video[sample_frame_indices(len(video), frames)]
            x = center_crop(resize_short_side(to_tensor(clip, parameter.device), side, "bilinear"), side)
            x = normalize(x, IMAGENET_MEAN, IMAGENET_STD).to(parameter.dtype)
            hidden = model(pixel_values=x.unsqueeze(0)).last_hidden_state  # [1, tokens, D]
            rows.append(hidden.float().mean(dim=1)[0].cpu().numpy())
    return np.stack(rows).astype(np.float64)


def gaussian(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = features.mean(axis=0)
    if len(features) < 2:
        return mean, np.zeros((features.shape[1], features.shape[1]))
    return mean, np.cov(features, rowvar=False, ddof=1)


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, eps: float = 1e-6
) -> float:
    identity = np.eye(len(mu1))
    sigma1, sigma2 = sigma1 + eps * identity, sigma2 + eps * identity
    covmean = np.real(scipy.linalg.sqrtm(sigma1 @ sigma2))
    distance = np.sum((mu1 - mu2) ** 2) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean)
    # Rounding in sqrtm can leave an identical pair a hair below zero.
    return float(max(distance, 0.0))


def features_fvd(generated: np.ndarray, reference: np.ndarray, eps: float = 1e-6) -> float:
    """Frechet distance between two feature sets [N, D] and [M, D]."""
    if len(generated) == 0 or len(reference) == 0:
        raise ValueError("FVD needs at least one generated and one reference video")
    return frechet_distance(*gaussian(generated), *gaussian(reference), eps=eps)


def fvd(generated: list[np.ndarray], reference: list[np.ndarray], params: Params) -> float:
    """FVD of the generated videos against the reference videos (uint8 [T, H, W, 3] each)."""
    if not generated or not reference:
        raise ValueError(
            f"FVD needs at least one video in each set, got {len(generated)} generated and "
            f"{len(reference)} reference"
        )
    features = video_features(list(generated) + list(reference), params)
    return features_fvd(features[: len(generated)], features[len(generated) :], params.evaluate.fvd.eps)
