"""One builder per pretrained component family: a spec (`pretrained:` or `tiny:`) in, frozen parts out.

Exports resolve lazily so `vidprior.models.spec` (used by params validation) stays cheap to import: the
builders pull in torch, diffusers and transformers, several seconds of import time.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "vidprior.models.spec": ("HashingSpec", "ModelSpec", "TextEmbedderSpec", "TinySpec"),
    "vidprior.models.loading": ("ModelUnavailableError", "hub_reachable", "load_pretrained"),
    "vidprior.models.sd15": ("SD15_ID", "SD15Parts", "build_sd15"),
    "vidprior.models.svd": ("SVD_ID", "SVDParts", "build_svd"),
    "vidprior.models.pia": ("PIA_ADAPTER_ID", "PIAParts", "build_pia"),
    "vidprior.models.animatediff": ("ANIMATEDIFF_ADAPTER_ID", "AnimateDiffParts", "build_animatediff"),
    "vidprior.models.cogvideox": ("COGVIDEOX_2B_ID", "COGVIDEOX_ID", "CogVideoXParts", "build_cogvideox"),
    "vidprior.models.clip_image": (
        "CLIP_B32_ID",
        "CLIP_L14_ID",
        "ClipParts",
        "build_clip",
        "build_clip_vision",
    ),
    "vidprior.models.dino": ("DINO_ID", "build_dino"),
    "vidprior.models.videomae": ("VIDEOMAE_ID", "build_videomae"),
    "vidprior.models.musiq": ("MUSIQ", "MusiqConfig", "build_musiq"),
    "vidprior.models.aesthetic_head": ("AESTHETIC_HEAD_FILE", "build_aesthetic_head"),
    "vidprior.models.weights_file": ("load_state_dict", "resolve_weights_file"),
    "vidprior.models.text_embedder": (
        "CLIP_TEXT_ID",
        "ClipTextEmbedder",
        "HashingTextEmbedder",
        "TextEmbedder",
        "build_text_embedder",
    ),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = [
    "AESTHETIC_HEAD_FILE",
    "ANIMATEDIFF_ADAPTER_ID",
    "CLIP_B32_ID",
    "CLIP_L14_ID",
    "CLIP_TEXT_ID",
    "COGVIDEOX_2B_ID",
    "COGVIDEOX_ID",
    "DINO_ID",
    "MUSIQ",
    "PIA_ADAPTER_ID",
    "SD15_ID",
    "SVD_ID",
    "VIDEOMAE_ID",
    "AnimateDiffParts",
    "ClipParts",
    "ClipTextEmbedder",
    "CogVideoXParts",
    "HashingSpec",
    "HashingTextEmbedder",
    "ModelSpec",
    "ModelUnavailableError",
    "MusiqConfig",
    "PIAParts",
    "SD15Parts",
    "SVDParts",
    "TextEmbedder",
    "TextEmbedderSpec",
    "TinySpec",
    "build_aesthetic_head",
    "build_animatediff",
    "build_clip",
    "build_clip_vision",
    "build_cogvideox",
    "build_dino",
    "build_musiq",
    "build_pia",
    "build_sd15",
    "build_svd",
    "build_text_embedder",
    "build_videomae",
    "hub_reachable",
    "load_pretrained",
    "load_state_dict",
    "resolve_weights_file",
]
assert sorted(__all__) == sorted(_MODULE_OF)

if TYPE_CHECKING:
    from vidprior.models.aesthetic_head import AESTHETIC_HEAD_FILE, build_aesthetic_head
    from vidprior.models.animatediff import ANIMATEDIFF_ADAPTER_ID, AnimateDiffParts, build_animatediff
    from vidprior.models.clip_image import CLIP_B32_ID, CLIP_L14_ID, ClipParts, build_clip, build_clip_vision
    from vidprior.models.cogvideox import COGVIDEOX_2B_ID, COGVIDEOX_ID, CogVideoXParts, build_cogvideox
    from vidprior.models.dino import DINO_ID, build_dino
    from vidprior.models.loading import ModelUnavailableError, hub_reachable, load_pretrained
    from vidprior.models.musiq import MUSIQ, MusiqConfig, build_musiq
    from vidprior.models.pia import PIA_ADAPTER_ID, PIAParts, build_pia
    from vidprior.models.sd15 import SD15_ID, SD15Parts, build_sd15
    from vidprior.models.spec import HashingSpec, ModelSpec, TextEmbedderSpec, TinySpec
    from vidprior.models.svd import SVD_ID, SVDParts, build_svd
    from vidprior.models.text_embedder import (
        CLIP_TEXT_ID,
        ClipTextEmbedder,
        HashingTextEmbedder,
        TextEmbedder,
        build_text_embedder,
    )
    from vidprior.models.videomae import VIDEOMAE_ID, build_videomae
    from vidprior.models.weights_file import load_state_dict, resolve_weights_file


def __getattr__(name: str) -> Any:
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_MODULE_OF[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
