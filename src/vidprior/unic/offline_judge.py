"""The embedded default judge: an APPROXIMATION of the five Uni-C criteria from flow and pixels.

Used when no vision-LLM endpoint is configured. It sees no semantics, so it answers the criteria
with measurable stand-ins; its labels are a proxy for the paper's GPT-4 labels, not a reproduction
of them. It judges ALL frames it is given (the stage passes every frame of the video, not the 4
sampled for the LLM), resized to the flow analysis resolution so that its pixel thresholds mean
what the flow rule's do.

Per frame pair t -> t+1 it computes dense flow, fits a global (camera) motion model to it, a
homography by RANSAC on a grid of flow correspondences (covers pan, zoom, roll and a rotating
camera; parallax from a translating camera is not global and reads as object motion), and takes
the residual = flow - model flow as object motion. The residual magnitude is grey-opened (blobs
narrower than ~4% of the frame are flow noise, not objects) and read inside the frame minus a 5%
border (content entering and leaving has no correspondence). Per video:

* object motion: the median over pairs of the residual's 99th percentile; an object must cover
  about 1% of the frame to register. It counts only above the floor max(``min_residual_px``,
  `CAMERA_ERROR_FRACTION` x mean camera-model motion), because flow error grows with speed.
* c4_motion: max(mean |flow|, object motion) >= ``min_motion_px``.
* c5_not_camera_only: fails ("camera-only motion") when there is motion (c4) but object motion is
  below the floor: pan, zoom, roll. A still video is not camera-only; it fails c4 instead.
* c1_object_visible: object area >= ``min_object_area``. With object motion, the area is the
  median over pairs of the fraction of the frame whose residual is at least half the object motion
  and whose pixels the flow explains better than the camera model does (that drops the still
  background that smeared flow marks as moving). Without it, and for a single image, it is the
  largest connected region of frequency-tuned saliency (Achanta et al., CVPR 2009: Lab distance of
  the blurred frame to its median colour, Otsu threshold). A small moving part of a large still
  object underestimates the object; saliency knows nothing of what an object is.
* c3_consistent: frame t+1 warped back onto frame t by the flow must agree with frame t: the mean
  SSIM (grey, 11x11 Gaussian window, sigma 1.5) over the pixels the warp can see, for the WORST pair
  ("in all frames"), must reach ``min_consistency``. SSIM's luminance and contrast terms make
  flicker fail (a brightness swing to 20% and back scores ~0.3, to 50% ~0.73), and a morphing object
  fails through its structure term.
* c2_not_distorted: cannot be judged from pixels. Weak proxy: no frame is degenerate, i.e. flat
  (grey std < `MIN_GREY_STD`) or mostly clipped (>= `MAX_CLIPPED_FRACTION` of pixels at <= 2 or
  >= 253); uint8 frames are always finite. It passes nearly every real video.

In image-only mode (one frame) only c1 and c2 are answered (judge_types.TEMPORAL_CRITERIA are
left out). Measurements go to `Verdict.raw` (JSON) and the key numbers to `Verdict.extras`; an
item whose measurements are not finite (a broken flow backend) is left unlabelled with reason
"measurement_error".
"""

from __future__ import annotations

import json

import cv2
import numpy as np

from vidprior.config import OfflineJudgeParams
from vidprior.flow import compute_flow, resize_frames
from vidprior.unic.judge_types import CRITERIA, JudgeItem, Verdict

OFFLINE_JUDGE_NAME = JUDGE_NAME = "offline-v1"  # recorded per row; bump when a measurement changes
OBJECT_PERCENTILE = 99.0  # object motion: this percentile of the residual magnitude
# Object motion must also exceed this fraction of the camera motion (flow error grows with speed).
CAMERA_ERROR_FRACTION = 0.2
MIN_GREY_STD = 2.0  # c2 proxy: a frame flatter than this (grey levels) is degenerate
MAX_CLIPPED_FRACTION = 0.9  # c2 proxy: a frame with more pixels clipped to black/white is degenerate
_SSIM_C1, _SSIM_C2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2


def _border(height: int, width: int) -> int:
    # Content enters and leaves at the frame edge, where flow has no correspondence.
    return max(2, round(0.05 * min(height, width)))


def _disc(size: int) -> np.ndarray:
    size = max(3, size | 1)
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size))


def _interior(height: int, width: int) -> np.ndarray:
    mask = np.zeros((height, width), dtype=bool)
    m = _border(height, width)
    mask[m : height - m, m : width - m] = True
    return mask


def global_motion_flow(flow: np.ndarray, inlier_px: float) -> np.ndarray:
    """Flow (h, w, 2) of the homography fitted by RANSAC to a grid of `flow`'s correspondences."""
    height, width, _ = flow.shape
    step = max(4, min(height, width) // 32)
    m = _border(height, width)
    ys, xs = np.mgrid[m : height - m : step, m : width - m : step]
    src = np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.float32)
    dst = src + flow[ys.ravel(), xs.ravel()]
    homography = None
    if len(src) >= 4:
        homography, _ = cv2.findHomography(src, dst, cv2.RANSAC, max(inlier_px, 0.1), maxIters=2000)
    gy, gx = np.mgrid[0:height, 0:width].astype(np.float32)
    if homography is None:  # degenerate (no motion at all, or too few points): a median translation
        return np.broadcast_to(np.median(dst - src, axis=0).astype(np.float32), flow.shape).copy()
    grid = np.stack([gx, gy], axis=-1).reshape(-1, 1, 2)
    moved = cv2.perspectiveTransform(grid, homography).reshape(height, width, 2)
    return (moved - np.stack([gx, gy], axis=-1)).astype(np.float32)


def warp_back(image: np.ndarray, flow: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`image` (frame t+1) sampled at x + flow(x): frame t as predicted by the flow, and where valid."""
    height, width = image.shape[:2]
    gy, gx = np.mgrid[0:height, 0:width].astype(np.float32)
    map_x, map_y = gx + flow[..., 0], gy + flow[..., 1]
    warped = cv2.remap(image, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    valid = (map_x >= 0) & (map_x <= width - 1) & (map_y >= 0) & (map_y <= height - 1)
    return warped, valid


def _magnitude(flow: np.ndarray) -> np.ndarray:
    flow = np.asarray(flow, dtype=np.float32)
    return cv2.magnitude(np.ascontiguousarray(flow[..., 0]), np.ascontiguousarray(flow[..., 1]))


def _local_error(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    size = max(3, min(a.shape[:2]) // 32)
    return cv2.blur(cv2.absdiff(a, b).astype(np.float32), (size, size))


def ssim_map(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-pixel SSIM (Wang et al. 2004) of two grey images in [0, 255], Gaussian window sigma 1.5."""
    a, b = a.astype(np.float64), b.astype(np.float64)

    def blur(x: np.ndarray) -> np.ndarray:
        return cv2.GaussianBlur(x, (11, 11), 1.5)

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    num = (2 * mu_a * mu_b + _SSIM_C1) * (2 * cov + _SSIM_C2)
    den = (mu_a**2 + mu_b**2 + _SSIM_C1) * (var_a + var_b + _SSIM_C2)
    return num / den


def saliency_mask(frame: np.ndarray) -> np.ndarray:
    """The main salient region of an RGB frame (bool mask): its largest connected salient blob.

    Frequency-tuned saliency (Achanta et al. 2009): Lab distance of the blurred frame to the frame's
    median colour (the median ignores a large subject), thresholded by Otsu and closed.
    """
    height, width = frame.shape[:2]
    blurred = cv2.GaussianBlur(frame, (0, 0), max(1.0, min(height, width) / 40))
    lab = cv2.cvtColor(blurred, cv2.COLOR_RGB2LAB).astype(np.float32)
    saliency = np.linalg.norm(lab - np.median(lab.reshape(-1, 3), axis=0), axis=-1)
    top = float(saliency.max())
    if top < 1.0:  # a flat frame has no salient region
        return np.zeros((height, width), dtype=bool)
    scaled = np.rint(saliency * (255.0 / top)).astype(np.uint8)
    _, mask = cv2.threshold(scaled, 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, _disc(min(height, width) // 32))
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if count <= 1:
        return np.zeros((height, width), dtype=bool)
    return labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))


def saliency_area(frame: np.ndarray) -> float:
    """Fraction of the frame covered by its main salient region (`saliency_mask`)."""
    return float(saliency_mask(frame).mean())


def degenerate_frames(frames: list[np.ndarray]) -> list[str]:
    """Reasons, one per degenerate frame (c2 proxy); empty when every frame looks like an image."""
    problems = []
    for i, frame in enumerate(frames):
        grey = cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2GRAY)
        std = float(grey.std())
        clipped = float(((grey <= 2) | (grey >= 253)).mean())
        if std < MIN_GREY_STD:
            problems.append(f"frame {i} is flat (grey std {std:.2f} < {MIN_GREY_STD})")
        elif clipped >= MAX_CLIPPED_FRACTION:
            problems.append(f"frame {i} is clipped ({clipped:.0%} of pixels black or white)")
    return problems


class OfflineJudge:
    """Judges a `JudgeItem` from its frames alone (module docstring: what each criterion measures).

    Args:
        params: the thresholds.
        flow_backend: a vidprior.flow backend name.
        analysis_size: (height, width) every frame is resized to; pixel thresholds refer to it.
    """

    name = JUDGE_NAME

    def __init__(
        self,
        params: OfflineJudgeParams,
        flow_backend: str = "dis",
        analysis_size: tuple[int, int] = (256, 256),
    ):
        self.params = params
        self.flow_backend = flow_backend
        self.analysis_size = (int(analysis_size[0]), int(analysis_size[1]))

    def judge(self, item: JudgeItem) -> Verdict:
        if not item.frames:
            raise ValueError(f"{item.id}: no frames to judge")
        kinds = {(np.asarray(f).shape, np.asarray(f).dtype.str) for f in item.frames}
        shape, dtype = next(iter(kinds))
        if len(kinds) != 1 or len(shape) != 3 or shape[-1] != 3 or dtype != np.dtype(np.uint8).str:
            raise ValueError(f"{item.id}: expected uint8 frames of one shape (H, W, 3), got {sorted(kinds)}")
        problems = degenerate_frames(item.frames)
        frames = resize_frames(np.stack(item.frames), self.analysis_size)
        if len(frames) == 1:
            m = {"salient_area": saliency_area(frames[0])}
            m["object_area"], m["area_source"] = m["salient_area"], "saliency"
        else:
            m = self._measure(frames)
        m["n_frames"] = len(frames)
        m["degenerate"] = problems
        numbers = {
            k: float(v) for k, v in m.items() if isinstance(v, int | float) and not isinstance(v, bool)
        }
        raw = json.dumps(m, sort_keys=True, default=float)
        if not all(np.isfinite(list(numbers.values()))):
            bad = sorted(k for k, v in numbers.items() if not np.isfinite(v))
            return Verdict(
                id=item.id,
                judge=self.name,
                criteria=None,
                reason="measurement_error",
                detail=f"non-finite measurements: {', '.join(bad)}",
                raw=raw,
                extras=numbers,
            )
        criteria, failures = self._decide(m)
        return Verdict(
            id=item.id,
            judge=self.name,
            criteria=criteria,
            detail="; ".join(failures),
            raw=raw,
            extras=numbers,
        )

    def _measure(self, frames: np.ndarray) -> dict:
        p = self.params
        flows = compute_flow(frames, self.flow_backend)
        grey = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames]
        height, width = grey[0].shape
        interior = _interior(height, width)
        # Opening removes residual blobs narrower than ~4% of the frame: flow noise, not an object.
        opening = _disc(min(height, width) // 24)
        pairs: dict[str, list[float]] = {k: [] for k in ("motion", "camera", "object", "area", "consistency")}
        for t, flow in enumerate(flows):
            camera = global_motion_flow(flow, p.min_residual_px)
            residual = _magnitude(flow - camera)
            residual = cv2.morphologyEx(residual, cv2.MORPH_OPEN, opening)
            top = float(np.percentile(residual[interior], OBJECT_PERCENTILE))
            warped, valid = warp_back(grey[t + 1], flow)
            moving = residual >= max(p.min_residual_px, 0.5 * top)
            # Smeared flow around an object marks still background as moving; such a pixel is
            # explained better by the camera model than by its own flow.
            moving &= _local_error(grey[t], warped) < _local_error(grey[t], warp_back(grey[t + 1], camera)[0])
            pairs["motion"].append(float(_magnitude(flow).mean()))
            pairs["camera"].append(float(_magnitude(camera).mean()))
            pairs["object"].append(top)
            # A fraction of the whole frame (the border counts as not moving).
            pairs["area"].append(float(moving[interior].sum() / moving.size))
            seen = valid & interior  # empty only when the flow is broken (NaN): a NaN, no warning
            score = float(ssim_map(grey[t], warped)[seen].mean()) if seen.any() else np.nan
            pairs["consistency"].append(score)
        m: dict = {
            "mean_motion_px": float(np.mean(pairs["motion"])),
            "camera_motion_px": float(np.mean(pairs["camera"])),
            # Median over pairs: one glitched pair neither creates nor hides object motion.
            "object_motion_px": float(np.median(pairs["object"])),
            "moving_area": float(np.median(pairs["area"])),
            "consistency": float(np.min(pairs["consistency"])),
            "consistency_mean": float(np.mean(pairs["consistency"])),
            "pair_object_motion_px": pairs["object"],
            "pair_consistency": pairs["consistency"],
        }
        # Flow error grows with speed, so a fast camera needs a larger residual to show an object.
        m["object_floor_px"] = max(p.min_residual_px, CAMERA_ERROR_FRACTION * m["camera_motion_px"])
        if m["object_motion_px"] >= m["object_floor_px"]:
            m["object_area"], m["area_source"] = m["moving_area"], "motion"
        else:
            m["salient_area"] = saliency_area(frames[len(frames) // 2])
            m["object_area"], m["area_source"] = m["salient_area"], "saliency"
        return m

    def _decide(self, m: dict) -> tuple[dict[str, bool], list[str]]:
        p = self.params
        ok: dict[str, bool] = {}
        failures: list[str] = []

        def check(key: str, passed: bool, why: str) -> None:
            ok[key] = bool(passed)
            if not passed:
                failures.append(f"{key}: {why}")

        area = m["object_area"]
        check(
            "c1_object_visible",
            area >= p.min_object_area,
            f"object area {area:.3f} ({m['area_source']}) < {p.min_object_area}",
        )
        check("c2_not_distorted", not m["degenerate"], ", ".join(m["degenerate"]))
        if m["n_frames"] > 1:
            check(
                "c3_consistent",
                m["consistency"] >= p.min_consistency,
                f"inconsistent frames: worst-pair SSIM {m['consistency']:.3f} < {p.min_consistency}",
            )
            motion = max(m["mean_motion_px"], m["object_motion_px"])
            check("c4_motion", motion >= p.min_motion_px, f"no motion: {motion:.3f} < {p.min_motion_px} px")
            camera_only = motion >= p.min_motion_px and m["object_motion_px"] < m["object_floor_px"]
            check(
                "c5_not_camera_only",
                not camera_only,
                f"camera-only motion: object motion {m['object_motion_px']:.3f} px < "
                f"{m['object_floor_px']:.3f} px while the camera moves {m['camera_motion_px']:.3f} px",
            )
        return {k: ok[k] for k in CRITERIA if k in ok}, failures
