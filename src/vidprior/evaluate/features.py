"""Per-frame features of the image backbones, preprocessed as VBench does for each of them."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from vidprior.evaluate.frames import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    batches,
    center_crop,
    normalize,
    resize_short_side,
    to_tensor,
)
from vidprior.models.clip_image import CLIP_MEAN, CLIP_STD


def _device_dtype(model: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    parameter = next(model.parameters())
    return parameter.device, parameter.dtype


def clip_pixels(frames: np.ndarray, side: int, device: torch.device) -> torch.Tensor:
    """VBench's clip_transform: short side to `side` (bicubic), centre crop, CLIP mean/std."""
    x = center_crop(resize_short_side(to_tensor(frames, device), side, "bicubic"), side)
    return normalize(x, CLIP_MEAN, CLIP_STD)


def clip_image_embeds(
    vision: Any, projection: torch.nn.Module, frames: np.ndarray, batch: int
) -> torch.Tensor:
    """Projected CLIP image embeddings [T, D] (float32, not normalised) of a CLIP vision tower."""
    device, dtype = _device_dtype(projection)
    side = vision.config.image_size
    out = []
    with torch.inference_mode():
        for part in batches(len(frames), batch):
            pixels = clip_pixels(frames[part], side, device).to(dtype)
            out.append(projection(vision(pixel_values=pixels).pooler_output).float())
    return torch.cat(out)


def clip_model_image_embeds(model: Any, frames: np.ndarray, batch: int) -> torch.Tensor:
    """CLIPModel's image embeddings [T, D]."""
    return clip_image_embeds(model.vision_model, model.visual_projection, frames, batch)


def clip_vision_image_embeds(model: Any, frames: np.ndarray, batch: int) -> torch.Tensor:
    """CLIPVisionModelWithProjection's image embeddings [T, D]."""
    return clip_image_embeds(model.vision_model, model.visual_projection, frames, batch)


def clip_text_embeds(model: Any, tokenizer: Any, texts: list[str]) -> torch.Tensor:
    """CLIPModel's text embeddings [N, D] (float32, not normalised), truncated to the tokenizer's length."""
    device, _ = _device_dtype(model)
    tokens = tokenizer(
        list(texts), padding=True, truncation=True, max_length=tokenizer.model_max_length, return_tensors="pt"
    ).to(device)
    with torch.inference_mode():
        pooled = model.text_model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
        return model.text_projection(pooled.pooler_output).float()


def dino_cls(model: Any, frames: np.ndarray, batch: int) -> torch.Tensor:
    """DINO CLS features [T, D]: VBench's dino_transform (short side to the model's size, bilinear, no
    crop, ImageNet mean/std), positional embeddings interpolated to the frame's aspect ratio."""
    device, dtype = _device_dtype(model)
    side = model.config.image_size
    out = []
    with torch.inference_mode():
        for part in batches(len(frames), batch):
            x = resize_short_side(to_tensor(frames[part], device), side, "bilinear")
            pixels = normalize(x, IMAGENET_MEAN, IMAGENET_STD).to(dtype)
            hidden = model(pixel_values=pixels, interpolate_pos_encoding=True).last_hidden_state
            out.append(hidden[:, 0].float())
    return torch.cat(out)
