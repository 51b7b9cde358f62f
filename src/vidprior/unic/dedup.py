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


def _greedy_within_block(
    block: np.ndarray, shadowed: np.ndarray, cut: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Keep-first inside one block, for rows not already shadowed by an earlier kept item.

    Returns (kept mask, index in block of the most similar earlier kept row or -1, its similarity).
    Only rows with an earlier in-block neighbour at or above `cut` need the sequential walk.
    """
    size = len(block)
    inside = block @ block.T
    close = np.tril(inside >= cut, k=-1)
    kept = ~shadowed
    best_of = np.full(size, -1, dtype=np.int64)
    best_sim = np.full(size, -np.inf, dtype=np.float32)
    for row in np.flatnonzero(close.any(axis=1) & ~shadowed):
        earlier = np.flatnonzero(close[row, :row] & kept[:row])
        if len(earlier):
            top = earlier[np.argmax(inside[row, earlier])]
            kept[row], best_of[row], best_sim[row] = False, top, inside[row, top]
    return kept, best_of, best_sim


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
            lims = lims.astype(np.int64)
            if len(labels):
                rows = np.repeat(np.arange(size), np.diff(lims))
                cand = np.concatenate(kept_ids)[labels]
                sims = np.einsum("ij,ij->i", x[cand], block[rows])  # re-scored, not faiss' distances
                order = np.lexsort((-sims, rows))  # per row, most similar candidate first
                first = order[np.r_[0, np.flatnonzero(np.diff(rows[order])) + 1]]
                best_sim[rows[first]], best_of[rows[first]] = sims[first], cand[first]

        shadowed = best_sim >= cut
        block_kept, in_block_of, in_block_sim = _greedy_within_block(block, shadowed, cut)
        from_block = in_block_of >= 0
        best_of[from_block] = start + in_block_of[from_block]
        best_sim[from_block] = in_block_sim[from_block]

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
        shadowed = np.zeros(len(block), dtype=bool)
        for prior in kept_rows:  # blocked too, so memory stays block_size x block_size
            shadowed |= (block @ prior.T).max(axis=1, initial=-np.inf) >= cut
        block_kept, _, _ = _greedy_within_block(block, shadowed, cut)
        kept[start : start + len(block)] = block_kept
        kept_rows.append(block[block_kept])
    return kept
