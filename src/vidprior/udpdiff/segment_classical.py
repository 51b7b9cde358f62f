"""The classical (weight-free) entity segmenter of stage `udpdiff.segment` (`backend: classical`).

A baseline for the synthetic source and simple footage of flat, saturated objects on a dull
background; not a replacement for the models. Colours are measured in
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

Accuracy, measured on `synthetic.render_clip` scenes (seeds 0..N-1, 1-3 shapes, 9
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

import cv2
import numpy as np

from vidprior.config import ClassicalSegmentParams, SegmentParams

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
