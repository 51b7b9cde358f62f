"""Video-LLaVA (LanguageBind/Video-LLaVA-7B-hf): the re-captioner of Panda-Dense's long captions.

A tiny spec builds the same classes (`VideoLlavaForConditionalGeneration`, `VideoLlavaProcessor`)
from a small LLaMA text config and a small CLIP vision config, with a byte-fallback LLaMA tokenizer
made in code that has the processor's `<image>` / `<video>` tokens; random weights.
"""

from __future__ import annotations

import string
from dataclasses import dataclass

from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    LlamaTokenizer,
    VideoLlavaConfig,
    VideoLlavaForConditionalGeneration,
    VideoLlavaImageProcessor,
    VideoLlavaProcessor,
    VideoLlavaVideoProcessor,
)

from vidprior.models.loading import finish_tiny, load_pretrained, seeded
from vidprior.models.spec import ModelSpec

VIDEO_LLAVA_ID = "LanguageBind/Video-LLaVA-7B-hf"
IMAGE_TOKEN, VIDEO_TOKEN, PAD_TOKEN = "<image>", "<video>", "<pad>"
# Tiny vision tower: 32 px frames in 8 px patches, so a frame is 16 patch tokens (+ CLS).
_TINY_IMAGE, _TINY_PATCH = 32, 8


@dataclass(frozen=True)
class VideoLlavaParts:
    model: VideoLlavaForConditionalGeneration
    processor: VideoLlavaProcessor
    model_id: str


def tiny_llama_tokenizer() -> LlamaTokenizer:
    """LLaMA's byte-fallback BPE with a character vocabulary: any text encodes, nothing is <unk>."""
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    vocab.update({f"<0x{b:02X}>": 3 + b for b in range(256)})
    for char in ["\u2581", *string.ascii_letters, *string.digits, *string.punctuation]:
        vocab.setdefault(char, len(vocab))
    tokenizer = LlamaTokenizer(vocab=vocab, merges=[])
    tokenizer.add_special_tokens({"pad_token": PAD_TOKEN, "extra_special_tokens": [IMAGE_TOKEN, VIDEO_TOKEN]})
    return tokenizer


def _tiny(seed: int) -> tuple[VideoLlavaForConditionalGeneration, VideoLlavaProcessor]:
    tokenizer = tiny_llama_tokenizer()
    size = {"shortest_edge": _TINY_IMAGE}
    crop = {"height": _TINY_IMAGE, "width": _TINY_IMAGE}
    processor = VideoLlavaProcessor(
        image_processor=VideoLlavaImageProcessor(size=size, crop_size=crop),
        video_processor=VideoLlavaVideoProcessor(size=size, crop_size=crop),
        tokenizer=tokenizer,
        patch_size=_TINY_PATCH,
        vision_feature_select_strategy="default",
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
        video_seq_length=8 * (patches + 1),  # Video-LLaVA's 8 frames, CLS kept per frame
    )
    with seeded(seed):
        model = VideoLlavaForConditionalGeneration(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, processor


def build_video_llava(spec: ModelSpec) -> VideoLlavaParts:
    if spec.tiny is not None:
        model, processor = _tiny(spec.tiny.seed)
        model = finish_tiny(model, spec)
    else:
        model = load_pretrained(VideoLlavaForConditionalGeneration, spec).eval()
        processor = load_pretrained(VideoLlavaProcessor, spec)
    return VideoLlavaParts(model=model, processor=processor, model_id=spec.model_id)
