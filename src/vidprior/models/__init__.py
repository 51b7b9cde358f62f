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
    "ANIMATEDIFF_ADAPTER_ID",
    "CLIP_TEXT_ID",
    "COGVIDEOX_2B_ID",
    "COGVIDEOX_ID",
    "PIA_ADAPTER_ID",
    "SD15_ID",
    "SVD_ID",
    "AnimateDiffParts",
    "ClipTextEmbedder",
    "CogVideoXParts",
    "HashingSpec",
    "HashingTextEmbedder",
    "ModelSpec",
    "ModelUnavailableError",
    "PIAParts",
    "SD15Parts",
    "SVDParts",
    "TextEmbedder",
    "TextEmbedderSpec",
    "TinySpec",
    "build_animatediff",
    "build_cogvideox",
    "build_pia",
    "build_sd15",
    "build_svd",
    "build_text_embedder",
    "hub_reachable",
    "load_pretrained",
]
assert sorted(__all__) == sorted(_MODULE_OF)

if TYPE_CHECKING:
    from vidprior.models.animatediff import ANIMATEDIFF_ADAPTER_ID, AnimateDiffParts, build_animatediff
    from vidprior.models.cogvideox import COGVIDEOX_2B_ID, COGVIDEOX_ID, CogVideoXParts, build_cogvideox
    from vidprior.models.loading import ModelUnavailableError, hub_reachable, load_pretrained
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


def __getattr__(name: str) -> Any:
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_MODULE_OF[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
