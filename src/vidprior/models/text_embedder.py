"""Prompt embedders: L2-normalised float32 rows, a stateless hashing one and a CLIP text encoder."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

import numpy as np
from sklearn.feature_extraction.text import HashingVectorizer

from vidprior.models.spec import HashingSpec, TextEmbedderSpec

if TYPE_CHECKING:
    from transformers import CLIPTextModelWithProjection, CLIPTokenizer

# torch/transformers are imported only on the CLIP path: hashing jobs then start in ~1 s instead of ~4 s.

CLIP_TEXT_ID = "openai/clip-vit-large-patch14"


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit norm; all-zero rows stay zero (no NaN)."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)


class TextEmbedder(ABC):
    model_id: str
    dim: int

    @abstractmethod
    def embed(self, texts: list[str]) -> np.ndarray:
        """float32 [len(texts), dim], every row unit-norm (or zero when the text has no features)."""


class HashingTextEmbedder(TextEmbedder):
    """Character n-gram hashing: no fitted state, so every shard and rerun embeds a text identically."""

    def __init__(self, spec: HashingSpec, model_id: str):
        self.model_id, self.dim = model_id, spec.dim
        self._vectorizer = HashingVectorizer(
            analyzer="char_wb",
            ngram_range=(spec.ngram_min, spec.ngram_max),
            n_features=spec.dim,
            alternate_sign=True,
            norm="l2",
            lowercase=True,
            dtype=np.float32,
        )

    def embed(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        # Renormalised in float32: the sparse l2 norm leaves rows a few ulps off 1.
        return l2_normalise(self._vectorizer.transform(list(texts)).toarray())


class ClipTextEmbedder(TextEmbedder):
    def __init__(
        self, model: CLIPTextModelWithProjection, tokenizer: CLIPTokenizer, batch_size: int, model_id: str
    ):
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size
        self.model_id, self.dim = model_id, model.config.projection_dim

    def embed(self, texts: list[str]) -> np.ndarray:
        import torch

        out = np.zeros((len(texts), self.dim), np.float32)
        for start in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(
                list(texts[start : start + self.batch_size]),
                padding=True,
                truncation=True,
                max_length=self.tokenizer.model_max_length,
                return_tensors="pt",
            ).to(self.model.device)
            with torch.no_grad():
                embeds = self.model(**batch).text_embeds
            out[start : start + len(embeds)] = embeds.float().cpu().numpy()
        return l2_normalise(out)


def build_text_embedder(spec: TextEmbedderSpec) -> TextEmbedder:
    if spec.hashing is not None:
        return HashingTextEmbedder(spec.hashing, spec.model_id)
    return _build_clip(spec)


def _build_clip(spec: TextEmbedderSpec) -> ClipTextEmbedder:
    from transformers import CLIPTextModelWithProjection, CLIPTokenizer

    from vidprior.models.loading import finish_tiny, load_pretrained, seeded
    from vidprior.models.sd15 import tiny_clip_text_config
    from vidprior.models.tokenizers import tiny_clip_tokenizer

    if spec.tiny is not None:
        tokenizer = tiny_clip_tokenizer()
        with seeded(spec.tiny.seed):
            model = CLIPTextModelWithProjection(tiny_clip_text_config(tokenizer))
        model = finish_tiny(model, spec)
    else:
        model = load_pretrained(CLIPTextModelWithProjection, spec)
        tokenizer = load_pretrained(CLIPTokenizer, spec)
    return ClipTextEmbedder(model, tokenizer, spec.batch_size, spec.model_id)
