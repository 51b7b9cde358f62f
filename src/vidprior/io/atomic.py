"""Atomic file writes: readers see the old file or the complete new one, never a torn write."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path next to `target`; on success it is fsynced and renamed over `target`.

    The temporary file lives in the same directory so the final rename never crosses filesystems.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(target: Path, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


def remove_stray_temp_files(directory: Path) -> int:
    """Delete temporary files that a killed process left behind (SIGKILL skips `atomic_path`'s cleanup).

    Only call this when no other writer uses `directory`, e.g. after a stage wrote its outputs.
    """
    removed = 0
    for path in Path(directory).rglob(".*.tmp"):
        if path.is_file():
            path.unlink()
            removed += 1
    return removed
