"""Video-LLaVA (LanguageBind/Video-LLaVA-7B-hf): the re-captioner of Panda-Dense's long captions.

A tiny spec builds the same classes (`VideoLlavaForConditionalGeneration`, `VideoLlavaImageProcessor`,
`LlamaTokenizer`) from a small LLaMA text config and a small CLIP vision config, with a byte-fallback
LLaMA tokenizer made in code that has the `<image>` / `<video>` tokens; random weights.

`VideoLlavaProcessor` is not used: in transformers 5 it prepares videos with
`VideoLlavaVideoProcessor`, which needs torchvision, and torchvision has no build for the pinned CPU
torch. `video_inputs` builds the same model inputs from the parts: every frame goes through the
image processor (the same CLIP resize, centre crop and normalisation the video processor applies,
with PIL's bicubic instead of torchvision's), and `<video>` is expanded to one token per patch plus
CLIP's class token per frame, as `VideoLlavaProcessor.replace_video_token` does.
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    LlamaTokenizer,
    PreTrainedTokenizerBase,
    VideoLlavaConfig,
    VideoLlavaForConditionalGeneration,
    VideoLlavaImageProcessor,
)

from vidprior.models.loading import finish_tiny, load_pretrained, seeded
from vidprior.models.spec import ModelSpec

VIDEO_LLAVA_ID = "LanguageBind/Video-LLaVA-7B-hf"
IMAGE_TOKEN, VIDEO_TOKEN, PAD_TOKEN = "<image>", "<video>", "<pad>"
# Tiny vision tower: 32 px frames in 8 px patches, so a frame is 16 patch tokens (+ CLS).
_TINY_IMAGE, _TINY_PATCH = 32, 8
# CLIP's class token, which Video-LLaVA keeps for every video frame (images drop it).
_CLS_TOKENS = 1


@dataclass(frozen=True)
class VideoLlavaParts:
    model: VideoLlavaForConditionalGeneration
    image_processor: VideoLlavaImageProcessor
    tokenizer: PreTrainedTokenizerBase
    model_id: str


def chat_prompt(instruction: str) -> str:
    """Video-LLaVA's single-turn chat format with the video in front of the instruction."""
    return f"USER: {VIDEO_TOKEN}\n{instruction} ASSISTANT:"


def tiny_llama_tokenizer() -> LlamaTokenizer:
    """LLaMA's byte-fallback BPE with a character vocabulary: any text encodes, nothing is <unk>."""
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    vocab.update({f"<0x{b:02X}>": 3 + b for b in range(256)})
    for char in ["\u2581", *string.ascii_letters, *string.digits, *string.punctuation]:
        vocab.setdefault(char, len(vocab))
    tokenizer = LlamaTokenizer(vocab=vocab, merges=[])
    tokenizer.add_special_tokens({"pad_token": PAD_TOKEN, "extra_special_tokens": [IMAGE_TOKEN, VIDEO_TOKEN]})
    return tokenizer


def _tiny(seed: int) -> tuple[VideoLlavaForConditionalGeneration, VideoLlavaImageProcessor, LlamaTokenizer]:
    tokenizer = tiny_llama_tokenizer()
    image_processor = VideoLlavaImageProcessor(
        size={"shortest_edge": _TINY_IMAGE}, crop_size={"height": _TINY_IMAGE, "width": _TINY_IMAGE}
    )
    patches = (_TINY_IMAGE // _TINY_PATCH) ** 2
    config = VideoLlavaConfig(
        vision_config=CLIPVisionConfig(
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,  # the features come from the second-to-last layer
            num_attention_heads=4,
            image_size=_TINY_IMAGE,
            patch_size=_TINY_PATCH,
            projection_dim=32,
        ),
        text_config=LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=1024,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ),
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        video_token_index=tokenizer.convert_tokens_to_ids(VIDEO_TOKEN),
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
        image_seq_length=patches,
        video_seq_length=8 * (patches + _CLS_TOKENS),  # Video-LLaVA's 8 frames, CLS kept per frame
    )
    with seeded(seed):
        model = VideoLlavaForConditionalGeneration(config)
    return model, image_processor, tokenizer


def _checked(parts: VideoLlavaParts) -> VideoLlavaParts:
    """Batched generation needs left padding and a pad token; the video token must be the model's."""
    tokenizer, config = parts.tokenizer, parts.model.config
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    parts.model.generation_config.pad_token_id = tokenizer.pad_token_id
    video_id = tokenizer.convert_tokens_to_ids(VIDEO_TOKEN)
    if video_id != config.video_token_id:
        raise ValueError(
            f"{parts.model_id}: the tokenizer's {VIDEO_TOKEN} is id {video_id}, the model expects "
            f"video_token_id {config.video_token_id}"
        )
    crop = parts.image_processor.crop_size
    size = config.vision_config.image_size
    if (crop["height"], crop["width"]) != (size, size):
        raise ValueError(
            f"{parts.model_id}: the image processor crops to {crop['height']}x{crop['width']}, the vision "
            f"tower takes {size}x{size}"
        )
    return parts


def build_video_llava(spec: ModelSpec) -> VideoLlavaParts:
    if spec.tiny is not None:
        model, image_processor, tokenizer = _tiny(spec.tiny.seed)
        model = finish_tiny(model, spec)
    else:
        model = load_pretrained(VideoLlavaForConditionalGeneration, spec).eval()
        image_processor = load_pretrained(VideoLlavaImageProcessor, spec)
        tokenizer = load_pretrained(LlamaTokenizer, spec)
    return _checked(VideoLlavaParts(model, image_processor, tokenizer, spec.model_id))


def video_inputs(
    parts: VideoLlavaParts, videos: Sequence[np.ndarray], prompts: Sequence[str]
) -> dict[str, torch.Tensor]:
    """`input_ids`, `attention_mask` (left-padded) and `pixel_values_videos` (B, T, 3, S, S) on the
    model's device and dtype, for videos (T, H, W, 3) uint8 of one length and prompts with one `<video>`."""
    if len(videos) != len(prompts) or not videos:
        raise ValueError(f"need one prompt per video, got {len(videos)} videos and {len(prompts)} prompts")
    lengths = {len(v) for v in videos}
    if len(lengths) != 1:
        raise ValueError(f"videos of one batch must have the same number of frames, got {sorted(lengths)}")
    bad = [p for p in prompts if p.count(VIDEO_TOKEN) != 1]
    if bad:
        raise ValueError(f"each prompt needs exactly one {VIDEO_TOKEN}, got {bad[0]!r}")
    frames = [frame for video in videos for frame in video]
    pixels = parts.image_processor(images=frames, return_tensors="pt", return_legacy_image_output=False)
    pixels = pixels["pixel_values"]
    _, channels, height, width = pixels.shape
    patch = parts.model.config.vision_config.patch_size
    per_frame = (height // patch) * (width // patch) + _CLS_TOKENS
    count = lengths.pop()
    texts = [p.replace(VIDEO_TOKEN, VIDEO_TOKEN * (per_frame * count)) for p in prompts]
    encoded = parts.tokenizer(texts, return_tensors="pt", padding=True)
    model = parts.model
    return {
        "input_ids": encoded["input_ids"].to(model.device),
        "attention_mask": encoded["attention_mask"].to(model.device),
        "pixel_values_videos": pixels.reshape(len(videos), count, channels, height, width).to(
            device=model.device, dtype=model.dtype
        ),
    }


@dataclass(frozen=True)
class GeneratedText:
    text: str  # the new tokens decoded, special tokens skipped, whitespace collapsed
    truncated: bool  # stopped by max_new_tokens, not by an end-of-sequence token


@torch.inference_mode()
def generate_captions(
    parts: VideoLlavaParts, videos: Sequence[np.ndarray], instruction: str, max_new_tokens: int
) -> list[GeneratedText]:
    """Greedy answers to `instruction` for each video (one batch), decoded from the new tokens only."""
    inputs = video_inputs(parts, videos, [chat_prompt(instruction)] * len(videos))
    out = parts.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    new = out[:, inputs["input_ids"].shape[1] :].cpu()
    eos = parts.model.generation_config.eos_token_id
    eos = {eos} if isinstance(eos, int) else set(eos or ())
    texts = parts.tokenizer.batch_decode(new, skip_special_tokens=True)
    return [
        GeneratedText(" ".join(text.split()), not eos.intersection(row.tolist()))
        for text, row in zip(texts, new, strict=True)
    ]
