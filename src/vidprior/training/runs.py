"""Pieces every training stage shares: per-sample seeds, the history file, the torchrun entry point."""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd

from vidprior.io.atomic import atomic_path, write_text_atomic


def sample_seed(*parts: object) -> int:
    """A 63-bit seed from a content hash of `parts` (independent of process, shard and rank), so a
    sample's data, timestep and noise depend on (seed, global sample index) only and a resumed or
    differently sharded run draws the same ones."""
    digest = hashlib.blake2b("/".join(str(p) for p in parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


def write_csv(frame: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def torchrun_main(
    prog: str,
    inputs: Sequence[tuple[str, str]],
    run: Callable[..., dict[str, float]],
    argv: Sequence[str] | None = None,
) -> int:
    """`[torchrun --nproc_per_node N] python -m <prog> INPUT... --output DIR [--params F] [--metrics F]`.

    Every rank runs the stage (`run(params, inputs, output_dir)`); rank 0 writes the metrics file and a
    `METRICS {json}` line on stdout. `inputs`: (name, help) of each positional input directory.
    """
    from vidprior.config import DEFAULT_PARAMS, load_params
    from vidprior.stages import reproducible
    from vidprior.training import engine as ds

    parser = argparse.ArgumentParser(prog=f"python -m {prog}", description=torchrun_main.__doc__)
    for name, help_text in inputs:
        parser.add_argument(name, help=help_text)
    parser.add_argument("--output", required=True, help="output directory")
    parser.add_argument("--params", action="append", help="params file(s), later ones override")
    parser.add_argument("--metrics", help="write the reproducible metrics here (JSON)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    params = load_params(args.params or [DEFAULT_PARAMS])
    dist_info = ds.init_distributed()
    try:
        metrics = run(params, [getattr(args, name) for name, _ in inputs], Path(args.output))
        if dist_info.rank == 0:
            if args.metrics:
                text = json.dumps(reproducible(metrics), indent=2, sort_keys=True) + "\n"
                write_text_atomic(Path(args.metrics), text)
            print("METRICS " + json.dumps(metrics), flush=True)
    finally:
        ds.shutdown()
    return 0
