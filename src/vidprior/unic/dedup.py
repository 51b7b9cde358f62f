"""Greedy semantic de-duplication with an exact guarantee: every kept pair has cosine < threshold.

Items are visited in input order; an item is kept unless an already-kept item is at or above the
threshold (Uni-C Sec. III-C: "cosine similarity between any two prompts remains below 0.8").

Candidates come from faiss range search over L2-normalised embeddings (IndexFlatIP: exact, no
approximation) against the items kept so far, block by block, plus a dense product inside each
block. Range search is run a little below the threshold and every candidate is re-scored, so the
decision never depends on faiss' own rounding; pairs within `TIE_MARGIN` under the threshold count
as duplicates so that a later recomputation with another summation order cannot find a kept pair at
the threshold.
"""

from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np

TIE_MARGIN = 1e-6
_SEARCH_SLACK = 1e-3


@dataclass(frozen=True)
class DedupResult:
    kept: np.ndarray  # bool [n]
    duplicate_of: np.ndarray  # int64 [n], index of the most similar earlier kept item, -1 if kept
    similarity: np.ndarray  # float32 [n], similarity to duplicate_of, nan if kept

    @property
    def n_kept(self) -> int:
        return int(self.kept.sum())


def greedy_dedup(embeddings: np.ndarray, threshold: float, block_size: int = 4096) -> DedupResult:
    x = np.ascontiguousarray(embeddings, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"embeddings: expected a 2-D array [n, d], got shape {x.shape}")
    n, dim = x.shape
    cut = threshold - TIE_MARGIN
    kept = np.zeros(n, dtype=bool)
    duplicate_of = np.full(n, -1, dtype=np.int64)
    similarity = np.full(n, np.nan, dtype=np.float32)
    index = faiss.IndexFlatIP(dim)
    kept_ids: list[np.ndarray] = []  # global index of each row in `index`, in insertion order

    for start in range(0, n, block_size):
        block = x[start : start + block_size]
        size = len(block)
        best_sim = np.full(size, -np.inf, dtype=np.float32)
        best_of = np.full(size, -1, dtype=np.int64)

        if index.ntotal:
            lims, _, labels = index.range_search(block, cut - _SEARCH_SLACK)
            index_to_global = np.concatenate(kept_ids)
            for row in range(size):
                hits = labels[lims[row] : lims[row + 1]]
                if len(hits):
                    cand = index_to_global[hits]
                    sims = x[cand] @ block[row]
                    top = int(np.argmax(sims))
                    best_sim[row], best_of[row] = sims[top], cand[top]

        inside = block @ block.T
        block_kept = np.zeros(size, dtype=bool)
        for row in range(size):
            if best_sim[row] >= cut:
                continue
            earlier = np.flatnonzero(block_kept[:row])
            if len(earlier):
                sims = inside[row, earlier]
                top = int(np.argmax(sims))
                if sims[top] >= cut:
                    best_sim[row], best_of[row] = sims[top], start + earlier[top]
                    continue
            block_kept[row] = True

        rows = np.arange(start, start + size)
        kept[rows] = block_kept
        dropped = ~block_kept
        duplicate_of[rows[dropped]] = best_of[dropped]
        similarity[rows[dropped]] = best_sim[dropped]
        if block_kept.any():
            index.add(block[block_kept])
            kept_ids.append(rows[block_kept])
    return DedupResult(kept, duplicate_of, similarity)


def pairs_at_or_above(embeddings: np.ndarray, threshold: float, block_size: int = 2048) -> int:
    """Brute-force count of pairs (i < j) with cosine >= threshold, by blocked matmul.

    The reference the tests and the benchmark hold `greedy_dedup` against.
    """
    x = np.ascontiguousarray(embeddings, dtype=np.float32)
    count = 0
    for start in range(0, len(x), block_size):
        sims = x[start : start + block_size] @ x[start:].T
        rows = np.arange(sims.shape[0])
        sims[rows[:, None] >= np.arange(sims.shape[1])[None, :]] = -np.inf  # keep j > i only
        count += int((sims >= threshold).sum())
    return count


def greedy_dedup_bruteforce(embeddings: np.ndarray, threshold: float, block_size: int = 4096) -> np.ndarray:
    """The same greedy rule with blocked matmul against all kept items instead of faiss.

    Returns the kept mask; used by the benchmark and as a cross-check in tests.
    """
    x = np.ascontiguousarray(embeddings, dtype=np.float32)
    cut = threshold - TIE_MARGIN
    kept = np.zeros(len(x), dtype=bool)
    kept_rows: list[np.ndarray] = []
    for start in range(0, len(x), block_size):
        block = x[start : start + block_size]
        if kept_rows:
            prior = np.concatenate(kept_rows)
            shadowed = (block @ prior.T).max(axis=1) >= cut
        else:
            shadowed = np.zeros(len(block), dtype=bool)
        inside = block @ block.T
        block_kept = np.zeros(len(block), dtype=bool)
        for row in range(len(block)):
            if shadowed[row]:
                continue
            earlier = np.flatnonzero(block_kept[:row])
            if len(earlier) and inside[row, earlier].max() >= cut:
                continue
            block_kept[row] = True
        kept[start : start + len(block)] = block_kept
        kept_rows.append(block[block_kept])
    return kept
