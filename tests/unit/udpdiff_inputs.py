"""Upstream outputs built by hand for the UDPDiff stage tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from vidprior.io.manifest import write_manifest
from vidprior.io.media import write_video


def clips_dir(root: Path, clips: dict[str, np.ndarray | bytes | None], fps: int = 8) -> Path:
    """A `udpdiff.clips`-shaped output: lossless clips (exact frames), raw bytes, or no file (None)."""
    rows = []
    for clip_id, content in clips.items():
        path = f"clips/{clip_id}.mp4"
        if isinstance(content, np.ndarray):
            write_video(root / path, content, fps, lossless=True)
        elif isinstance(content, bytes):
            (root / "clips").mkdir(parents=True, exist_ok=True)
            (root / path).write_bytes(content)
        rows.append({"id": clip_id, "clip_path": path})
    write_manifest(pd.DataFrame(rows), root)
    return root
