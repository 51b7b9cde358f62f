"""Depth Anything V2 (depth-anything/Depth-Anything-V2-Large-hf): Panda-Dense's per-frame depth estimator.

The model (`DepthAnythingForDepthEstimation`, a DINOv2 backbone with a DPT head) predicts relative
*inverse* depth: the "relative" head ends in a ReLU, so the output is a non-negative disparity,
larger = nearer, known only up to an unknown scale and shift per image (the model is trained with
an affine-invariant loss). `DepthAnythingParts.disparity` returns it per frame, resized back to the
frame with the image processor's `post_process_depth_estimation` (bicubic, so values just below 0
can appear at sharp edges); turning it into depth in [0, 1] is the caller's job (per clip, see
`vidprior.udpdiff.depth`).

The image processor is `DPTImageProcessor`: resize keeping the aspect ratio to sides that are
multiples of the patch size (14, about 518 px), bicubic, ImageNet mean/std; its default backend
needs torchvision, which is not a dependency here, so its PIL twin is used when torchvision is
missing (same outputs).

A tiny spec builds the same classes from a small config: a 4-layer DINOv2 of width 32 with 7 px
patches, a 28 px processor, seeded random weights initialised with std 0.1 instead of 0.02 (with
the default the ReLU head outputs values around 1e-7, a third of them exactly 0).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, PILImageResampling
from transformers.modeling_outputs import DepthEstimatorOutput
from transformers.utils import is_torchvision_available

from vidprior.models.loading import finish_tiny, load_pretrained, seeded
from vidprior.models.spec import ModelSpec

if is_torchvision_available():
    from transformers import DPTImageProcessor as DepthProcessor
else:
    from transformers import DPTImageProcessorPil as DepthProcessor

DEPTH_ANYTHING_ID = "depth-anything/Depth-Anything-V2-Large-hf"
_TINY_PATCH, _TINY_SIDE, _TINY_STD = 7, 28, 0.1


@dataclass(frozen=True)
class DepthAnythingParts:
    model: DepthAnythingForDepthEstimation
    processor: DepthProcessor
    model_id: str

    def disparity(self, frames: np.ndarray, batch_frames: int = 8) -> np.ndarray:
        """(T, H, W, 3) uint8 RGB -> (T, H, W) float32 relative disparity (larger = nearer), per frame.

        Frames go through the model `batch_frames` at a time, on the model's device and dtype.
        """
        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(f"expected (T, H, W, 3) uint8 RGB frames, got {frames.shape} {frames.dtype}")
        if batch_frames < 1:
            raise ValueError(f"batch_frames must be >= 1, got {batch_frames}")
        height, width = frames.shape[1:3]
        device, dtype = self.model.device, self.model.dtype
        out = []
        for start in range(0, len(frames), batch_frames):
            chunk = list(frames[start : start + batch_frames])
            pixels = self.processor(images=chunk, return_tensors="pt")["pixel_values"]
            with torch.inference_mode():
                predicted = self.model(pixel_values=pixels.to(device, dtype)).predicted_depth
            # Bicubic resizing in half precision is not implemented on the CPU, and loses digits.
            resized = self.processor.post_process_depth_estimation(
                DepthEstimatorOutput(predicted_depth=predicted.float()),
                target_sizes=[(height, width)] * len(chunk),
            )
            out.extend(r["predicted_depth"].reshape(height, width).cpu().numpy() for r in resized)
        return np.stack(out).astype(np.float32, copy=False)


def _tiny(seed: int) -> tuple[DepthAnythingForDepthEstimation, DepthProcessor]:
    backbone = Dinov2Config(
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=4,
        mlp_ratio=2,
        image_size=_TINY_SIDE,
        patch_size=_TINY_PATCH,
        out_indices=[1, 2, 3, 4],  # one feature map per neck stage, as V2's [5, 12, 18, 24] of 24
        reshape_hidden_states=False,
        initializer_range=_TINY_STD,
    )
    config = DepthAnythingConfig(
        backbone_config=backbone,
        patch_size=_TINY_PATCH,
        reassemble_hidden_size=32,
        neck_hidden_sizes=[8, 16, 32, 32],
        fusion_hidden_size=16,
        head_hidden_size=8,
        depth_estimation_type="relative",
        initializer_range=_TINY_STD,
    )
    with seeded(seed):
        model = DepthAnythingForDepthEstimation(config)
    processor = DepthProcessor(
        size={"height": _TINY_SIDE, "width": _TINY_SIDE},
        keep_aspect_ratio=True,
        ensure_multiple_of=_TINY_PATCH,
        resample=PILImageResampling.BICUBIC,
        image_mean=list(IMAGENET_DEFAULT_MEAN),
        image_std=list(IMAGENET_DEFAULT_STD),
    )
    return model, processor


def build_depth_anything(spec: ModelSpec) -> DepthAnythingParts:
    if spec.tiny is not None:
        model, processor = _tiny(spec.tiny.seed)
        model = finish_tiny(model, spec)
    else:
        model = load_pretrained(DepthAnythingForDepthEstimation, spec).eval()
        processor = load_pretrained(DepthProcessor, spec)
    return DepthAnythingParts(model=model, processor=processor, model_id=spec.model_id)
