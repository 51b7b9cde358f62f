"""Resumable work: chunk results saved atomically under the output directory while a stage runs.

A stage splits its items into fixed chunks and asks `ChunkStore` for each one; chunks finished by
an interrupted run are loaded instead of recomputed. The store is keyed by a fingerprint of the
inputs and params, so stale chunks from a different configuration are never reused.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np

from vidprior.io.atomic import atomic_path, remove_stray_temp_files, write_text_atomic

PARTIAL_DIR = ".partial"


def fingerprint(*parts: object) -> str:
    """Content hash of JSON-able parts (inputs, params, model ids): the key a ChunkStore is valid for."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(json.dumps(part, sort_keys=True, default=str).encode())
        digest.update(b"\x00")
    return digest.hexdigest()


class ChunkStore:
    def __init__(self, out_dir: Path, name: str, fingerprint: str):
        self.root = Path(out_dir) / PARTIAL_DIR / name
        stamp = self.root / "fingerprint.json"
        if self.root.exists():
            recorded = json.loads(stamp.read_text()) if stamp.exists() else None
            if recorded != fingerprint:
                shutil.rmtree(self.root)
        self.root.mkdir(parents=True, exist_ok=True)
        write_text_atomic(stamp, json.dumps(fingerprint))
        self.reused = 0
        self.computed = 0

    def _path(self, index: int, suffix: str) -> Path:
        return self.root / f"chunk-{index:06d}{suffix}"

    def array(self, index: int, compute: Callable[[], np.ndarray]) -> np.ndarray:
        path = self._path(index, ".npy")
        if path.exists():
            self.reused += 1
            return np.load(path, allow_pickle=False)
        result = np.asarray(compute())
        with atomic_path(path) as tmp, open(tmp, "wb") as handle:
            np.save(handle, result, allow_pickle=False)
        self.computed += 1
        return result

    def records(self, index: int, compute: Callable[[], list]) -> list:
        """Like `array`, for JSON-serialisable results (e.g. LLM verdicts)."""
        path = self._path(index, ".json")
        if path.exists():
            self.reused += 1
            return json.loads(path.read_text(encoding="utf-8"))
        result = list(compute())
        write_text_atomic(path, json.dumps(result))
        self.computed += 1
        return result


def clear_partials(out_dir: Path) -> None:
    """Remove chunk checkpoints, and temp files a killed run left, once the final outputs are written."""
    shutil.rmtree(Path(out_dir) / PARTIAL_DIR, ignore_errors=True)
    remove_stray_temp_files(out_dir)
