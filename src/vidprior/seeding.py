"""Per-item seeds derived from the run seed and the item's id.

A seed that depends only on (run seed, id) is the same whichever shard, batch or rerun produces the
item, so sharding and resuming never change an output; it is recorded in the item's manifest row.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported on use: the data stages that only need seeds skip its 1.5 s import
    import torch

SEED_BITS = 31  # fits every framework's seed type (numpy, torch, int32 configs)


def item_seed(run_seed: int, purpose: str, item_id: str) -> int:
    digest = hashlib.blake2b(f"{run_seed}/{purpose}/{item_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % (1 << SEED_BITS)


def generators(seeds: list[int]) -> list[torch.Generator]:
    """One CPU generator per item: diffusers draws each item's noise from its own generator."""
    import torch

    return [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds]
