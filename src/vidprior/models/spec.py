"""How params name a pretrained component: a hub id / local path, or a tiny random config."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class StrictModel(BaseModel):
    """Base for every params model: unknown keys and loose types are errors, not surprises."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


def _dtype_suffix(dtype: str) -> str:
    # Part of the id because outputs (embeddings, checkpoints keyed by this id) depend on it.
    return "" if dtype == "float32" else f":{dtype}"


class TinySpec(StrictModel):
    seed: int = Field(0, ge=0)


class ModelSpec(StrictModel):
    """Exactly one of `pretrained` (hub id or local directory) or `tiny` (random weights, small config)."""

    pretrained: str | None = None
    revision: str | None = None
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    tiny: TinySpec | None = None

    @model_validator(mode="after")
    def _exactly_one_source(self) -> ModelSpec:
        if (self.pretrained is None) == (self.tiny is None):
            raise ValueError("set exactly one of 'pretrained' (hub id or local path) or 'tiny' ({seed: N})")
        if self.revision is not None and self.pretrained is None:
            raise ValueError("'revision' only applies to a 'pretrained' model")
        return self

    @property
    def model_id(self) -> str:
        """Provenance string recorded in manifests."""
        if self.pretrained is not None:
            return f"{self.pretrained}@{self.revision or 'main'}{_dtype_suffix(self.dtype)}"
        return f"tiny-random(seed={self.tiny.seed}){_dtype_suffix(self.dtype)}"


class HashingSpec(StrictModel):
    dim: int = Field(512, ge=16, le=65536)
    ngram_min: int = Field(3, ge=1)
    ngram_max: int = Field(5, ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> HashingSpec:
        if self.ngram_max < self.ngram_min:
            raise ValueError("'ngram_max' must be >= 'ngram_min'")
        return self


class TextEmbedderSpec(StrictModel):
    """Prompt embedder: a stateless hashing embedder (tiny profile) or a CLIP text encoder."""

    hashing: HashingSpec | None = None
    pretrained: str | None = None
    revision: str | None = None
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    tiny: TinySpec | None = None
    batch_size: int = Field(256, ge=1)

    @model_validator(mode="after")
    def _exactly_one_source(self) -> TextEmbedderSpec:
        chosen = [k for k in ("hashing", "pretrained", "tiny") if getattr(self, k) is not None]
        if len(chosen) != 1:
            raise ValueError("set exactly one of 'hashing', 'pretrained' or 'tiny'")
        return self

    @property
    def model_id(self) -> str:
        if self.hashing is not None:
            h = self.hashing
            return f"hashing(dim={h.dim},char_wb={h.ngram_min}-{h.ngram_max})"
        if self.pretrained is not None:
            return f"{self.pretrained}@{self.revision or 'main'}{_dtype_suffix(self.dtype)}"
        return f"tiny-random-clip(seed={self.tiny.seed}){_dtype_suffix(self.dtype)}"
