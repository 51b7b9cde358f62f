"""Synthetic videos with known motion, for tests and benchmarks of flow, the flow rule and judges.

Every scene is a seeded random smooth texture (flow needs texture to lock on to) seen by a camera
that is still, pans or zooms about the frame centre, optionally with a textured disc (the
"object", tinted warm so it also stands out in a single frame) moving over it. Each returns a
`SyntheticVideo` with the frames and the truth: the dense forward flow of every frame pair, the
object masks and the displacements. Sub-pixel motion is rendered by bicubic resampling of a larger
canvas, so the true flow is exact up to interpolation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

# Warm, saturated object over a duller background: visible to colour-contrast saliency.
_OBJECT_TINT = np.array([70.0, 20.0, -70.0], dtype=np.float32)
_BACKGROUND_SATURATION, _BACKGROUND_CONTRAST = 0.3, 28.0


@dataclass(frozen=True, eq=False)
class SyntheticVideo:
    name: str
    frames: np.ndarray  # (T, H, W, 3) uint8 RGB
    # True forward flow (u, v) from frame t to t+1 at every pixel of frame t: (T-1, H, W, 2) float32.
    flow: np.ndarray
    camera_shift: tuple[float, float] = (0.0, 0.0)  # pan, px/frame (x, y)
    zoom_rate: float = 0.0  # scale change per frame about the frame centre (0.02 = 2% zoom in)
    object_shift: tuple[float, float] = (0.0, 0.0)  # object motion relative to the scene, px/frame
    masks: np.ndarray | None = None  # (T, H, W) bool object masks; None without an object
    object_area: float = 0.0  # mean fraction of the frame the object covers
    gains: tuple[float, ...] = ()  # per-frame brightness factors (flicker); empty means all 1

    @property
    def n_frames(self) -> int:
        return len(self.frames)


def texture(
    height: int, width: int, rng: np.random.Generator, *, tint=None, saturation: float = 1.0, contrast=40.0
) -> np.ndarray:
    """Smooth random RGB texture (H, W, 3) float32 around mid-grey (std `contrast`), detail 48 px to 3 px."""
    out = np.zeros((height, width, 3), dtype=np.float32)
    for cell, weight in ((48, 1.0), (24, 1.0), (12, 1.0), (6, 1.0), (3, 0.7)):
        coarse = rng.standard_normal((height // cell + 3, width // cell + 3, 3)).astype(np.float32)
        big = cv2.resize(coarse, ((width // cell + 3) * cell, (height // cell + 3) * cell), cv2.INTER_CUBIC)
        out += weight * big[cell : cell + height, cell : cell + width]
    out = (out - out.mean()) / out.std()
    grey = out.mean(axis=2, keepdims=True)
    out = grey + saturation * (out - grey)
    out = 128.0 + contrast * out
    if tint is not None:
        out += np.asarray(tint, dtype=np.float32)
    return out


def _scene(
    name: str,
    *,
    frames: int,
    height: int,
    width: int,
    seed: int,
    pan: tuple[float, float] = (0.0, 0.0),
    zoom: float = 0.0,
    object_shift: tuple[float, float] | None = None,
    object_area: float = 0.0,
    gains: tuple[float, ...] = (),
) -> SyntheticVideo:
    if frames < 1 or height < 8 or width < 8:
        raise ValueError(f"need frames >= 1 and a frame of at least 8x8, got {frames} x {height}x{width}")
    rng = np.random.default_rng(seed)
    pan_x, pan_y = (float(p) for p in pan)
    span = frames - 1
    centre = np.array([(width - 1) / 2, (height - 1) / 2])
    scales = [(1.0 + zoom) ** t for t in range(frames)]
    # Canvas large enough that no frame ever samples outside it (pan travel, zoom out).
    pad = int(math.ceil(max(abs(pan_x), abs(pan_y)) * span / 2 + max(height, width) / min(scales) / 2)) + 8
    look = {"saturation": _BACKGROUND_SATURATION, "contrast": _BACKGROUND_CONTRAST}
    canvas = texture(height + 2 * pad, width + 2 * pad, rng, **look)
    canvas_centre = np.array([(width - 1) / 2 + pad, (height - 1) / 2 + pad])
    # Pan centred on the middle frame, so its travel is symmetric.
    shifts = [np.array([pan_x, pan_y]) * (t - span / 2) for t in range(frames)]

    out = np.empty((frames, height, width, 3), dtype=np.float32)
    for t, (scale, shift) in enumerate(zip(scales, shifts, strict=True)):
        offset = centre + shift - scale * canvas_centre
        matrix = np.array([[scale, 0.0, offset[0]], [0.0, scale, offset[1]]])
        out[t] = cv2.warpAffine(canvas, matrix, (width, height), flags=cv2.INTER_CUBIC)

    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    flow = np.zeros((max(frames - 1, 0), height, width, 2), dtype=np.float32)
    for t in range(frames - 1):
        # A scene point at x_t moves to x_{t+1} with x_{t+1} - c - s_{t+1} = (1 + zoom) (x_t - c - s_t).
        flow[t, ..., 0] = zoom * (xs - centre[0] - shifts[t][0]) + pan_x
        flow[t, ..., 1] = zoom * (ys - centre[1] - shifts[t][1]) + pan_y

    masks = None
    if object_shift is not None:
        masks = _add_object(out, flow, rng, np.array(object_shift, float) + (pan_x, pan_y), object_area, name)

    if gains:
        out *= np.asarray(gains, dtype=np.float32)[:, None, None, None]
    frames_u8 = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    return SyntheticVideo(
        name=name,
        frames=frames_u8,
        flow=flow,
        camera_shift=(pan_x, pan_y),
        zoom_rate=float(zoom),
        object_shift=tuple(float(s) for s in object_shift) if object_shift is not None else (0.0, 0.0),
        masks=masks,
        object_area=float(masks.mean()) if masks is not None else 0.0,
        gains=tuple(float(g) for g in gains),
    )


def _add_object(
    out: np.ndarray, flow: np.ndarray, rng: np.random.Generator, step: np.ndarray, area: float, name: str
) -> np.ndarray:
    """Composite a textured disc of `area` (fraction) moving by `step` px/frame in the image, in place."""
    frames, height, width, _ = out.shape
    if not 0 < area < 0.6:
        raise ValueError(f"{name}: object area must be in (0, 0.6), got {area}")
    radius = math.sqrt(area * height * width / math.pi)
    span = frames - 1
    centre = np.array([(width - 1) / 2, (height - 1) / 2])
    travel = np.abs(step) * span / 2
    if np.any(radius + travel > centre):
        raise ValueError(
            f"{name}: an object of area {area} moving ({step[0]:g}, {step[1]:g}) px/frame leaves the "
            f"{width}x{height} frame within {frames} frames"
        )
    side = int(math.ceil(2 * radius)) + 8
    patch = texture(side, side, rng, tint=_OBJECT_TINT)
    patch_centre = np.array([(side - 1) / 2, (side - 1) / 2])
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    masks = np.zeros((frames, height, width), dtype=bool)
    for t in range(frames):
        where = centre + step * (t - span / 2)
        offset = where - patch_centre
        matrix = np.array([[1.0, 0.0, offset[0]], [0.0, 1.0, offset[1]]])
        painted = cv2.warpAffine(patch, matrix, (width, height), flags=cv2.INTER_CUBIC)
        # Anti-aliased edge: alpha falls from 1 to 0 over one pixel at the rim.
        alpha = np.clip(radius + 0.5 - np.hypot(xs - where[0], ys - where[1]), 0.0, 1.0)[..., None]
        out[t] = alpha * painted + (1.0 - alpha) * out[t]
        masks[t] = alpha[..., 0] >= 0.5
        if t < span:
            flow[t][masks[t]] = step
    return masks


def static(frames: int = 12, height: int = 128, width: int = 128, seed: int = 0) -> SyntheticVideo:
    """A still textured scene: no motion at all."""
    return _scene("static", frames=frames, height=height, width=width, seed=seed)


def pan(
    dx: float = 2.0, dy: float = 1.0, frames: int = 12, height: int = 128, width: int = 128, seed: int = 0
) -> SyntheticVideo:
    """The whole frame translates by (dx, dy) px/frame: camera-only motion."""
    return _scene("pan", frames=frames, height=height, width=width, seed=seed, pan=(dx, dy))


def zoom(
    rate: float = 0.02, frames: int = 12, height: int = 128, width: int = 128, seed: int = 0
) -> SyntheticVideo:
    """Camera zoom about the frame centre by `rate` per frame (> 0 zooms in): flow = rate * (x - c)."""
    return _scene("zoom", frames=frames, height=height, width=width, seed=seed, zoom=rate)


def moving_object(
    dx: float = 2.0,
    dy: float = 1.0,
    size: float = 0.2,
    frames: int = 12,
    height: int = 128,
    width: int = 128,
    seed: int = 0,
) -> SyntheticVideo:
    """A textured disc covering `size` of the frame moves (dx, dy) px/frame over a still background."""
    return _scene(
        "moving_object",
        frames=frames,
        height=height,
        width=width,
        seed=seed,
        object_shift=(dx, dy),
        object_area=size,
    )


def object_and_pan(
    dx: float = 2.0,
    dy: float = -1.0,
    pan_dx: float = 1.5,
    pan_dy: float = 0.5,
    size: float = 0.2,
    frames: int = 12,
    height: int = 128,
    width: int = 128,
    seed: int = 0,
) -> SyntheticVideo:
    """The camera pans (pan_dx, pan_dy) while the object moves (dx, dy) relative to the scene."""
    return _scene(
        "object_and_pan",
        frames=frames,
        height=height,
        width=width,
        seed=seed,
        pan=(pan_dx, pan_dy),
        object_shift=(dx, dy),
        object_area=size,
    )


def flicker(
    amplitude: float = 0.8, frames: int = 12, height: int = 128, width: int = 128, seed: int = 0
) -> SyntheticVideo:
    """A still scene whose brightness drops by `amplitude` (0.8: to 20%) on every other frame."""
    if not 0 <= amplitude < 1:
        raise ValueError(f"flicker amplitude must be in [0, 1), got {amplitude}")
    gains = tuple(1.0 - amplitude * (t % 2) for t in range(frames))
    return _scene("flicker", frames=frames, height=height, width=width, seed=seed, gains=gains)


SCENES = {
    "static": static,
    "pan": pan,
    "zoom": zoom,
    "moving_object": moving_object,
    "object_and_pan": object_and_pan,
    "flicker": flicker,
}
