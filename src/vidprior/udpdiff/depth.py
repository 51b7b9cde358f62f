"""Stage `udpdiff.depth`: video depth of every clip as a Spectral Pixelplanes video and float values.

Input: the `udpdiff.clips` output. Per clip: `depth/{id}.npz` (`depth` float32 [T, H, W] in [0, 1],
0 = near, 1 = far) and `depth/{id}.mp4`, its lossless Spectral Pixelplanes video
(`vidprior.udpdiff.pixelplanes.encode_depth`).

Estimators
----------
A backend is a `VideoDepthEstimator`: it takes a whole clip, (T, H, W, 3) uint8 RGB, and returns a
relative disparity (inverse depth, larger = nearer) of shape (T, H, W), and says how it is relative
(`invariance`): "affine" (unknown scale and shift: Depth Anything, DepthCrafter) or "scale" (unknown
scale only: image speed under camera translation). Backends are looked up by name in a registry
(`register_estimator`, like `vidprior.flow.register_backend`); the built-in ones:

* "depth_anything": Depth Anything V2 per frame (`vidprior.models.depth_anything`, spec
  `models.depth_anything`), batched `batch_frames` at a time, on the GPU when there is one.
* "parallax": no weights, a baseline for the synthetic source (`vidprior.udpdiff.depth_parallax`):
  image speed along the camera's motion, for a static scene and a translating camera only.

DepthCrafter (Hu et al. 2024), the paper's estimator, is a video diffusion model (built on SVD, code
at github.com/Tencent/DepthCrafter) that is neither in transformers nor in diffusers; it predicts an
affine-invariant disparity for a whole clip at once, so it plugs in as
`register_estimator("depthcrafter", EstimatorEntry(build=..., model_id=...))` returning an estimator
with `invariance = "affine"`, plus the name in `DepthParams.backend`; it is temporally consistent
itself, so `temporal_window: 1`.

Disparity to depth
------------------
Optionally (`temporal_window` > 1) per-frame estimates are made consistent first (`align_temporal`):
each frame's scale and shift ("scale": scale only) is fitted by least squares to the mean of its
already aligned predecessors in the window, then each frame becomes the median (or mean) of the
aligned frames in a centred window. Frame 0 is the anchor. The median suppresses flicker but blurs
fast-moving edges over the window, which is why DepthCrafter-like models are preferred.

Then depth is normalised per CLIP, not per frame (per-frame normalisation would flicker):
depth = 1 - (disp - lo) / (hi - lo), clipped to [0, 1], with lo, hi the `low_percentile` /
`high_percentile` of the clip's disparities. For "scale" disparity the distance 1 / disp would be
affine in the synthetic truth, but slow outliers (texture-less pixels) dominate it: normalising it
instead got 8 rather than 3 of 20 H.264 clips wrong in an earlier version of the search.

Rejects: `unreadable_video`; `non_finite_depth` (the estimator returned NaN or inf, e.g. half
precision overflow); `flat_depth` (hi - lo <= `flat_epsilon` x max(|lo|, |hi|): no depth variation,
nothing to learn; a static camera under "parallax").
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import numpy as np

from vidprior.config import DepthParams, FlowParams, ParallaxParams, Params
from vidprior.io.atomic import atomic_path
from vidprior.io.media import MediaError, read_video, write_video
from vidprior.udpdiff.clips import clip_items
from vidprior.udpdiff.depth_parallax import parallax_disparity
from vidprior.udpdiff.pixelplanes import encode_depth
from vidprior.unic.generation import fingerprint, finish_stage, kept_table, ok, rejected, run_batches
from vidprior.unic.stage_inputs import input_dir

STAGE = "udpdiff.depth"
BATCH = 8  # clips estimated and checkpointed together
DEPTH_DIR = "depth"
Invariance = Literal["affine", "scale"]
MANIFEST_COLUMNS = [
    "id",
    "depth_path",
    "depth_values_path",
    "depth_backend",
    "depth_model",
    "temporal_window",
    "frames",
    "height",
    "width",
    "fps",
    "clip_path",
    "invariance",
    "raw_low",
    "raw_high",
    "relative_range",
    "depth_spread",
    "flicker",
]


class VideoDepthEstimator(Protocol):
    """A clip in, its relative disparity out; see the module docstring."""

    invariance: Invariance

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        """(T, H, W, 3) uint8 RGB -> (T, H, W) float disparity, larger = nearer."""
        ...


@dataclass(frozen=True)
class EstimatorEntry:
    build: Callable[[Params], VideoDepthEstimator]  # called once per stage run, on first use
    model_id: Callable[[Params], str]  # provenance, known without building (checkpoint fingerprint)


_REGISTRY: dict[str, EstimatorEntry] = {}


def register_estimator(name: str, entry: EstimatorEntry, *, replace: bool = False) -> None:
    if name in _REGISTRY and not replace:
        raise ValueError(f"depth estimator {name!r} is already registered (pass replace=True)")
    _REGISTRY[name] = entry


def available_estimators() -> list[str]:
    return sorted(_REGISTRY)


def estimator_entry(name: str) -> EstimatorEntry:
    if name not in _REGISTRY:
        raise ValueError(
            f"udpdiff.depth.backend: unknown estimator {name!r}; expected one of {available_estimators()}"
        )
    return _REGISTRY[name]


# ---------------------------------------------------------------------------------------------
# Disparity -> depth


class FlatDepth(ValueError):
    """A clip's estimate has (almost) no variation between its robust ends."""


@dataclass(frozen=True)
class ClipDepth:
    depth: np.ndarray  # (T, H, W) float32 in [0, 1], 0 = near
    low: float  # robust ends of the clip's disparity
    high: float

    @property
    def relative_range(self) -> float:
        return (self.high - self.low) / max(abs(self.low), abs(self.high))


def _fit(frame: np.ndarray, reference: np.ndarray, invariance: Invariance) -> tuple[float, float]:
    """(scale, shift) minimising ||scale * frame + shift - reference||^2 (shift 0 for "scale")."""
    x, y = frame.astype(np.float64).ravel(), reference.astype(np.float64).ravel()
    if invariance == "scale":
        xx = float(x @ x)
        scale = float(x @ y) / xx if xx > 0 else 1.0
        if not scale > 0:  # a sign flip would swap near and far: match the mean instead
            scale = float(y.mean() / x.mean()) if x.mean() > 0 and y.mean() > 0 else 1.0
        return scale, 0.0
    xc, yc = x - x.mean(), y - y.mean()
    var = float(xc @ xc)
    scale = float(xc @ yc) / var if var > 0 else 1.0
    if not scale > 0:
        scale = float(yc.std() / xc.std()) if var > 0 and yc.std() > 0 else 1.0
    return scale, float(y.mean() - scale * x.mean())


def align_temporal(
    disparity: np.ndarray, window: int, invariance: Invariance = "affine", reduce: str = "median"
) -> np.ndarray:
    """Per-frame disparity (T, H, W) made temporally consistent; `window` 1 returns it unchanged.

    Frame t is scale/shift aligned to the mean of aligned frames max(0, t - window + 1) .. t - 1,
    then replaced by the `reduce` ("median" or "mean") of the aligned frames in the centred window
    t - (window - 1) // 2 .. t + window // 2 (truncated at the clip's ends).
    """
    disparity = np.asarray(disparity, dtype=np.float32)
    if disparity.ndim != 3:
        raise ValueError(f"disparity must have shape (T, H, W), got {disparity.shape}")
    if window < 1:
        raise ValueError(f"temporal window must be >= 1, got {window}")
    if reduce not in ("median", "mean"):
        raise ValueError(f"temporal reduce must be 'median' or 'mean', got {reduce!r}")
    if window == 1 or len(disparity) == 1:
        return disparity.copy()
    aligned = np.empty_like(disparity)
    aligned[0] = disparity[0]
    for t in range(1, len(disparity)):
        reference = aligned[max(0, t - window + 1) : t].mean(axis=0)
        scale, shift = _fit(disparity[t], reference, invariance)
        aligned[t] = scale * disparity[t] + shift
    combine = np.median if reduce == "median" else np.mean
    out = np.empty_like(aligned)
    before, after = (window - 1) // 2, window // 2
    for t in range(len(aligned)):
        out[t] = combine(aligned[max(0, t - before) : t + after + 1], axis=0)
    return out


def to_depth(
    disparity: np.ndarray, low_percentile: float, high_percentile: float, epsilon: float
) -> ClipDepth:
    """One clip's disparity (T, H, W) -> depth in [0, 1] (0 = near), normalised over the whole clip.

    depth = 1 - (disp - lo) / (hi - lo), clipped, with lo / hi the clip's robust ends. Raises
    FlatDepth when hi - lo is at most `epsilon` of max(|lo|, |hi|) (relative: disparities are known
    up to scale only).
    """
    values = np.asarray(disparity, dtype=np.float64)
    low, high = (float(v) for v in np.percentile(values, [low_percentile, high_percentile]))
    spread = high - low
    if not spread > epsilon * max(abs(low), abs(high)):
        raise FlatDepth(
            f"{low_percentile:g}th..{high_percentile:g}th percentile disparity range {low:.6g}..{high:.6g} "
            f"is within {epsilon:g} of its scale"
        )
    depth = 1.0 - np.clip((values - low) / spread, 0.0, 1.0)
    return ClipDepth(depth=depth.astype(np.float32), low=low, high=high)


def flicker(depth: np.ndarray) -> float:
    """Mean absolute frame-to-frame depth change (0 for a single frame)."""
    depth = np.asarray(depth, dtype=np.float64)
    return float(np.abs(np.diff(depth, axis=0)).mean()) if len(depth) > 1 else 0.0


@dataclass(frozen=True)
class ParallaxEstimator:
    flow: FlowParams
    cfg: ParallaxParams
    invariance: Invariance = "scale"

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        return parallax_disparity(frames, self.flow, self.cfg)


@dataclass(frozen=True)
class DepthAnythingEstimator:
    parts: object  # vidprior.models.depth_anything.DepthAnythingParts (torch imported on first use)
    batch_frames: int
    invariance: Invariance = "affine"

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        return self.parts.disparity(frames, self.batch_frames)


def _build_depth_anything(params: Params) -> DepthAnythingEstimator:
    from vidprior.models.depth_anything import build_depth_anything
    from vidprior.models.loading import default_device
    from vidprior.unic.generation import quiet_library_logs

    quiet_library_logs()
    parts = build_depth_anything(params.models.depth_anything)
    parts.model.to(default_device())
    return DepthAnythingEstimator(parts, params.udpdiff.depth.batch_frames)


register_estimator(
    "depth_anything",
    EstimatorEntry(build=_build_depth_anything, model_id=lambda p: p.models.depth_anything.model_id),
)
register_estimator(
    "parallax",
    EstimatorEntry(
        build=lambda p: ParallaxEstimator(p.udpdiff.depth.flow, p.udpdiff.depth.parallax),
        model_id=lambda p: f"parallax(flow={p.udpdiff.depth.flow.backend})",
    ),
)


# ---------------------------------------------------------------------------------------------
# The stage


def save_depth(path: Path, depth: np.ndarray) -> Path:
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez_compressed(handle, depth=np.asarray(depth, dtype=np.float32))
    return path


def load_depth(path: Path) -> np.ndarray:
    with np.load(path) as data:
        return data["depth"]


def process_clip(
    clip_id: str,
    clip_path: str,
    root: Path,
    output_dir: Path,
    cfg: DepthParams,
    model_id: str,
    estimator: Callable[[], VideoDepthEstimator],
) -> dict:
    """Estimate one clip's depth and write its outputs; a kept record, or a reject with the reason."""
    try:
        frames, fps = read_video(root / clip_path)
    except MediaError as exc:
        return rejected(clip_id, "unreadable_video", str(exc))
    model = estimator()
    disparity = np.asarray(model(frames), dtype=np.float32)
    if disparity.shape != frames.shape[:3]:
        raise ValueError(
            f"depth estimator {cfg.backend!r} returned shape {disparity.shape} for {clip_id}, "
            f"expected {frames.shape[:3]} (T, H, W)"
        )
    bad = int(np.count_nonzero(~np.isfinite(disparity)))
    if bad:
        return rejected(
            clip_id, "non_finite_depth", f"{bad} of {disparity.size} disparity values are NaN or inf"
        )
    disparity = align_temporal(disparity, cfg.temporal_window, model.invariance, cfg.temporal_reduce)
    try:
        clip = to_depth(disparity, cfg.low_percentile, cfg.high_percentile, cfg.flat_epsilon)
    except FlatDepth as exc:
        return rejected(clip_id, "flat_depth", str(exc))

    depth_path, values_path = f"{DEPTH_DIR}/{clip_id}.mp4", f"{DEPTH_DIR}/{clip_id}.npz"
    rate = max(1, round(fps))
    write_video(output_dir / depth_path, encode_depth(clip.depth), rate, lossless=True)
    save_depth(output_dir / values_path, clip.depth)
    frames_n, height, width = (int(n) for n in clip.depth.shape)
    spread = np.percentile(clip.depth, [5, 95])
    return ok(
        clip_id,
        depth_path=depth_path,
        depth_values_path=values_path,
        depth_backend=cfg.backend,
        depth_model=model_id,
        temporal_window=cfg.temporal_window,
        frames=frames_n,
        height=height,
        width=width,
        fps=rate,
        clip_path=clip_path,
        invariance=model.invariance,
        raw_low=clip.low,
        raw_high=clip.high,
        relative_range=clip.relative_range,
        depth_spread=float(spread[1] - spread[0]),
        flicker=flicker(clip.depth),
    )


def run(params: Params, inputs: Sequence[Path | str] | None, output_dir: Path) -> dict[str, float]:
    """inputs: [udpdiff.clips output]. Writes depth/{id}.mp4 + depth/{id}.npz, manifest and rejects."""
    cfg = params.udpdiff.depth
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    root = input_dir(inputs, 0, "udpdiff.clips")
    items = clip_items(inputs)
    entry = estimator_entry(cfg.backend)
    model_id = entry.model_id(params)
    # Built on the first clip that needs it, so a finished rerun loads no model.
    estimator = functools.cache(lambda: entry.build(params))

    result = run_batches(
        items,
        output_dir=output_dir,
        name="depth",
        config_fingerprint=fingerprint(STAGE, cfg.model_dump(mode="json"), model_id, str(root.resolve())),
        batch_size=BATCH,
        process=lambda batch: [
            process_clip(i, p, root, output_dir, cfg, model_id, estimator)
            for i, p in zip(batch["id"], batch["clip_path"], strict=True)
        ],
    )
    manifest, rejects = kept_table(result.records, STAGE, MANIFEST_COLUMNS)
    manifest = manifest.assign(seed=params.seed)
    metrics = finish_stage(
        manifest,
        rejects,
        stage=STAGE,
        items=len(items),
        output_dir=output_dir,
        reused_batches=result.reused_batches,
        started=started,
    )
    if len(manifest):
        metrics["median_depth_range"] = float(manifest["depth_spread"].median())
        metrics["median_relative_range"] = float(manifest["relative_range"].median())
        metrics["temporal_flicker"] = float(manifest["flicker"].mean())
    return metrics
