"""Prompt de-duplication throughput: exact faiss range search vs brute-force blocked matmul.

Both apply the same greedy keep-first rule and must keep exactly the same prompts; the script
checks that, and checks by brute force that no kept pair reaches the threshold.

    .venv/bin/python benchmarks/dedup.py [--sizes 10000 100000] [--threshold 0.8]
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import faiss

from vidprior.models import build_text_embedder
from vidprior.models.spec import HashingSpec, TextEmbedderSpec
from vidprior.unic.dedup import greedy_dedup, greedy_dedup_bruteforce, pairs_at_or_above
from vidprior.unic.synthetic import synthetic_prompts


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--threshold", type=float, default=0.8)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--block", type=int, default=4096)
    args = parser.parse_args()

    embedder = build_text_embedder(TextEmbedderSpec(hashing=HashingSpec(dim=args.dim)))
    print(
        f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, faiss {faiss.__version__}, "
        f"{faiss.omp_get_max_threads()} omp threads; embedder {embedder.model_id}; threshold {args.threshold}"
    )
    print(
        "| prompts | kept | embed prompts/s | faiss range search prompts/s | blocked matmul prompts/s "
        "| faiss speed-up | same kept set | kept pairs >= threshold |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for n in args.sizes:
        texts = synthetic_prompts(n, seed=0, near_duplicate_fraction=0.2)["prompt"].tolist()
        emb, t_embed = _timed(lambda texts=texts: embedder.embed(texts))
        faiss_result, t_faiss = _timed(lambda emb=emb: greedy_dedup(emb, args.threshold, args.block))
        brute_kept, t_brute = _timed(lambda emb=emb: greedy_dedup_bruteforce(emb, args.threshold, args.block))
        same = bool((faiss_result.kept == brute_kept).all())
        violations = pairs_at_or_above(emb[faiss_result.kept], args.threshold)
        print(
            f"| {n:,} | {faiss_result.n_kept:,} | {n / t_embed:,.0f} | {n / t_faiss:,.0f} | "
            f"{n / t_brute:,.0f} | {t_brute / t_faiss:.2f}x | {same} | {violations} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
