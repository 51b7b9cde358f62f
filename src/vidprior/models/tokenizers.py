"""Tokenizers made in code for the tiny profile: the real tokenizer classes, a small vocabulary, no files."""

from __future__ import annotations

import string

from tokenizers import pre_tokenizers
from transformers import CLIPTokenizer, T5TokenizerFast

CLIP_BOS, CLIP_EOS = "<|startoftext|>", "<|endoftext|>"


def tiny_clip_tokenizer(model_max_length: int = 77) -> CLIPTokenizer:
    """Byte-level BPE with no merges: every byte is a token, so any text encodes without <unk>.

    Id layout follows CLIP's: 256 byte symbols, the same with the end-of-word suffix, then BOS and EOS.
    """
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())  # sorted: the id of a symbol never varies
    vocab = {sym: i for i, sym in enumerate(alphabet)}
    vocab.update({sym + "</w>": i + len(alphabet) for i, sym in enumerate(alphabet)})
    vocab[CLIP_BOS] = len(vocab)
    vocab[CLIP_EOS] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=model_max_length)


def tiny_t5_tokenizer(model_max_length: int = 226) -> T5TokenizerFast:
    """Unigram over single characters (with and without the word-start marker), T5's special-token ids."""
    chars = string.ascii_letters + string.digits + string.punctuation
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [("\u2581" + c, -3.0) for c in chars]
    pieces += [(c, -4.0) for c in chars]
    return T5TokenizerFast(vocab=pieces, extra_ids=0, model_max_length=model_max_length)
