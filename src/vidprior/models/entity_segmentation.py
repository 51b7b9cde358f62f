"""Panda-Dense's entity labellers: a panoptic first-frame segmenter and SAM2 video propagation.

The paper segments the first frame with EntitySeg CropFormer (not in transformers) and propagates
the masks with SAM2. Here the segmenter is Mask2Former (`Mask2FormerForUniversalSegmentation`, paper
profile `facebook/mask2former-swin-large-coco-panoptic`) with its image processor's panoptic
post-processing, every panoptic segment (thing or stuff) taken as an entity; the propagator is
`Sam2VideoModel` (`facebook/sam2.1-hiera-large`) prompted with one mask per entity on frame 0.

SAM2's own processor (`Sam2VideoProcessor`) needs torchvision, which is not a dependency of this
project (its CPU wheel pins a different torch), so `Sam2VideoParts` does the processor's three steps
itself, from the model config: frames resized to `config.image_size` squared (bilinear, antialiased)
and ImageNet-normalised, as `Sam2VideoVideoProcessor`; a mask prompt resized the same way and
binarised at 0.5, as `process_new_mask_for_video_frame`; the low-resolution mask logits resized
bilinearly to the frame, as `post_process_masks(binarize=False)`. The inference session, the mask
prompts and the propagation are transformers' own (`Sam2VideoInferenceSession`,
`propagate_in_video_iterator`).

Tiny specs build the same classes from small configs with seeded random weights. The tiny
Mask2Former is initialised with std 0.5 instead of 0.02: with the default every query scores about
1 / (labels + 1) and no segment would pass a 0.5 threshold, so the tiny path would never reach SAM2.
The tiny SAM2 keeps the two sizes its code fixes: memory features of 64 channels (the memory
attention's key/value width is hard-coded) and a hidden size that is a multiple of it (object
pointers are split into 64-channel tokens).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F
from transformers import (
    Mask2FormerConfig,
    Mask2FormerForUniversalSegmentation,
    Sam2HieraDetConfig,
    Sam2VideoConfig,
    Sam2VideoInferenceSession,
    Sam2VideoModel,
    Sam2VisionConfig,
    SwinConfig,
)
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from transformers.utils import is_torchvision_available

from vidprior.models.loading import finish_tiny, load_pretrained, seeded
from vidprior.models.spec import ModelSpec

# The image processor's default backend needs torchvision; its PIL twin gives the same outputs.
if is_torchvision_available():
    from transformers import Mask2FormerImageProcessor as PanopticProcessor
else:
    from transformers import Mask2FormerImageProcessorPil as PanopticProcessor

ENTITY_SEGMENTER_ID = "facebook/mask2former-swin-large-coco-panoptic"
SAM2_ID = "facebook/sam2.1-hiera-large"
_TINY_LABELS = 6
_TINY_SAM2_SIZE = 64  # input side; SAM2's image encoder downsamples by 4, 8 and 16 for its features


class NonFiniteOutputError(RuntimeError):
    """A model produced NaN or infinite logits (e.g. half-precision overflow) for one input."""


@dataclass(frozen=True)
class EntitySegmenterParts:
    model: Mask2FormerForUniversalSegmentation
    processor: PanopticProcessor
    model_id: str

    def segment(self, frame: np.ndarray, threshold: float) -> tuple[np.ndarray, dict[int, float]]:
        """Panoptic segments of one RGB frame (H, W, 3) uint8.

        Returns (segment ids (H, W) int32, 0 where no segment; score of each id). Segments score
        strictly above `threshold` (transformers' rule); stuff classes are not fused, so every
        segment is its own entity.
        """
        inputs = self.processor(images=[frame], return_tensors="pt")
        device, dtype = self.model.device, self.model.dtype
        pixel_mask = inputs["pixel_mask"].to(device)
        with torch.inference_mode():
            out = self.model(pixel_values=inputs["pixel_values"].to(device, dtype), pixel_mask=pixel_mask)
        classes, masks = out.class_queries_logits.float(), out.masks_queries_logits.float()
        if not (torch.isfinite(classes).all() and torch.isfinite(masks).all()):
            raise NonFiniteOutputError(f"{self.model_id}: non-finite panoptic logits")
        # The processor pads the resized frame to a multiple of 32; its post-processing stretches
        # the padded mask to the target size, so the padding is cut off first.
        padded_h, padded_w = pixel_mask.shape[-2:]
        valid_h = int(pixel_mask[0].any(dim=1).sum())
        valid_w = int(pixel_mask[0].any(dim=0).sum())
        rows = math.ceil(valid_h * masks.shape[-2] / padded_h)
        cols = math.ceil(valid_w * masks.shape[-1] / padded_w)
        outputs = SimpleNamespace(class_queries_logits=classes, masks_queries_logits=masks[..., :rows, :cols])
        result = self.processor.post_process_panoptic_segmentation(
            outputs, threshold=threshold, label_ids_to_fuse=set(), target_sizes=[frame.shape[:2]]
        )[0]
        ids = result["segmentation"].to(torch.int32).clamp(min=0).cpu().numpy()
        return ids, {int(s["id"]): float(s["score"]) for s in result["segments_info"]}


@dataclass(frozen=True)
class Sam2VideoParts:
    model: Sam2VideoModel
    model_id: str

    @property
    def image_size(self) -> int:
        size = self.model.config.image_size
        return int(size if isinstance(size, int) else size[0])

    def _resize(self, images: torch.Tensor) -> torch.Tensor:
        side = self.image_size
        return F.interpolate(images, size=(side, side), mode="bilinear", align_corners=False, antialias=True)

    def preprocess(self, frames: np.ndarray) -> torch.Tensor:
        """(T, H, W, 3) uint8 -> (T, 3, S, S) normalised pixel values on the model's device."""
        device, dtype = self.model.device, self.model.dtype
        mean = torch.tensor(IMAGENET_DEFAULT_MEAN, device=device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_DEFAULT_STD, device=device).view(1, 3, 1, 1)
        out = []
        with torch.no_grad():
            for start in range(0, len(frames), 8):  # bounds the float copy of full-size frames
                chunk = torch.from_numpy(np.ascontiguousarray(frames[start : start + 8])).to(device)
                chunk = self._resize(chunk.permute(0, 3, 1, 2).float()) / 255.0
                out.append(((chunk - mean) / std).to(dtype))
        return torch.cat(out)

    def propagate(
        self, frames: np.ndarray, masks: np.ndarray, obj_ids: Sequence[int]
    ) -> Iterator[tuple[int, torch.Tensor]]:
        """Prompt each object with its frame-0 mask and track it through the clip.

        Args:
            frames: (T, H, W, 3) uint8 RGB.
            masks: (N, H, W) bool, one frame-0 mask per object.
            obj_ids: the N object ids (any distinct integers).

        Yields:
            (frame index, mask logits (N, H, W) float32 on the model's device), frames in order.

        Raises:
            NonFiniteOutputError: on NaN or infinite object scores or mask logits.
        """
        frames = np.asarray(frames)
        masks = np.asarray(masks, dtype=bool)
        if masks.ndim != 3 or masks.shape[1:] != frames.shape[1:3] or len(masks) != len(obj_ids):
            raise ValueError(
                f"need one (H, W) = {frames.shape[1:3]} mask per object id, got masks {masks.shape} "
                f"for {len(obj_ids)} id(s)"
            )
        height, width = frames.shape[1:3]
        device = self.model.device
        session = Sam2VideoInferenceSession(
            video=self.preprocess(frames),
            video_height=height,
            video_width=width,
            inference_device=device,
            inference_state_device=device,
            video_storage_device=device,
            dtype=self.model.dtype,
        )
        with torch.no_grad():
            for obj_id, mask in zip(obj_ids, masks, strict=True):
                index = session.obj_id_to_idx(int(obj_id))
                prompt = self._resize(torch.from_numpy(mask).to(device)[None, None].float()) >= 0.5
                session.add_mask_inputs(index, 0, prompt.float())
                session.remove_point_inputs(index, 0)
        session.obj_with_new_inputs = [int(i) for i in obj_ids]
        # Sam2VideoModel.forward runs under inference mode itself.
        for output in self.model.propagate_in_video_iterator(session, start_frame_idx=0):
            # SAM2 replaces the masks of objects it scores absent by a constant, so a NaN object score
            # would pass as "absent everywhere": both are checked.
            if not (
                torch.isfinite(output.object_score_logits).all() and torch.isfinite(output.pred_masks).all()
            ):
                raise NonFiniteOutputError(
                    f"{self.model_id}: non-finite mask logits on frame {output.frame_idx}"
                )
            logits = F.interpolate(
                output.pred_masks.float(), size=(height, width), mode="bilinear", align_corners=False
            )[:, 0]
            yield int(output.frame_idx), logits


def _tiny_mask2former(seed: int) -> tuple[Mask2FormerForUniversalSegmentation, PanopticProcessor]:
    backbone = SwinConfig(
        image_size=64,
        patch_size=4,
        embed_dim=8,
        depths=[1, 1, 1, 1],
        num_heads=[1, 1, 1, 1],
        window_size=2,
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )
    labels = {i: f"entity_{i}" for i in range(_TINY_LABELS)}
    config = Mask2FormerConfig(
        backbone_config=backbone,
        feature_size=32,  # the pixel decoder's GroupNorm has 32 groups
        mask_feature_size=32,
        hidden_dim=32,
        encoder_feedforward_dim=32,
        encoder_layers=1,
        decoder_layers=2,
        num_attention_heads=2,
        dim_feedforward=32,
        num_queries=8,
        id2label=labels,
        label2id={name: i for i, name in labels.items()},
        init_std=0.5,
    )
    with seeded(seed):
        model = Mask2FormerForUniversalSegmentation(config)
    return model, PanopticProcessor(size={"shortest_edge": 64, "longest_edge": 128})


def _tiny_sam2(seed: int) -> Sam2VideoModel:
    side = _TINY_SAM2_SIZE
    backbone = Sam2HieraDetConfig(
        hidden_size=8,
        image_size=[side, side],
        blocks_per_stage=[1, 1, 2, 1],
        embed_dim_per_stage=[8, 16, 32, 64],
        num_attention_heads_per_stage=[1, 1, 1, 1],
        window_size_per_stage=[4, 4, 4, 2],
        # A global block must not open a query-pooling stage (its window would be 0 // stride).
        global_attention_blocks=[3],
        window_positional_embedding_background_size=[2, 2],
    )
    vision = Sam2VisionConfig(
        backbone_config=backbone,
        backbone_channel_list=[64, 32, 16, 8],
        backbone_feature_sizes=[[side // 4] * 2, [side // 8] * 2, [side // 16] * 2],
        fpn_hidden_size=128,
    )
    config = Sam2VideoConfig(
        vision_config=vision,
        prompt_encoder_config=dict(hidden_size=128, image_size=side, patch_size=16, mask_input_channels=4),
        mask_decoder_config=dict(hidden_size=128, mlp_dim=64, num_attention_heads=2, iou_head_hidden_dim=32),
        image_size=side,
        num_maskmem=3,
        memory_attention_hidden_size=128,
        memory_attention_num_layers=1,
        memory_attention_feed_forward_hidden_size=64,
        memory_attention_rope_feat_sizes=[side // 16, side // 16],
        memory_encoder_hidden_size=128,
        memory_encoder_output_channels=64,
        mask_downsampler_embed_dim=128,
        memory_fuser_embed_dim=128,
        memory_fuser_intermediate_dim=64,
        max_object_pointers_in_encoder=4,
    )
    with seeded(seed):
        return Sam2VideoModel(config)


def build_entity_segmenter(spec: ModelSpec) -> EntitySegmenterParts:
    if spec.tiny is not None:
        model, processor = _tiny_mask2former(spec.tiny.seed)
        model = finish_tiny(model, spec)
    else:
        model = load_pretrained(Mask2FormerForUniversalSegmentation, spec).eval()
        processor = load_pretrained(PanopticProcessor, spec)
    return EntitySegmenterParts(model=model, processor=processor, model_id=spec.model_id)


def build_sam2_video(spec: ModelSpec) -> Sam2VideoParts:
    if spec.tiny is not None:
        model = finish_tiny(_tiny_sam2(spec.tiny.seed), spec)
    else:
        model = load_pretrained(Sam2VideoModel, spec).eval()
    return Sam2VideoParts(model=model, model_id=spec.model_id)
