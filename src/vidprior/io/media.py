"""Images (PNG) and videos (H.264 mp4) on disk, as uint8 RGB arrays in memory.

Videos go through PyAV (FFmpeg with libx264): the opencv wheels can read H.264 but cannot write
it. A reader that gets fewer frames than the container promises reports the file as truncated
instead of returning a short clip, because a short clip would bias every motion statistic.
"""

from __future__ import annotations

import hashlib
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image

from vidprior.io.atomic import atomic_path


class MediaError(ValueError):
    """A media file is missing, corrupt, truncated or not what the caller asked to write."""


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_frames(frames: np.ndarray, where: Path) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise MediaError(f"{where}: expected frames of shape (T, H, W, 3), got {frames.shape}")
    if frames.dtype != np.uint8:
        raise MediaError(f"{where}: expected uint8 frames, got {frames.dtype}")
    if len(frames) == 0:
        raise MediaError(f"{where}: no frames to write")
    return frames


def write_video(path: Path, frames: np.ndarray, fps: int, *, crf: int = 18, lossless: bool = False) -> Path:
    """Write RGB frames (T, H, W, 3) uint8 as an H.264 mp4, atomically.

    `lossless=True` encodes the RGB values themselves (libx264rgb, qp 0), so `read_video` returns
    exactly the frames written: for label videos (Pixelplanes), where yuv420p's chroma subsampling
    would bleed one entity's colour into its neighbour. `crf` is then ignored.
    """
    import av

    path = Path(path)
    frames = _check_frames(frames, path)
    _, height, width, _ = frames.shape
    if not lossless and (height % 2 or width % 2):
        # yuv420p subsamples chroma by 2 in each direction, so x264 refuses odd sizes.
        raise MediaError(f"{path}: H.264 (yuv420p) needs an even width and height, got {width}x{height}")
    # The same frames must give the same bytes (resumed runs, DVC hashes): one thread, and no
    # B-frames: with them x264's B-frame decisions read uninitialised memory on small frames
    # (a 32 px test clip changed bytes in ~1 encode of 30 as the heap changed; 0 of 200 without).
    if lossless:
        codec, pix_fmt, quality = "libx264rgb", "rgb24", {"qp": "0"}
    else:
        codec, pix_fmt, quality = "libx264", "yuv420p", {"crf": str(crf)}
    with atomic_path(path) as tmp, av.open(str(tmp), mode="w", format="mp4") as container:
        stream = container.add_stream(codec, rate=Fraction(int(fps)))
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        stream.options = {**quality, "preset": "medium", "threads": "1", "x264-params": "bframes=0"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def read_video(path: Path) -> tuple[np.ndarray, float]:
    """Return (frames (T, H, W, 3) uint8 RGB, fps); MediaError if missing, corrupt or truncated."""
    import av

    path = Path(path)
    if not path.exists():
        raise MediaError(f"{path}: video not found")
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise MediaError(f"{path}: no video stream")
            stream = container.streams.video[0]
            promised = int(stream.frames or 0)
            fps = float(stream.average_rate or stream.guessed_rate or 0.0)
            frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
    except av.FFmpegError as exc:
        raise MediaError(f"{path}: not a readable video: {exc}") from None
    if not frames:
        raise MediaError(f"{path}: no decodable frames")
    if promised and len(frames) < promised:
        raise MediaError(f"{path}: truncated: decoded {len(frames)} of {promised} frames")
    return np.stack(frames), fps


def sample_frame_indices(n_frames: int, count: int) -> list[int]:
    """`count` frame indices at regular intervals from the first frame to the last (Uni-C Suppl. VI)."""
    if n_frames < 1 or count < 1:
        raise ValueError(f"need n_frames >= 1 and count >= 1, got {n_frames} and {count}")
    if count == 1:
        return [0]
    return [round(i * (n_frames - 1) / (count - 1)) for i in range(count)]


def write_image(path: Path, image: np.ndarray) -> Path:
    """Write an RGB (H, W, 3) uint8 image as PNG, atomically."""
    path = Path(path)
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
        raise MediaError(f"{path}: expected an (H, W, 3) uint8 image, got {image.shape} {image.dtype}")
    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")
    return path


def read_image(path: Path) -> np.ndarray:
    path = Path(path)
    if not path.exists():
        raise MediaError(f"{path}: image not found")
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except OSError as exc:
        raise MediaError(f"{path}: not a readable image: {exc}") from None
