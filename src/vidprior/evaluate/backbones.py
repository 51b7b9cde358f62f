"""The metrics' backbones, built from `params.evaluate` specs on first use and kept for the process.

Keyed on the spec's JSON, so two metrics naming the same spec (background consistency and CLIP score
share CLIP ViT-B/32) share one model, and a metric that is not asked for never loads its weights.
"""

from __future__ import annotations

import functools
from typing import Any

from vidprior.models.spec import ModelSpec


def _spec(spec_json: str) -> ModelSpec:
    return ModelSpec.model_validate_json(spec_json)


def _place(module: Any) -> Any:
    from vidprior.models.loading import default_device

    return module.to(default_device())


@functools.cache
def _clip(spec_json: str) -> Any:
    from vidprior.models.clip_image import build_clip

    parts = build_clip(_spec(spec_json))
    _place(parts.model)
    return parts


@functools.cache
def _clip_vision(spec_json: str) -> Any:
    from vidprior.models.clip_image import build_clip_vision

    return _place(build_clip_vision(_spec(spec_json)))


@functools.cache
def _aesthetic_head(spec_json: str, in_features: int) -> Any:
    from vidprior.models.aesthetic_head import build_aesthetic_head

    return _place(build_aesthetic_head(_spec(spec_json), in_features))


@functools.cache
def _dino(spec_json: str) -> Any:
    from vidprior.models.dino import build_dino

    return _place(build_dino(_spec(spec_json)))


@functools.cache
def _musiq(spec_json: str) -> Any:
    from vidprior.models.musiq import build_musiq

    return _place(build_musiq(_spec(spec_json)))


@functools.cache
def _videomae(spec_json: str) -> Any:
    from vidprior.models.videomae import build_videomae

    return _place(build_videomae(_spec(spec_json)))


def clip(spec: ModelSpec) -> Any:
    """`ClipParts` (CLIPModel + tokenizer) on the default device."""
    return _clip(spec.model_dump_json())


def clip_vision(spec: ModelSpec) -> Any:
    return _clip_vision(spec.model_dump_json())


def aesthetic_head(spec: ModelSpec, in_features: int) -> Any:
    return _aesthetic_head(spec.model_dump_json(), in_features)


def dino(spec: ModelSpec) -> Any:
    return _dino(spec.model_dump_json())


def musiq(spec: ModelSpec) -> Any:
    return _musiq(spec.model_dump_json())


def videomae(spec: ModelSpec) -> Any:
    return _videomae(spec.model_dump_json())


def clear_cache() -> None:
    """Drop every built backbone (tests; a long-lived process that switches profiles)."""
    for cached in (_clip, _clip_vision, _aesthetic_head, _dino, _musiq, _videomae):
        cached.cache_clear()
