"""Stage `udpdiff.synthetic`: a Panda-70M-shaped source whose entity masks and depth are known exactly.

Each source video is cut into `clips_per_video` clips; each clip is its own scene: a textured, dull
background plane and 1..`max_entities` flat textured shapes (distinct saturated base colours) at
distinct depths in [0, 1] (0 = near), seen by a camera that translates sideways. A layer at depth d
moves in the image by the camera speed times (0.5 + d_bg) / (0.5 + d), so the background moves
slowest and nearer shapes faster (motion parallax, with depth d read as distance 0.5 + d); shapes do
not move on their own, so image motion alone determines depth order. Shapes are composited far to
near with anti-aliased edges (4x4 supersampled coverage); the entity id of a pixel is the nearest
shape covering at least half of it, its depth that shape's (else the background's).

Placement is redrawn until every shape stays inside the frame and keeps at least
`MIN_VISIBLE` of its area visible in every frame, so frame 0 shows every entity the clip has.

Output: `panda70m.csv` (Panda-70M's columns; timestamp, caption and matching_score hold one entry
per clip as Python-literal lists), `clips/{videoID}.{index}.mp4` (H.264), `truth/{clip_id}.npz`
(`masks` int32 [T, H, W], `depth` float32 [T, H, W], `entity_depth` float32 [N + 1] indexed by id,
0 = background) and manifest.parquet.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from vidprior.config import Params, SyntheticDenseParams
from vidprior.io.atomic import atomic_path
from vidprior.io.manifest import write_manifest, write_rejects
from vidprior.io.media import write_video
from vidprior.seeding import item_seed
from vidprior.synthetic_video import texture

STAGE = "udpdiff.synthetic"
CSV_NAME = "panda70m.csv"
CLIPS_DIR = "clips"
TRUTH_DIR = "truth"
PANDA_COLUMNS = ["videoID", "url", "timestamp", "caption", "matching_score"]

# Saturated, mutually distinct base colours (named for the captions); the background is a dull grey
# texture, so each shape differs from it and from every other shape in colour.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 40, 40),
    "green": (40, 175, 60),
    "blue": (45, 75, 225),
    "yellow": (235, 215, 35),
    "magenta": (215, 50, 205),
    "cyan": (40, 205, 215),
    "orange": (245, 140, 25),
    "purple": (115, 45, 165),
}
SHAPES = ("circle", "square", "triangle", "diamond", "ellipse")
BACKGROUND_DEPTH = (0.85, 1.0)
ENTITY_DEPTH = (0.1, 0.7)
MIN_DEPTH_GAP = 0.12  # between any two entities, so their order is unambiguous
RADIUS = (0.16, 0.24)  # of min(height, width)
# The nearest possible layer travels this share of the frame width over a clip.
MAX_TRAVEL = 0.3
MIN_VISIBLE = 0.5
GAP_SECONDS = 0.5  # between consecutive clips of a source video
SUPERSAMPLE = 4
PLACEMENT_TRIES = 200


@dataclass(frozen=True)
class Entity:
    colour: str
    shape: str
    depth: float
    radius: float
    centre: tuple[float, float]  # (x, y) at the middle frame


@dataclass(frozen=True)
class DenseClip:
    frames: np.ndarray  # (T, H, W, 3) uint8
    masks: np.ndarray  # (T, H, W) int32, 0 = background, i = entities[i - 1]
    depth: np.ndarray  # (T, H, W) float32 in [0, 1], 0 = near
    entities: tuple[Entity, ...]
    background_depth: float
    velocity: tuple[float, float]  # background image motion, px/frame (x, y)
    caption: str

    @property
    def entity_depth(self) -> np.ndarray:
        return np.array([self.background_depth, *(e.depth for e in self.entities)], dtype=np.float32)


def _inside(shape: str, dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
    if shape == "circle":
        return dx * dx + dy * dy <= r * r
    if shape == "square":
        return np.maximum(np.abs(dx), np.abs(dy)) <= 0.85 * r
    if shape == "diamond":
        return np.abs(dx) + np.abs(dy) <= 1.15 * r
    if shape == "ellipse":
        return (dx / (1.25 * r)) ** 2 + (dy / (0.75 * r)) ** 2 <= 1.0
    if shape == "triangle":  # apex up, base at 0.7 r below the centre
        return (dy >= -r) & (dy <= 0.7 * r) & (np.abs(dx) <= 0.95 * (dy + r) / 1.7)
    raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def _coverage(shape: str, r: float, cx: float, cy: float, height: int, width: int) -> np.ndarray:
    """Fraction of each pixel (centres at integer coordinates) inside the shape, from 4x4 subsamples."""
    offsets = (np.arange(SUPERSAMPLE) + 0.5) / SUPERSAMPLE - 0.5
    ys = np.arange(height)[:, None] + offsets[None, :]
    xs = np.arange(width)[:, None] + offsets[None, :]
    dy = (ys - cy).reshape(height, 1, SUPERSAMPLE, 1)
    dx = (xs - cx).reshape(1, width, 1, SUPERSAMPLE)
    return _inside(shape, dx, dy, r).mean(axis=(2, 3))


def _motion_factor(depth: float, background_depth: float) -> float:
    return (0.5 + background_depth) / (0.5 + depth)


def _positions(entity: Entity, velocity: np.ndarray, background_depth: float, frames: int) -> np.ndarray:
    """(T, 2) centre of the entity in each frame; the middle frame is at `entity.centre`."""
    step = velocity * _motion_factor(entity.depth, background_depth)
    t = np.arange(frames) - (frames - 1) / 2
    return np.asarray(entity.centre) + t[:, None] * step[None, :]


def _layer_maps(
    entities: Sequence[Entity],
    velocity: np.ndarray,
    background_depth: float,
    frames: int,
    height: int,
    width: int,
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Entity ids (T, H, W) and each entity's coverage (T, H, W), far to near compositing."""
    ids = np.zeros((frames, height, width), dtype=np.int32)
    order = sorted(range(len(entities)), key=lambda i: -entities[i].depth)
    by_index: dict[int, np.ndarray] = {}
    for i in order:
        e = entities[i]
        track = _positions(e, velocity, background_depth, frames)
        cover = np.stack([_coverage(e.shape, e.radius, x, y, height, width) for x, y in track])
        ids[cover >= 0.5] = i + 1
        by_index[i] = cover
    coverages = [by_index[i] for i in range(len(entities))]
    return ids, coverages


def _place(
    rng: np.random.Generator,
    count: int,
    velocity: np.ndarray,
    background_depth: float,
    cfg: SyntheticDenseParams,
) -> tuple[Entity, ...] | None:
    """Entities that stay inside the frame and stay mostly visible; None if no placement was found."""
    h, w, frames = cfg.height, cfg.width, cfg.frames
    colours = rng.choice(list(COLOURS), size=count, replace=False)
    depths = _spaced_depths(rng, count)
    for _ in range(PLACEMENT_TRIES):
        entities = []
        for colour, depth in zip(colours, depths, strict=True):
            radius = float(rng.uniform(*RADIUS) * min(h, w))
            half_travel = np.abs(velocity) * _motion_factor(depth, background_depth) * (frames - 1) / 2
            margin = 1.25 * radius + half_travel + 1.0
            if margin[0] * 2 >= w or margin[1] * 2 >= h:
                break
            centre = (
                float(rng.uniform(margin[0], w - margin[0])),
                float(rng.uniform(margin[1], h - margin[1])),
            )
            shape = str(rng.choice(SHAPES))
            entities.append(Entity(str(colour), shape, float(depth), radius, centre))
        if len(entities) < count:
            continue
        ids, coverages = _layer_maps(entities, velocity, background_depth, frames, h, w)
        full = [np.maximum((c >= 0.5).sum(axis=(1, 2)), 1) for c in coverages]
        visible = [(ids == i + 1).sum(axis=(1, 2)) / full[i] for i in range(count)]
        if min(float(v.min()) for v in visible) >= MIN_VISIBLE:
            return tuple(entities)
    return None


def _spaced_depths(rng: np.random.Generator, count: int) -> np.ndarray:
    lo, hi = ENTITY_DEPTH
    slack = (hi - lo) - MIN_DEPTH_GAP * (count - 1)
    if slack < 0:  # more entities than fit the gap: spread them evenly instead
        return rng.permutation(np.linspace(lo, hi, count))
    # Sorted uniform draws in the slack, then the gaps added back: spacing >= MIN_DEPTH_GAP.
    base = np.sort(rng.uniform(0.0, slack, count)) + lo + MIN_DEPTH_GAP * np.arange(count)
    return rng.permutation(base)


def _direction_word(velocity: np.ndarray) -> str:
    vx, vy = velocity
    if abs(vx) >= abs(vy):
        return "left" if vx < 0 else "right"
    return "up" if vy < 0 else "down"


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _caption(entities: Sequence[Entity], velocity: np.ndarray) -> str:
    """Nearest entity first, e.g. 'an orange circle and a blue square move left'."""
    names = [f"{_article(e.colour)} {e.colour} {e.shape}" for e in sorted(entities, key=lambda e: e.depth)]
    subject = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    verb = "moves" if len(names) == 1 else "move"
    return f"{subject} {verb} {_direction_word(velocity)}"


def render_clip(cfg: SyntheticDenseParams, seed: int) -> DenseClip:
    """One scene, deterministic from `seed` and the frame size / length / entity cap of `cfg`."""
    rng = np.random.default_rng(seed)
    frames, h, w = cfg.frames, cfg.height, cfg.width
    max_count = min(cfg.max_entities, len(COLOURS))
    background_depth = float(rng.uniform(*BACKGROUND_DEPTH))
    fastest = _motion_factor(ENTITY_DEPTH[0], background_depth)
    speed = MAX_TRAVEL * w / max(frames - 1, 1) / fastest
    angle = rng.uniform(-0.35, 0.35) + (math.pi if rng.random() < 0.5 else 0.0)  # a mostly horizontal pan
    velocity = speed * np.array([math.cos(angle), math.sin(angle)])

    entities = None
    for count in range(int(rng.integers(1, max_count + 1)), 0, -1):
        entities = _place(rng, count, velocity, background_depth, cfg)
        if entities is not None:
            break
    if entities is None:
        raise ValueError(
            f"cannot place even one entity in a {w}x{h} frame over {frames} frames; use a larger frame"
        )

    # Background: a dull texture plane on a canvas wide enough for the whole pan.
    travel = np.abs(velocity) * (frames - 1) / 2
    pad = int(math.ceil(travel.max())) + 4
    canvas = texture(h + 2 * pad, w + 2 * pad, rng, saturation=0.3, contrast=24.0)
    out = np.empty((frames, h, w, 3), dtype=np.float32)
    t_mid = np.arange(frames) - (frames - 1) / 2
    for t in range(frames):
        shift = velocity * t_mid[t] - pad
        matrix = np.array([[1.0, 0.0, shift[0]], [0.0, 1.0, shift[1]]])
        out[t] = cv2.warpAffine(canvas, matrix, (w, h), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)

    ids, coverages = _layer_maps(entities, velocity, background_depth, frames, h, w)
    for i in sorted(range(len(entities)), key=lambda i: -entities[i].depth):
        e = entities[i]
        side = int(math.ceil(2.6 * e.radius)) + 8
        patch = texture(side, side, rng, saturation=0.5, contrast=9.0) - 128.0 + np.asarray(COLOURS[e.colour])
        half = (side - 1) / 2
        for t, (x, y) in enumerate(_positions(e, velocity, background_depth, frames)):
            matrix = np.array([[1.0, 0.0, x - half], [0.0, 1.0, y - half]])
            painted = cv2.warpAffine(
                patch, matrix, (w, h), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT
            )
            alpha = coverages[i][t][..., None].astype(np.float32)
            out[t] = alpha * painted + (1.0 - alpha) * out[t]

    depth_of = np.array([background_depth, *(e.depth for e in entities)], dtype=np.float32)
    return DenseClip(
        frames=np.clip(np.rint(out), 0, 255).astype(np.uint8),
        masks=ids,
        depth=depth_of[ids],
        entities=entities,
        background_depth=background_depth,
        velocity=(float(velocity[0]), float(velocity[1])),
        caption=_caption(entities, velocity),
    )


def video_id(index: int) -> str:
    # Dot-free, so "{videoID}.{clip index}" splits back unambiguously.
    return f"synth{index:05d}"


def format_timestamp(seconds: float) -> str:
    """Panda-70M's 'H:MM:SS.mmm'."""
    millis = int(round(seconds * 1000))
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs, ms = divmod(rest, 1000)
    return f"{hours}:{minutes:02d}:{secs:02d}.{ms:03d}"


def save_truth(path: Path, clip: DenseClip) -> Path:
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez_compressed(handle, masks=clip.masks, depth=clip.depth, entity_depth=clip.entity_depth)
    return path


def load_truth(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def run(params: Params, inputs: Sequence[Path | str] | None, output_dir: Path) -> dict[str, float]:
    """No inputs. Writes panda70m.csv, clips/, truth/, manifest.parquet and an empty rejects.parquet."""
    if inputs:
        raise ValueError(f"{STAGE} takes no inputs, got {list(inputs)}")
    cfg = params.udpdiff.synthetic
    if cfg.height % 2 or cfg.width % 2:
        # Checked before any rendering: the clips are H.264 (yuv420p), which needs even sizes.
        raise ValueError(
            "udpdiff.synthetic.height/width: expected even values (H.264 clips), "
            f"got {cfg.height}x{cfg.width}"
        )
    output_dir = Path(output_dir)
    started = time.perf_counter()
    duration = cfg.frames / cfg.fps
    csv_rows, manifest_rows = [], []
    for v in range(cfg.videos):
        vid = video_id(v)
        stamps, captions, scores = [], [], []
        score_rng = np.random.default_rng(item_seed(params.seed, f"{STAGE}/score", vid))
        for k in range(cfg.clips_per_video):
            clip_id = f"{vid}.{k}"
            seed = item_seed(params.seed, STAGE, clip_id)
            clip = render_clip(cfg, seed)
            clip_path = f"{CLIPS_DIR}/{clip_id}.mp4"
            truth_path = f"{TRUTH_DIR}/{clip_id}.npz"
            write_video(output_dir / clip_path, clip.frames, cfg.fps)
            save_truth(output_dir / truth_path, clip)
            start = k * (duration + GAP_SECONDS)
            stamps.append([format_timestamp(start), format_timestamp(start + duration)])
            captions.append(clip.caption)
            scores.append(round(float(score_rng.uniform(0.38, 0.52)), 4))
            manifest_rows.append(
                {
                    "id": clip_id,
                    "video_id": vid,
                    "clip_index": k,
                    "clip_path": clip_path,
                    "truth_path": truth_path,
                    "caption": clip.caption,
                    "entities": len(clip.entities),
                    "background_depth": clip.background_depth,
                    "frames": cfg.frames,
                    "height": cfg.height,
                    "width": cfg.width,
                    "fps": cfg.fps,
                    "seed": seed,
                }
            )
        csv_rows.append(
            {
                "videoID": vid,
                "url": f"synthetic://udpdiff/{vid}",
                "timestamp": str(stamps),
                "caption": str(captions),
                "matching_score": str(scores),
            }
        )
    with atomic_path(output_dir / CSV_NAME) as tmp:
        pd.DataFrame(csv_rows, columns=PANDA_COLUMNS).to_csv(tmp, index=False)
    manifest = pd.DataFrame(manifest_rows)
    write_manifest(manifest, output_dir)
    write_rejects(pd.DataFrame(columns=["id", "stage", "reason", "detail"]), output_dir)
    return {
        "videos": cfg.videos,
        "clips": len(manifest),
        "entities_total": int(manifest["entities"].sum()),
        "entities_mean": float(manifest["entities"].mean()),
        "stage_seconds": round(time.perf_counter() - started, 4),
    }
