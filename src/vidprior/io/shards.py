"""`--shard i/n`: a stable split of a manifest's items, and the merge that joins shard outputs."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from vidprior.io.manifest import (
    MANIFEST,
    REJECTS,
    ManifestError,
    check_ids,
    read_manifest,
    read_table,
    write_manifest,
    write_rejects,
)

_SHARD = re.compile(r"^(\d+)/(\d+)$")


@dataclass(frozen=True)
class Shard:
    index: int
    count: int

    @classmethod
    def parse(cls, text: str) -> Shard:
        match = _SHARD.match(text.strip())
        if not match:
            raise ValueError(f"--shard: expected 'i/n' with 0 <= i < n (e.g. 0/4), got {text!r}")
        index, count = int(match[1]), int(match[2])
        if count < 1 or not 0 <= index < count:
            raise ValueError(f"--shard: expected 0 <= i < n and n >= 1, got {text!r}")
        return cls(index, count)

    def owns(self, item_id: str) -> bool:
        # A content hash, not Python's salted hash(), so every process agrees on the split.
        digest = hashlib.blake2b(item_id.encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big") % self.count == self.index

    def select(self, df: pd.DataFrame) -> pd.DataFrame:
        if self.count == 1:
            return df
        return df[df["id"].map(self.owns)]

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def _bring_media(manifest: pd.DataFrame, shard_dir: Path, out_dir: Path) -> int:
    """Put the files a shard's manifest names (`path`, relative to the shard) under `out_dir`.

    A hard link when both sit on one filesystem (free, and the usual case on a shared volume),
    otherwise a copy; either way the merged directory is self-contained like a single-shard output.
    """
    if "path" not in manifest.columns:
        return 0
    for relative in manifest["path"]:
        source, target = Path(shard_dir) / relative, Path(out_dir) / relative
        if not source.is_file():
            raise ManifestError(f"merge: {source} is named in {Path(shard_dir) / MANIFEST} but missing")
        if target.exists() and target.samefile(source):
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.merge")
        tmp.unlink(missing_ok=True)
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copy2(source, tmp)
        os.replace(tmp, target)
    return len(manifest)


def merge_shards(shard_dirs: list[Path], out_dir: Path) -> dict[str, int]:
    """Concatenate shard manifests and rejects (an id produced by two shards is an error) and bring
    the media each manifest names into `out_dir`, so the merge reads like a one-shard output."""
    if not shard_dirs:
        raise ManifestError("merge: no shard directories given")
    manifests = [read_manifest(d) for d in shard_dirs]
    rejects = [read_table(Path(d) / REJECTS) for d in shard_dirs if (Path(d) / REJECTS).exists()]
    merged = pd.concat(manifests, ignore_index=True).sort_values("id", kind="stable")
    check_ids(merged, f"merge of {len(shard_dirs)} shards into {Path(out_dir) / MANIFEST}")
    media = sum(_bring_media(m, d, Path(out_dir)) for m, d in zip(manifests, shard_dirs, strict=True))
    write_manifest(merged, out_dir)
    merged_rejects = pd.concat(rejects, ignore_index=True) if rejects else pd.DataFrame()
    write_rejects(merged_rejects, out_dir)
    return {"items": len(merged), "rejects": len(merged_rejects), "shards": len(shard_dirs), "media": media}
