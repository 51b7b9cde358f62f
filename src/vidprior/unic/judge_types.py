"""What every judge (vision-LLM or offline) takes and returns: the five criteria and a verdict.

A verdict either labels an item (one boolean per criterion; positive only if all pass) or leaves
it unlabelled with the reason (malformed or refused answer, endpoint failure). A judge never
guesses a label it did not get.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# Uni-C Suppl. VI, verbatim; the JSON answer has one boolean per key, in this order.
CRITERIA: dict[str, str] = {
    "c1_object_visible": ("The objects are visible, and their size takes up at least 10% of the image."),
    "c2_not_distorted": (
        "None of the objects should appear distorted, and their appearance must be consistent "
        "with real-world scenarios."
    ),
    "c3_consistent": "The features of the object(s) should remain reasonably consistent in all frames.",
    "c4_motion": "The movement or motion of the object should be detected.",
    "c5_not_camera_only": "Motion limited to camera panning or zooming is unacceptable.",
}
# Criteria that need more than one frame; the image-only mode (Image-Priors ablation) asks only the rest.
TEMPORAL_CRITERIA = ("c3_consistent", "c4_motion", "c5_not_camera_only")


@dataclass(frozen=True)
class JudgeItem:
    id: str
    prompt: str
    # Sampled frames (H, W, 3) uint8 RGB; one frame (the SD image) in image-only mode.
    frames: list[np.ndarray]
    # sha256 of the judged file (video, or image in image-only mode): the cache key's content part.
    content_hash: str


@dataclass(frozen=True)
class Verdict:
    id: str
    judge: str  # "offline-v1" or "<model>@<base_url host>"; recorded per row
    criteria: dict[str, bool] | None  # None when unlabelled
    reason: str = ""  # why the item is unlabelled ("malformed_answer", "refused", "endpoint_error")
    detail: str = ""  # free text: the failing check, the model's refusal, the error
    raw: str = ""  # the model's raw answer (or the offline judge's measurements as JSON)
    cached: bool = False
    extras: dict[str, float] = field(default_factory=dict)  # measurements worth keeping (offline judge)

    @property
    def labelled(self) -> bool:
        return self.criteria is not None

    @property
    def positive(self) -> bool | None:
        return None if self.criteria is None else all(self.criteria.values())

    @property
    def failed_criteria(self) -> list[str]:
        return [] if self.criteria is None else [k for k, ok in self.criteria.items() if not ok]
