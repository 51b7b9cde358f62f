"""Stage `udpdiff.segment`: entity segmentation of every clip, consistent over time, as Pixelplanes.

Input: the `udpdiff.clips` output (manifest `id`, `clip_path`). Each clip's first frame is split
into entities, the entities are followed through the clip, the masks are cleaned, and the result is
written as `seg/{id}.npz` (`ids` int32 [T, H, W], 0 = background, entities 1..N with one id per
entity for the whole clip) and `seg/{id}.mp4`, the lossless Pixelplanes video of those ids
(`pixelplanes.encode_segmentation` with seed `item_seed(seed, STAGE, id)`; palette in the manifest).

Backends (`udpdiff.segment.backend`):

* "models" (the paper's pipeline, with Mask2Former standing in for EntitySeg CropFormer): the
  panoptic segments of frame 0 scoring above `score_threshold` and covering at least
  `min_region_area`, the largest `max_entities` by area, each prompt SAM2 with its mask (object id
  = entity id) on frame 0; SAM2 propagates them over the clip and each pixel takes the entity with
  the highest mask logit, if that logit is above 0, else background. See
  `vidprior.models.entity_segmentation`.
* "classical" (no weights): a baseline for the synthetic source and simple footage of flat,
  saturated objects on a dull background; not a replacement for the models. Colours are measured in
  the chroma plane of RGB (`chroma`: luminance removed, still linear in RGB, so an anti-aliased
  edge pixel is a straight blend of its two sides). Frame 0's colours are the mean-shift modes of
  its flat pixels (`classical.flat_range`); the mode nearest grey is the background, modes at least
  `min_chroma` from it are entity colours, unless they lie on the segment between two such colours
  (a blend along an edge, not a colour; `BLEND_SPAN`). Every pixel of every frame takes the nearest
  colour, and an edge pixel takes the better blend of two colours present around it, going to the
  entity when at least `EDGE_COVERAGE` of it is covered. Frame 0's connected regions of each colour
  are the entities (those covering at least `min_region_area`, the largest `max_entities`). Labels
  then move frame to frame along the optical flow (`segment.flow`; backward flow, nearest-label
  sampling), and are re-snapped to the new frame's colours: a pixel keeps its warped label when the
  colours agree, else it takes the nearest warped label of its own colour within `snap_radius` of
  the frame diagonal, else background. So labels follow the colours and cannot drift.

Cleaning (both backends): per frame, entity regions (8-connected components) smaller than
`min_region_area` of the frame become background; then background pockets (4-connected) that touch
only one entity and not the frame border, up to `max_hole_area` of the frame, are filled with that
entity. Removal goes first so that a speck inside an entity leaves a hole that is then filled.
Entities left anywhere in the clip are renumbered 1..N in their frame-0 order (largest first).

Rejects: `unreadable_video` (the clip cannot be decoded), `no_entities` (no entity on frame 0, or
none left after cleaning), `segmentation_failed` (a model gave non-finite logits, or ran out of
device memory on the clip).

Classical accuracy, measured on `synthetic.render_clip` scenes (seeds 0..N-1, 1-3 shapes, 9
frames unless noted): per-entity IoU after one-to-one matching over the clip (the tests'
`matched_ious`), worst frame of each clip; "H.264" is the frames after the synthetic and clips
stages' two lossy 4:2:0 encodes, which halve the chroma resolution:

| frames | scenes | entity count right | worst-frame IoU min / p10 / median |
|---|---|---|---|
| 32x48 exact | 40 | 40 | 0.846 / 0.897 / 0.952 |
| 48x72 exact | 30 | 30 | 0.854 / 0.931 / 0.970 |
| 64x96 exact | 40 | 40 | 0.918 / 0.946 / 0.981 |
| 64x96 exact, 49 frames | 15 | 15 | 0.912 / 0.938 / 0.957 |
| 64x96 H.264 | 30 | 30 | 0.652 / 0.810 / 0.850 |
| 32x48 H.264 (the tiny profile) | 30 | 25 | - / - / 0.716 |

With the edge threshold at 0.5 instead of `EDGE_COVERAGE` the exact 32x48 row is 0.734 / 0.833 /
0.920 and the 64x96 one 0.872 / 0.905 / 0.957. At 32x48 H.264 the misses are shapes of under 65 px
whose chroma never settles into a flat pixel, so their colour is not found. The backend takes
about 0.3 s a frame at 480x720 (5 shapes, one core).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
import pandas as pd

from vidprior.config import ClassicalSegmentParams, Params, SegmentParams
from vidprior.io.atomic import atomic_path
from vidprior.io.manifest import MANIFEST
from vidprior.io.media import MediaError, read_video, write_video
from vidprior.seeding import item_seed
from vidprior.udpdiff.pixelplanes import encode_segmentation, palette_to_json
from vidprior.unic.generation import fingerprint, finish_stage, kept_table, ok, rejected, run_batches
from vidprior.unic.stage_inputs import input_dir, read_input_manifest

if TYPE_CHECKING:
    from vidprior.models.entity_segmentation import EntitySegmenterParts, Sam2VideoParts

STAGE = "udpdiff.segment"
BATCH = 8  # clips segmented and checkpointed together
SEG_DIR = "seg"
CLASSICAL_SEGMENTER = "classical-colour-modes"
MANIFEST_COLUMNS = [
    "id",
    "seg_path",
    "seg_ids_path",
    "palette",
    "palette_seed",
    "entities",
    "first_frame_entities",
    "segment_backend",
    "segmenter_model",
    "propagator_model",
    "holes_filled_px",
    "regions_removed",
    "frames",
    "height",
    "width",
    "fps",
    "clip_path",
]
# An edge pixel between the background and an entity is the entity's when at least this share of
# it is covered: half, less half a 1/16 step, because renderers that supersample 4x4 (the synthetic
# source) quantise coverage to 1/16 and give exactly half-covered pixels to the shape.
EDGE_COVERAGE = 15 / 32
_SQRT2, _SQRT6 = float(np.sqrt(2.0)), float(np.sqrt(6.0))
_CHROMA_LIMIT = 212.0  # |chroma| components stay within 255 * 2 / sqrt(6) = 208.2
_HIST_BIN = 4.0
_MAX_MODES = 256  # histogram peaks refined by mean shift, densest first
_MEAN_SHIFT_STEPS = 20
_EDGE_NEIGHBOURHOOD = 5  # px: the colours an edge pixel may blend are those of flat pixels this close
# A colour mode this far along the segment between two heavier colours (and near it) is their blend.
BLEND_SPAN = (0.15, 0.85)


class SegmentationFailed(RuntimeError):
    """One clip could not be segmented (the reason goes to its reject row)."""


# ---------------------------------------------------------------------------------------------
# Cleaning


@dataclass(frozen=True)
class Cleaned:
    ids: np.ndarray  # (T, H, W) int32, entities 1..N
    holes_filled_px: int
    regions_removed: int


def remove_small_regions(ids: np.ndarray, min_area: float) -> tuple[np.ndarray, int]:
    """Entity regions (8-connected) with fewer than `min_area` pixels -> background; (ids, count)."""
    out = np.array(ids, dtype=np.int32, copy=True)
    removed = 0
    for frame in out:
        for label in np.unique(frame[frame > 0]).tolist():
            count, components, stats, _ = cv2.connectedComponentsWithStats(
                (frame == label).astype(np.uint8), connectivity=8
            )
            small = stats[:, cv2.CC_STAT_AREA] < min_area
            small[0] = False  # component 0 is everything else
            if small.any():
                frame[small[components]] = 0
                removed += int(small.sum())
    return out, removed


def _neighbour_pairs(components: np.ndarray, frame: np.ndarray) -> np.ndarray:
    """(component, entity) for every 4-adjacent pair of a background-component pixel and an entity pixel."""
    pairs = []
    for a, b in (
        (components[:, :-1], frame[:, 1:]),
        (components[:, 1:], frame[:, :-1]),
        (components[:-1, :], frame[1:, :]),
        (components[1:, :], frame[:-1, :]),
    ):
        touch = (a > 0) & (b > 0)
        pairs.append(np.stack([a[touch], b[touch]], axis=1))
    return np.unique(np.concatenate(pairs), axis=0)


def fill_holes(ids: np.ndarray, max_area: float) -> tuple[np.ndarray, int]:
    """Background pockets (4-connected) of at most `max_area` pixels that touch exactly one entity
    and not the frame border get that entity; (ids, pixels filled)."""
    out = np.array(ids, dtype=np.int32, copy=True)
    filled = 0
    if max_area < 1:
        return out, 0
    height, width = out.shape[1:]
    for frame in out:
        count, components, stats, _ = cv2.connectedComponentsWithStats(
            (frame == 0).astype(np.uint8), connectivity=4
        )
        if count <= 1:
            continue
        x, y, w, h, area = (stats[:, k] for k in range(5))
        inside = (x > 0) & (y > 0) & (x + w < width) & (y + h < height)
        candidate = inside & (area <= max_area)
        candidate[0] = False
        if not candidate.any():
            continue
        pairs = _neighbour_pairs(components, frame)
        neighbours = np.bincount(pairs[:, 0], minlength=count)
        fill_with = np.zeros(count, dtype=np.int32)
        fill_with[pairs[:, 0]] = pairs[:, 1]  # the only neighbour, where there is one
        fillable = candidate & (neighbours == 1)
        target = fillable[components]
        frame[target] = fill_with[components][target]
        filled += int(target.sum())
    return out, filled


def relabel(ids: np.ndarray) -> np.ndarray:
    """Entities renumbered 1..N in increasing order of their current ids; background stays 0."""
    present = np.unique(ids)
    present = present[present > 0]
    lookup = np.zeros(int(ids.max()) + 1 if ids.size else 1, dtype=np.int32)
    lookup[present] = np.arange(1, len(present) + 1, dtype=np.int32)
    return lookup[ids]


def clean(ids: np.ndarray, max_hole_area: float, min_region_area: float) -> Cleaned:
    """Small regions removed, small holes filled (areas as shares of the frame), entities 1..N."""
    ids = np.asarray(ids)
    if ids.ndim != 3 or ids.dtype.kind not in "iu":
        raise ValueError(f"ids must be an integer array (T, H, W), got {ids.dtype} {ids.shape}")
    pixels = ids.shape[1] * ids.shape[2]
    ids, removed = remove_small_regions(ids, min_region_area * pixels)
    ids, filled = fill_holes(ids, max_hole_area * pixels)
    return Cleaned(relabel(ids), holes_filled_px=filled, regions_removed=removed)


# ---------------------------------------------------------------------------------------------
# Classical backend: colour modes, blends at edges, flow warping re-snapped to colours


def chroma(frames: np.ndarray) -> np.ndarray:
    """(..., 3) uint8 RGB -> (..., 2) float32 opponent coordinates ((R - G) / sqrt 2, (R + G - 2B) / sqrt 6).

    The projection of RGB on the plane normal to the grey axis: grey is (0, 0), lightness does not
    count, and blends of two colours stay on the segment between them.
    """
    f = np.asarray(frames, dtype=np.float32)
    return np.stack([(f[..., 0] - f[..., 1]) / _SQRT2, (f[..., 0] + f[..., 1] - 2 * f[..., 2]) / _SQRT6], -1)


def flat_pixels(q: np.ndarray, flat_range: float) -> np.ndarray:
    """(H, W, 2) chroma -> (H, W) bool: the 3x3 neighbourhood spans at most `flat_range` in each channel."""
    kernel = np.ones((3, 3), np.uint8)
    spread = np.zeros(q.shape[:2], np.float32)
    for c in range(2):
        channel = np.ascontiguousarray(q[..., c])
        spread = np.maximum(spread, cv2.dilate(channel, kernel) - cv2.erode(channel, kernel))
    return spread <= flat_range


def _mean_shift(
    seeds: np.ndarray, points: np.ndarray, weights: np.ndarray, radius: float
) -> tuple[np.ndarray, np.ndarray]:
    """Flat-kernel mean shift of `seeds` over weighted `points` -> (modes, mass within `radius`)."""
    modes = seeds.astype(np.float64)
    for _ in range(_MEAN_SHIFT_STEPS):
        dist2 = ((modes[:, None, :] - points[None, :, :]) ** 2).sum(-1)
        near = (dist2 < radius * radius) * weights[None, :]
        mass = near.sum(1)
        moved = np.where(mass[:, None] > 0, near @ points / np.maximum(mass, 1e-12)[:, None], modes)
        done = np.abs(moved - modes).max() < 0.01
        modes = moved
        if done:
            break
    dist2 = ((modes[:, None, :] - points[None, :, :]) ** 2).sum(-1)
    return modes, ((dist2 < radius * radius) * weights[None, :]).sum(1)


def colour_modes(frame: np.ndarray, cfg: ClassicalSegmentParams) -> tuple[np.ndarray, np.ndarray]:
    """(background chroma (2,), entity colours (K, 2), most pixels first) of one RGB frame."""
    q = chroma(frame)
    flat = flat_pixels(q, cfg.flat_range)
    points = q[flat] if flat.any() else q.reshape(-1, 2)
    bins = int(2 * _CHROMA_LIMIT / _HIST_BIN)
    cell = np.clip(((points + _CHROMA_LIMIT) / _HIST_BIN).astype(np.int64), 0, bins - 1)
    flat_index = cell[:, 0] * bins + cell[:, 1]
    counts = np.bincount(flat_index, minlength=bins * bins).astype(np.float64)
    # Mean shift runs over the occupied bins, each at the mean of its pixels, weighted by their count.
    occupied = np.flatnonzero(counts)
    sums = np.stack(
        [np.bincount(flat_index, weights=points[:, c], minlength=bins * bins) for c in range(2)], 1
    )
    centres = sums[occupied] / counts[occupied, None]
    density = cv2.GaussianBlur(counts.reshape(bins, bins).astype(np.float32), (0, 0), 1.0)
    peaks = (density == cv2.dilate(density, np.ones((5, 5), np.uint8))) & (density > 0)
    peak_index = np.flatnonzero(peaks.ravel())
    peak_index = peak_index[np.argsort(-density.ravel()[peak_index], kind="stable")][:_MAX_MODES]
    seeds = (np.stack(np.unravel_index(peak_index, (bins, bins)), 1) + 0.5) * _HIST_BIN - _CHROMA_LIMIT
    modes, mass = _mean_shift(seeds, centres, counts[occupied], cfg.colour_radius)

    kept: list[int] = []
    for i in np.argsort(-mass, kind="stable"):  # a mode within the radius of a heavier one is that one
        if all(np.hypot(*(modes[i] - modes[j])) >= cfg.colour_radius for j in kept):
            kept.append(int(i))
    greyish = [i for i in kept if np.hypot(*modes[i]) < cfg.min_chroma]
    background = modes[greyish[0]] if greyish else np.zeros(2)
    min_mass = cfg.min_colour_area * q.shape[0] * q.shape[1]
    colours: list[np.ndarray] = []
    for i in kept:
        if np.hypot(*(modes[i] - background)) < cfg.min_chroma or mass[i] < min_mass:
            continue
        if _is_blend(modes[i], [background, *colours], cfg.colour_radius):
            continue
        colours.append(modes[i])
    return background.astype(np.float32), np.asarray(colours, dtype=np.float32).reshape(-1, 2)


def _is_blend(mode: np.ndarray, taken: list[np.ndarray], radius: float) -> bool:
    """Whether `mode` lies (within `radius`) inside the segment between two heavier colours."""
    for a_i, a in enumerate(taken):
        for b in taken[a_i + 1 :]:
            span = b - a
            s = float((mode - a) @ span / (span @ span))
            if BLEND_SPAN[0] <= s <= BLEND_SPAN[1] and np.hypot(*(mode - (a + s * span))) < radius:
                return True
    return False


def assign_colours(
    frames: np.ndarray, background: np.ndarray, colours: np.ndarray, cfg: ClassicalSegmentParams
) -> np.ndarray:
    """(T, H, W) int32 colour index of every pixel: 0 = background, k = colours[k - 1]."""
    centres = np.concatenate([np.asarray(background, np.float32)[None], np.asarray(colours, np.float32)])
    kernel = np.ones((_EDGE_NEIGHBOURHOOD, _EDGE_NEIGHBOURHOOD), np.uint8)
    out = np.empty(frames.shape[:3], dtype=np.int32)
    for t, frame in enumerate(frames):
        q = chroma(frame)
        nearest = ((q[..., None, :] - centres) ** 2).sum(-1).argmin(-1)
        flat = flat_pixels(q, cfg.flat_range)
        present = [
            cv2.dilate(((nearest == i) & flat).astype(np.uint8), kernel) > 0 for i in range(len(centres))
        ]
        best = np.full(q.shape[:2], np.inf, np.float32)
        for i in range(len(centres)):
            for j in range(i + 1, len(centres)):
                where = np.flatnonzero(present[i] & present[j] & ~flat)
                if not where.size:
                    continue
                a, span = centres[i], centres[j] - centres[i]
                points = q.reshape(-1, 2)[where]
                s = np.clip((points - a) @ span / float(span @ span), 0.0, 1.0)
                residual = np.linalg.norm(points - (a + s[:, None] * span), axis=1)
                better = residual < best.ravel()[where]
                where, s = where[better], s[better]
                best.ravel()[where] = residual[better]
                threshold = EDGE_COVERAGE if i == 0 else 0.5
                nearest.ravel()[where] = np.where(s >= threshold, j, i)
        out[t] = nearest
    return out


def first_frame_entities(
    colour_index: np.ndarray, max_entities: int, min_area: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """Connected regions (8-connected) of each colour of frame 0 as entities: those of at least
    `min_area` pixels, the largest `max_entities` (ties: lower colour, then raster order).

    Returns (ids (H, W) int32, colour index of each id, 0 for id 0).
    """
    components = {}  # colour -> component labels of that colour's mask
    regions = []  # (area, colour, component)
    for colour in range(1, int(colour_index.max(initial=0)) + 1):
        count, labels, stats, _ = cv2.connectedComponentsWithStats(
            (colour_index == colour).astype(np.uint8), connectivity=8
        )
        components[colour] = labels
        areas = stats[1:, cv2.CC_STAT_AREA]
        regions.extend((int(a), colour, c) for c, a in enumerate(areas, start=1) if a >= min_area)
    regions.sort(key=lambda r: -r[0])
    ids = np.zeros(colour_index.shape, dtype=np.int32)
    lookups = {colour: np.zeros(labels.max() + 1, dtype=np.int32) for colour, labels in components.items()}
    for entity, (_, colour, component) in enumerate(regions[:max_entities], start=1):
        lookups[colour][component] = entity
    for colour, labels in components.items():
        ids += lookups[colour][labels]  # colours do not overlap, and component 0 maps to 0
    entity_colour = [0, *(colour for _, colour, _ in regions[:max_entities])]
    return ids, np.asarray(entity_colour, dtype=np.int32)


def backward_flows(frames: np.ndarray, backend: str, size: tuple[int, int]) -> np.ndarray:
    """(T - 1, H, W, 2): flow from frame t + 1 back to frame t, at the frames' resolution."""
    from vidprior.flow import compute_flow

    height, width = frames.shape[1:3]
    flows = compute_flow(np.ascontiguousarray(frames[::-1]), backend, size)[::-1]
    if flows.shape[1:3] == (height, width):
        return np.ascontiguousarray(flows)
    scale = np.array([width / flows.shape[2], height / flows.shape[1]], dtype=np.float32)
    return np.stack([cv2.resize(f, (width, height), interpolation=cv2.INTER_LINEAR) * scale for f in flows])


def warp_labels(labels: np.ndarray, flow_back: np.ndarray) -> np.ndarray:
    """Labels of the previous frame carried to this one: label(x) = previous(x + flow_back(x)), nearest."""
    height, width = labels.shape
    xs, ys = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
    warped = cv2.remap(
        labels.astype(np.float32),
        xs + flow_back[..., 0],
        ys + flow_back[..., 1],
        interpolation=cv2.INTER_NEAREST,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0,
    )
    return np.rint(warped).astype(np.int32)


def snap_to_colours(
    warped: np.ndarray, colour_index: np.ndarray, entity_colour: np.ndarray, radius: float
) -> np.ndarray:
    """Warped labels made to agree with this frame's colours (see the module docstring)."""
    warped_colour = entity_colour[warped]
    agree = (colour_index > 0) & (warped_colour == colour_index)
    out = np.where(agree, warped, 0).astype(np.int32)
    for colour in np.unique(colour_index[(colour_index > 0) & ~agree]).tolist():
        sources = (warped > 0) & (warped_colour == colour)
        if not sources.any():
            continue
        distance, nearest = cv2.distanceTransformWithLabels(
            np.where(sources, 0, 255).astype(np.uint8), cv2.DIST_L2, 5, labelType=cv2.DIST_LABEL_PIXEL
        )
        source_label = np.zeros(int(nearest.max()) + 1, dtype=np.int32)
        source_label[nearest[sources]] = warped[sources]
        take = (colour_index == colour) & ~agree & (distance <= radius)
        out[take] = source_label[nearest[take]]
    return out


def segment_classical(frames: np.ndarray, cfg: SegmentParams) -> tuple[np.ndarray, int]:
    """(ids (T, H, W) int32 before cleaning, entities found on frame 0)."""
    background, colours = colour_modes(frames[0], cfg.classical)
    colour_index = assign_colours(frames, background, colours, cfg.classical)
    min_area = cfg.min_region_area * frames.shape[1] * frames.shape[2]
    first, entity_colour = first_frame_entities(colour_index[0], cfg.max_entities, min_area)
    ids = np.zeros(frames.shape[:3], dtype=np.int32)
    ids[0] = first
    if len(frames) > 1 and first.any():
        size = (cfg.flow.analysis_height, cfg.flow.analysis_width)
        flows = backward_flows(frames, cfg.flow.backend, size)
        radius = cfg.classical.snap_radius * float(np.hypot(*frames.shape[1:3]))
        for t in range(1, len(frames)):
            warped = warp_labels(ids[t - 1], flows[t - 1])
            ids[t] = snap_to_colours(warped, colour_index[t], entity_colour, radius)
    return ids, len(entity_colour) - 1


# ---------------------------------------------------------------------------------------------
# Models backend


@dataclass(frozen=True)
class Models:
    segmenter: EntitySegmenterParts
    propagator: Sam2VideoParts


def load_models(params: Params) -> Models:
    """Both labellers, on the GPU when there is one."""
    import torch

    from vidprior.models.entity_segmentation import build_entity_segmenter, build_sam2_video
    from vidprior.unic.generation import quiet_library_logs

    quiet_library_logs()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    segmenter = build_entity_segmenter(params.models.entity_segmenter)
    propagator = build_sam2_video(params.models.sam2)
    segmenter.model.to(device)
    propagator.model.to(device)
    return Models(segmenter, propagator)


def first_frame_segments(
    segments: np.ndarray, scores: dict[int, float], max_entities: int, min_area: float = 0.0
) -> list[int]:
    """Segment ids of frame 0 kept as entities: scored, of at least `min_area` pixels, the largest
    `max_entities` (ties: lower id)."""
    area = np.bincount(segments.ravel(), minlength=max(scores, default=0) + 1)
    chosen = [s for s in scores if s > 0 and area[s] > 0 and area[s] >= min_area]
    chosen.sort(key=lambda s: (-int(area[s]), s))
    return chosen[:max_entities]


def segment_models(frames: np.ndarray, models: Models, cfg: SegmentParams) -> tuple[np.ndarray, int]:
    """(ids (T, H, W) int32 before cleaning, entities found on frame 0)."""
    import torch

    from vidprior.models.entity_segmentation import NonFiniteOutputError

    ids = np.zeros(frames.shape[:3], dtype=np.int32)
    try:
        segments, scores = models.segmenter.segment(frames[0], cfg.score_threshold)
        min_area = cfg.min_region_area * frames.shape[1] * frames.shape[2]
        chosen = first_frame_segments(segments, scores, cfg.max_entities, min_area)
        if not chosen:
            return ids, 0
        masks = np.stack([segments == s for s in chosen])
        seen = set()
        # Object i (0-based) is entity i + 1, so the entity of a pixel is its best object + 1.
        for index, logits in models.propagator.propagate(frames, masks, range(1, len(chosen) + 1)):
            best, which = logits.max(dim=0)
            ids[index] = torch.where(best > 0, which + 1, 0).to(torch.int32).cpu().numpy()
            seen.add(index)
    except NonFiniteOutputError as exc:
        raise SegmentationFailed(str(exc)) from None
    except torch.cuda.OutOfMemoryError as exc:
        torch.cuda.empty_cache()
        raise SegmentationFailed(f"out of device memory: {exc}") from None
    if len(seen) != len(frames):
        raise SegmentationFailed(f"propagation returned {len(seen)} of {len(frames)} frames")
    return ids, len(chosen)


# ---------------------------------------------------------------------------------------------
# Stage


def _provenance(params: Params) -> tuple[str, str]:
    cfg = params.udpdiff.segment
    if cfg.backend == "models":
        return params.models.entity_segmenter.model_id, params.models.sam2.model_id
    return CLASSICAL_SEGMENTER, f"classical-flow-{cfg.flow.backend}"


def save_ids(path: Path, ids: np.ndarray) -> Path:
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez_compressed(handle, ids=ids.astype(np.int32))
    return path


def load_ids(path: Path) -> np.ndarray:
    with np.load(path) as data:
        return data["ids"]


def process_clip(
    clip_id: str, clip_path: str, root: Path, output_dir: Path, params: Params, models: Callable[[], Models]
) -> dict:
    """Segment one clip and write its outputs; a kept record, or a reject with the reason."""
    cfg = params.udpdiff.segment
    try:
        frames, fps = read_video(root / clip_path)
    except MediaError as exc:
        return rejected(clip_id, "unreadable_video", str(exc))
    try:
        if cfg.backend == "models":
            raw, found = segment_models(frames, models(), cfg)
        else:
            raw, found = segment_classical(frames, cfg)
    except SegmentationFailed as exc:
        return rejected(clip_id, "segmentation_failed", str(exc))
    if found == 0:
        detail = (
            f"no entity on frame 0 ({cfg.backend} backend; regions under min_region_area="
            f"{cfg.min_region_area:g} of the frame do not count)"
        )
        return rejected(clip_id, "no_entities", detail)
    cleaned = clean(raw, cfg.max_hole_area, cfg.min_region_area)
    entities = int(cleaned.ids.max())
    if entities == 0:
        detail = (
            f"all {found} frame-0 entities fell below min_region_area={cfg.min_region_area:g} of the frame "
            f"({cleaned.regions_removed} region(s) removed)"
        )
        return rejected(clip_id, "no_entities", detail)

    seed = item_seed(params.seed, STAGE, clip_id)
    rgb, palette = encode_segmentation(cleaned.ids, seed)
    seg_path, ids_path = f"{SEG_DIR}/{clip_id}.mp4", f"{SEG_DIR}/{clip_id}.npz"
    rate = max(1, round(fps))
    write_video(output_dir / seg_path, rgb, rate, lossless=True)
    save_ids(output_dir / ids_path, cleaned.ids)
    segmenter, propagator = _provenance(params)
    frames_n, height, width = (int(n) for n in cleaned.ids.shape)
    return ok(
        clip_id,
        seg_path=seg_path,
        seg_ids_path=ids_path,
        palette=palette_to_json(palette),
        palette_seed=seed,
        entities=entities,
        first_frame_entities=int(found),
        segment_backend=cfg.backend,
        segmenter_model=segmenter,
        propagator_model=propagator,
        holes_filled_px=cleaned.holes_filled_px,
        regions_removed=cleaned.regions_removed,
        frames=frames_n,
        height=height,
        width=width,
        fps=rate,
        clip_path=clip_path,
    )


def _clip_paths(manifest: pd.DataFrame, where: Path) -> list[str]:
    bad = [
        str(i)
        for i, p in zip(manifest["id"], manifest["clip_path"], strict=True)
        if not isinstance(p, str) or not p.strip()
    ]
    if bad:
        raise ValueError(
            f"{where}: column 'clip_path' must hold the clip file (relative to the clips directory) for "
            f"every row; empty or not a string for id(s) {bad[:5]} ({len(bad)} in all)"
        )
    return list(manifest["clip_path"])


def run(params: Params, inputs: Sequence[Path | str] | None, output_dir: Path) -> dict[str, float]:
    """inputs: [udpdiff.clips output]. Writes seg/{id}.mp4 + seg/{id}.npz, manifest and rejects."""
    cfg = params.udpdiff.segment
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    root = input_dir(inputs, 0, "udpdiff.clips")
    source = read_input_manifest(inputs, 0, "udpdiff.clips", required=["clip_path"])
    items = pd.DataFrame({"id": source["id"].astype(str), "clip_path": _clip_paths(source, root / MANIFEST)})
    loaded: list[Models] = []

    def models() -> Models:  # loaded on the first batch that needs them, so a finished rerun loads none
        if not loaded:
            loaded.append(load_models(params))
        return loaded[0]

    segmenter, propagator = _provenance(params)
    result = run_batches(
        items,
        output_dir=output_dir,
        name="segment",
        config_fingerprint=fingerprint(
            STAGE, cfg.model_dump(mode="json"), segmenter, propagator, params.seed, str(root.resolve())
        ),
        batch_size=BATCH,
        process=lambda batch: [
            process_clip(i, p, root, output_dir, params, models)
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
        metrics["mean_entities"] = float(manifest["entities"].mean())
        metrics["holes_filled_px"] = int(manifest["holes_filled_px"].sum())
        metrics["regions_removed"] = int(manifest["regions_removed"].sum())
    return metrics
