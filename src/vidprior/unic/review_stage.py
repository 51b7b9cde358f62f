"""Stage `unic.review`: a random sample of positives as an HTML page for the paper's manual check.

The labels table names each image and video relative to the stage that wrote it, so the paths are
resolved against the images and videos inputs here; the page (`report/index.html`, self-contained)
and `review.csv` (for reviewers' verdicts) are written to the output.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from vidprior.config import Params
from vidprior.io.manifest import REPORT_DIR
from vidprior.unic.stage_inputs import input_dir, read_input_manifest

STAGE = "unic.review"


def run(params: Params, inputs: Sequence[Path | str] | None, output_dir: Path) -> dict[str, float]:
    """inputs: [labels dir, images dir] + [videos dir] unless image-only."""
    from vidprior.unic.review import export_review

    started = time.perf_counter()
    labels = read_input_manifest(inputs, 0, "labels", ["label", "image_path", "video_path"])
    images_dir = input_dir(inputs, 1, "images").resolve()
    has_videos = inputs is not None and len(inputs) > 2 and inputs[2] is not None
    videos_dir = input_dir(inputs, 2, "videos").resolve() if has_videos else None

    def absolute(root: Path | None, relative: str) -> str:
        return str(root / relative) if root is not None and relative else ""

    labels = labels.assign(
        image_path=[absolute(images_dir, p) for p in labels["image_path"]],
        video_path=[absolute(videos_dir, p) for p in labels["video_path"]],
    )
    counts = export_review(
        labels, Path("/"), Path(output_dir) / REPORT_DIR, params.unic.review.sample_size, params.seed
    )
    return {
        **{k: float(v) for k, v in counts.items()},
        "stage_seconds": round(time.perf_counter() - started, 4),
    }
