"""VBench-style video metrics, FVD, CLIP score and depth metrics (SPEC "Evaluation metrics").

Videos are uint8 numpy arrays [T, H, W, 3] (RGB) with a frame rate each. Backbones (CLIP, DINO, MUSIQ,
VideoMAE, the LAION aesthetic head) are built lazily from the `params.evaluate` model specs through
`vidprior.models` and cached per process, so a metric that is not asked for never loads its model.

Exports resolve lazily: importing this package costs nothing until a metric runs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "vidprior.evaluate.names": ("METRICS", "PER_VIDEO_METRICS", "SET_METRICS", "check_metrics"),
    "vidprior.evaluate.scoring": ("score_videos",),
    "vidprior.evaluate.fvd": ("fvd",),
    "vidprior.evaluate.depth": ("DEPTH_ALIGNMENTS", "depth_metrics"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = [
    "DEPTH_ALIGNMENTS",
    "METRICS",
    "PER_VIDEO_METRICS",
    "SET_METRICS",
    "check_metrics",
    "depth_metrics",
    "fvd",
    "score_videos",
]
assert sorted(__all__) == sorted(_MODULE_OF)

if TYPE_CHECKING:
    from vidprior.evaluate.depth import DEPTH_ALIGNMENTS, depth_metrics
    from vidprior.evaluate.fvd import fvd
    from vidprior.evaluate.names import METRICS, PER_VIDEO_METRICS, SET_METRICS, check_metrics
    from vidprior.evaluate.scoring import score_videos


def __getattr__(name: str) -> Any:
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_MODULE_OF[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
