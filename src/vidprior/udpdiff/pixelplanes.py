"""Pixelplanes: entity segmentation and depth videos encoded as RGB videos, and decoded back.

UDPDiff generates a dense-prediction video next to the RGB video with the same CogVideoX VAE, so
both predictions are stored as (T, H, W, 3) uint8 RGB videos. Decoding must survive the colour
noise a VAE round trip adds, which is what most of the choices below are about.

Segmentation
------------
Every entity of a video gets a random colour, each channel drawn uniformly from 0..255 with a
per-video seed (`entity_palette`); the colour is fixed for all frames and does not depend on where
the entity is. Entity id 0 is the background and is always black (0, 0, 0). Colours are drawn by
rejection: a draw is kept only if it is at least `MIN_SEPARATION` = 32 RGB-Euclidean units from
black and from every colour already given, so colours are unique and a pixel decodes to its entity
as long as its colour moved by less than 16 units (at Gaussian RGB noise sigma = 4 a 16-unit move
towards one given neighbour is a 4-sigma event). About 400 colours fit at that separation (random
sequential packing of the RGB cube); `entity_palette` raises beyond what it can fit. Ids are
coloured in increasing order, so a palette depends on the seed and the set of ids only.

`decode_segmentation` gives each pixel the id of the nearest palette colour, background included;
with `max_distance` a pixel farther than that from every palette colour gets `UNKNOWN_ID` = -1.
Manifests store a palette as JSON, `{"0": [0, 0, 0], "1": [r, g, b], ...}` (`palette_to_json`,
`palette_from_json`); the decoders take such string keys as they are.

The ablation baseline is UniGS's location-aware colour map (`encode_unigs_segmentation`): an
entity's colour is read off a fixed grid at its centroid in the first frame it appears in (x -> R,
y -> G, B fixed at 128) and kept in later frames. On the default 8x8 grid neighbouring colours are
32 units apart, the same separation as the random palette, so the two differ only in how colours
are chosen. Two entities whose centroids fall in one cell would share a colour; the later one (by
first frame, then id) takes the nearest free cell instead, and more entities than cells raise.

Depth
-----
Depth lies in [0, 1] with 0 = nearest and 1 = farthest (Marigold's convention), so near is red and
far is blue in matplotlib's "Spectral" colormap. The colormap is sampled at the 256 depths i / 255;
`encode_depth` maps a depth v to the sample nearest to it, i.e. to Spectral(round(255 v) / 255),
not to `Spectral(v)`, which floors v into 256 bins and would be off by up to a whole bin.
`decode_depth` gives each pixel the depth of the nearest of the 256 sampled colours (Euclidean RGB,
ties to the smaller depth), so the round trip is exact to half a bin (0.5 / 255) without noise.
All 256 sampled colours are distinct, but neighbours are only 1 to 4.4 units apart (median 2.8),
and the pale yellow middle of the map is the slowest: samples 125 and 130 are 3 units apart.

The nearest search is exact and never builds the (pixels x 256) distance matrix: the RGB cube is
cut into 8^3 cells and, once per palette, each cell keeps only the samples that can be nearest to
some colour in it (lower bound of the distance to the cell <= the smallest upper bound); a clip's
distinct colours are then searched among their cell's 1 to 155 (mean 25) candidates only, and the
answers are scattered back to the pixels through a 2^24-entry table. `decode_depth_naive` is the
all-pairs reference it is tested against (benchmarks/pixelplanes.py times both).

Depth under noise, measured by `.venv/bin/python benchmarks/pixelplanes.py` (defaults: 4x256x256
uniform random depths, i.i.d. Gaussian noise added to the RGB values, rounded and clipped to
0..255, as a stand-in for a VAE round trip; half a bin = 0.00196):

| RGB noise sigma | mean abs depth error | within half a bin |
|---|---|---|
| 0 | 0.00098 | 1.000 |
| 1 | 0.00165 | 0.786 |
| 2 | 0.00291 | 0.492 |
| 4 | 0.00560 | 0.263 |
| 8 | 0.01186 | 0.133 |

The error grows about linearly with sigma: the colormap moves ~2.8 RGB units per bin, so
sigma = 8 noise smears a depth over a few bins either side. A median filter of the decoded depth
(`denoise="median"`, 3x3 per frame) helps where depth is spatially smooth and the noise is not: on
the benchmark's scene (a ground plane and three discs) it cuts the mean abs error from 0.00306 to
0.00164 at sigma 2 and from 0.01321 to 0.00515 at sigma 8, at no cost without noise (0.00098 ->
0.00100, from the disc edges). Against noise blurred over 2 px, closer to a VAE's spatially
correlated errors, it barely helps (0.01320 -> 0.01241 at sigma 8), and on depth without spatial
structure it is wrong by design; so it is an option, off by default.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Mapping, Sequence

import cv2
import matplotlib
import numpy as np

BACKGROUND_ID = 0
BACKGROUND_COLOUR = (0, 0, 0)
UNKNOWN_ID = -1
MIN_SEPARATION = 32.0
DEPTH_COLORMAP = "Spectral"
DEPTH_LEVELS = 256
DENOISE_MODES = ("none", "median")
MEDIAN_KERNEL = 3
UNIGS_GRID = (8, 8)
UNIGS_THIRD_CHANNEL = 128

Palette = dict[int, tuple[int, int, int]]

# 8^3-value cells: 32^3 cells keep the per-cell candidate table small (32768 x at most 256) while
# leaving a mean of 25 Spectral candidates per cell to search.
_CELL_BITS = 3
_CELLS_PER_AXIS = 256 >> _CELL_BITS
# Pixel-candidate pairs per step of the search: bounds the (n, k, 3) difference array to ~50 MB.
_SEARCH_CHUNK = 1 << 22
_NAIVE_CHUNK = 1 << 13
_DRAW_BATCH = 256
_MAX_DRAW_BATCHES = 64


# ---------------------------------------------------------------------------------------------
# Exact nearest-colour search


def _pack(rgb: np.ndarray) -> np.ndarray:
    codes = rgb[..., 0].astype(np.int32)
    codes <<= 8
    codes |= rgb[..., 1]
    codes <<= 8
    codes |= rgb[..., 2]
    return codes


def _unpack(codes: np.ndarray) -> np.ndarray:
    return np.stack([codes >> 16, (codes >> 8) & 255, codes & 255], axis=-1).astype(np.int32)


def _distinct_codes(codes: np.ndarray) -> np.ndarray:
    # A presence table is O(pixels), where np.unique would sort the whole clip.
    present = np.zeros(1 << 24, dtype=bool)
    present[codes.ravel()] = True
    return np.flatnonzero(present).astype(np.int32)


def _cell_bounds(colours: np.ndarray, channel: int) -> tuple[np.ndarray, np.ndarray]:
    """Per cell coordinate along `channel` and per colour: the smallest and largest squared gap."""
    lo = (np.arange(_CELLS_PER_AXIS, dtype=np.int32) << _CELL_BITS)[:, None]
    hi = lo + (1 << _CELL_BITS) - 1
    value = colours[None, :, channel]
    gap = np.maximum(0, np.maximum(lo - value, value - hi))
    far = np.maximum(np.abs(lo - value), np.abs(hi - value))
    return gap * gap, far * far


def _cell_candidates(colours: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per cell: how many colours can be nearest to some point of it, and which (ascending, padded).

    Rows are padded with their last candidate, so an argmin over a padded row still returns the
    first, i.e. lowest-index, of tied colours.
    """
    (gap_r, far_r), (gap_g, far_g), (gap_b, far_b) = (_cell_bounds(colours, c) for c in range(3))
    plane = (gap_g[:, None, :] + gap_b[None, :, :]).reshape(-1, len(colours))
    plane_far = (far_g[:, None, :] + far_b[None, :, :]).reshape(-1, len(colours))
    masks = []
    for r in range(_CELLS_PER_AXIS):  # one R slab at a time bounds memory for large palettes
        lower, upper = plane + gap_r[r], plane_far + far_r[r]
        masks.append(lower <= upper.min(axis=1, keepdims=True))
    mask = np.concatenate(masks)
    counts = mask.sum(axis=1)
    # nonzero walks the mask row by row, columns ascending: O(candidates), where an argsort of the
    # mask would allocate cells x colours int64 (100 MB for a 400-entity palette).
    cells, colour = np.nonzero(mask)
    slot = np.arange(len(cells)) - np.repeat(np.cumsum(counts) - counts, counts)
    padded = np.empty((len(counts), int(counts.max())), dtype=np.int32)
    padded[:] = colour[np.cumsum(counts) - 1, None]
    padded[cells, slot] = colour
    return counts, padded


def _group_widths(largest: int) -> list[int]:
    """1, 2, 3, 4, 6, 8, 12, ... up to the first width >= largest."""
    widths = [1, 2, 3]
    while widths[-1] < largest:
        widths.append(2 * widths[-2])
    return widths


class NearestColour:
    """Exact nearest of a fixed set of colours for uint8 RGB pixels (Euclidean; ties to lowest index)."""

    def __init__(self, colours: np.ndarray):
        self.colours = np.asarray(colours, dtype=np.int32).reshape(-1, 3)
        self._counts, self._candidates = _cell_candidates(self.colours)
        self._channels = [np.ascontiguousarray(self.colours[:, c]) for c in range(3)]
        self._index_dtype = np.uint8 if len(self.colours) <= 256 else np.int32

    @property
    def max_candidates(self) -> int:
        return self._candidates.shape[1]

    def candidate_counts(self) -> np.ndarray:
        return self._counts

    def nearest(self, rgb: np.ndarray, with_distance: bool = False):
        """(..., 3) uint8 -> index of the nearest colour (...), and its squared distance if asked."""
        codes = _pack(rgb)
        distinct = _distinct_codes(codes)
        index, dist2 = self._search(_unpack(distinct))
        index_table = np.empty(1 << 24, dtype=self._index_dtype)  # only the touched pages are real
        index_table[distinct] = index
        if not with_distance:
            return index_table[codes]
        dist_table = np.empty(1 << 24, dtype=np.int32)
        dist_table[distinct] = dist2
        return index_table[codes], dist_table[codes]

    def _search(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        cells = ((points[:, 0] >> _CELL_BITS) * _CELLS_PER_AXIS + (points[:, 1] >> _CELL_BITS)) * (
            _CELLS_PER_AXIS
        ) + (points[:, 2] >> _CELL_BITS)
        counts = self._counts[cells]
        index = np.empty(len(points), dtype=np.int32)
        dist2 = np.empty(len(points), dtype=np.int32)
        # Points are grouped by candidate count so each group is one rectangular array, and a
        # crowded cell does not pad everyone else's search (widths grow by 1.5x: <= 33% padding).
        low = 0
        for width in _group_widths(self.max_candidates):
            group = np.flatnonzero((counts > low) & (counts <= width))
            step = max(1, _SEARCH_CHUNK // width)
            for start in range(0, len(group), step):
                rows = group[start : start + step]
                index[rows], dist2[rows] = self._search_rows(points[rows], cells[rows], width)
            low = width
        return index, dist2

    def _search_rows(self, points: np.ndarray, cells: np.ndarray, width: int):
        candidates = self._candidates[cells, :width]
        # Channel by channel: ~2x faster than gathering (n, width, 3) colours and an einsum.
        dist2 = np.zeros(candidates.shape, dtype=np.int32)
        for channel in range(3):
            diff = self._channels[channel][candidates] - points[:, channel : channel + 1]
            diff *= diff
            dist2 += diff
        best = dist2.argmin(axis=1)
        rows = np.arange(len(points))
        return candidates[rows, best], dist2[rows, best]


def nearest_colour_naive(rgb: np.ndarray, colours: np.ndarray) -> np.ndarray:
    """Reference: all-pairs distances in chunks of pixels; ties to the lowest index."""
    colours = np.asarray(colours, dtype=np.int32).reshape(-1, 3)
    flat = rgb.reshape(-1, 3).astype(np.int32)
    index = np.empty(len(flat), dtype=np.int32)
    for start in range(0, len(flat), _NAIVE_CHUNK):
        diff = flat[start : start + _NAIVE_CHUNK, None, :] - colours[None, :, :]
        index[start : start + _NAIVE_CHUNK] = np.einsum("nkc,nkc->nk", diff, diff).argmin(axis=1)
    return index.reshape(rgb.shape[:-1])


# ---------------------------------------------------------------------------------------------
# Input checks


def _check_rgb(rgb: np.ndarray) -> np.ndarray:
    rgb = np.asarray(rgb)
    if rgb.ndim != 4 or rgb.shape[-1] != 3:
        raise ValueError(f"rgb must have shape (T, H, W, 3), got shape {rgb.shape}")
    if rgb.dtype != np.uint8:
        raise ValueError(f"rgb must be uint8, got dtype {rgb.dtype}")
    return rgb


def _check_masks(masks: np.ndarray) -> np.ndarray:
    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise ValueError(f"masks must have shape (T, H, W), got shape {masks.shape}")
    if masks.dtype.kind not in "iu":
        raise ValueError(f"masks must be an integer array of entity ids, got dtype {masks.dtype}")
    if masks.size and masks.min() < 0:
        raise ValueError(f"entity ids must be >= 0 (0 = background), got {masks.min()}")
    return masks


def _check_depth(depth: np.ndarray) -> np.ndarray:
    depth = np.asarray(depth)
    if depth.ndim != 3:
        raise ValueError(f"depth must have shape (T, H, W), got shape {depth.shape}")
    if depth.dtype.kind != "f":
        raise ValueError(f"depth must be a float array in [0, 1], got dtype {depth.dtype}")
    bad = np.count_nonzero(~np.isfinite(depth))
    if bad:
        raise ValueError(f"depth has {bad} non-finite values (NaN or inf)")
    if depth.size and (depth.min() < 0 or depth.max() > 1):
        raise ValueError(f"depth must lie in [0, 1], got min {depth.min():.6g} and max {depth.max():.6g}")
    return depth


# ---------------------------------------------------------------------------------------------
# Segmentation


def _draw_separated(rng: np.random.Generator, taken: np.ndarray) -> np.ndarray:
    for _ in range(_MAX_DRAW_BATCHES):
        draws = rng.integers(0, 256, size=(_DRAW_BATCH, 3))
        dist2 = ((draws[:, None, :] - taken[None, :, :]) ** 2).sum(axis=-1).min(axis=1)
        ok = np.flatnonzero(dist2 >= MIN_SEPARATION**2)
        if ok.size:
            return draws[ok[0]]
    raise ValueError(
        f"cannot fit entity colour #{len(taken)} {MIN_SEPARATION:g} RGB units away from black and from "
        f"the {len(taken) - 1} already given; about 400 fit"
    )


def entity_palette(entity_ids: Iterable[int], seed: int) -> Palette:
    """Random, unique, well separated colours for `entity_ids`; id 0 (background) is black."""
    ids = sorted({int(i) for i in entity_ids})
    if ids and ids[0] < 0:
        raise ValueError(f"entity ids must be >= 0 (0 = background), got {ids[0]}")
    rng = np.random.default_rng(seed)
    taken = [np.array(BACKGROUND_COLOUR)]
    palette: Palette = {}
    for entity in ids:
        if entity == BACKGROUND_ID:
            palette[entity] = BACKGROUND_COLOUR
            continue
        colour = _draw_separated(rng, np.stack(taken))
        taken.append(colour)
        palette[entity] = (int(colour[0]), int(colour[1]), int(colour[2]))
    return palette


def _palette_arrays(palette: Mapping[int | str, Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    """(ids ascending, colours uint8 (n, 3)); keys may be JSON's strings ("0", "1", ...)."""
    if not palette:
        raise ValueError("palette is empty")
    entries: dict[int, tuple[int, ...]] = {}
    for key, colour in palette.items():
        try:
            entity = int(key)
            channels = tuple(int(c) for c in colour)
        except (TypeError, ValueError):
            raise ValueError(f"palette entry {key!r}: {colour!r} is not entity id -> [r, g, b]") from None
        if entity < 0 or len(channels) != 3 or min(channels) < 0 or max(channels) > 255:
            raise ValueError(f"palette entry {key!r}: {colour!r} is not an id >= 0 -> 3 channels in 0..255")
        if entity in entries:
            raise ValueError(f"palette has entity id {entity} twice")
        entries[entity] = channels
    ids = np.array(sorted(entries), dtype=np.int64)
    colours = np.array([entries[i] for i in ids.tolist()], dtype=np.uint8).reshape(-1, 3)
    if len(np.unique(colours, axis=0)) != len(colours):
        # Two entities with one colour cannot be told apart; decoding would give both to the lower id.
        raise ValueError("palette gives the same colour to more than one entity id")
    return ids, colours


def palette_to_json(palette: Mapping[int, Sequence[int]]) -> str:
    """The manifest form of a palette: `{"0": [0, 0, 0], "1": [r, g, b], ...}`, ids ascending."""
    ids, colours = _palette_arrays(palette)
    return json.dumps({str(i): c for i, c in zip(ids.tolist(), colours.tolist(), strict=True)})


def palette_from_json(text: str) -> Palette:
    """Inverse of `palette_to_json`; ValueError naming what is wrong for anything else."""
    try:
        raw = json.loads(text)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"palette is not JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise ValueError(f'palette must be a JSON object {{"id": [r, g, b]}}, got {type(raw).__name__}')
    ids, colours = _palette_arrays(raw)
    return {i: (c[0], c[1], c[2]) for i, c in zip(ids.tolist(), colours.tolist(), strict=True)}


def _paint(masks: np.ndarray, palette: Palette) -> np.ndarray:
    ids, colours = _palette_arrays(palette)
    return colours[np.searchsorted(ids, masks)]


def encode_segmentation(masks: np.ndarray, seed: int) -> tuple[np.ndarray, Palette]:
    """(T, H, W) entity ids -> ((T, H, W, 3) uint8 video, palette id -> colour, background included)."""
    masks = _check_masks(masks)
    palette = entity_palette([BACKGROUND_ID, *np.unique(masks).tolist()], seed)
    return _paint(masks, palette), palette


def decode_segmentation(
    rgb: np.ndarray, palette: Mapping[int | str, Sequence[int]], max_distance: float | None = None
) -> np.ndarray:
    """(T, H, W, 3) uint8 -> (T, H, W) int32 id of the nearest palette colour (ties to lower id).

    With `max_distance`, pixels farther than it (RGB-Euclidean) from every palette colour get
    `UNKNOWN_ID`. The palette should contain the background, or black pixels go to an entity.
    """
    rgb = _check_rgb(rgb)
    if max_distance is not None and not (np.isfinite(max_distance) and max_distance >= 0):
        raise ValueError(f"max_distance must be a finite RGB distance >= 0 or None, got {max_distance!r}")
    ids, colours = _palette_arrays(palette)
    finder = NearestColour(colours)
    if max_distance is None:
        return ids.astype(np.int32)[finder.nearest(rgb)]
    index, dist2 = finder.nearest(rgb, with_distance=True)
    decoded = ids.astype(np.int32)[index]
    decoded[dist2 > max_distance**2] = UNKNOWN_ID
    return decoded


def _first_centroids(masks: np.ndarray) -> dict[int, tuple[int, float, float]]:
    """Entity id -> (first frame it appears in, centroid x, centroid y) in [0, 1] image units."""
    height, width = masks.shape[1:]
    ys, xs = np.indices((height, width), dtype=np.float64)
    found: dict[int, tuple[int, float, float]] = {}
    for t, frame in enumerate(masks):
        ids, inverse, counts = np.unique(frame, return_inverse=True, return_counts=True)
        inverse = inverse.ravel()
        sum_x = np.bincount(inverse, weights=xs.ravel() + 0.5, minlength=len(ids))
        sum_y = np.bincount(inverse, weights=ys.ravel() + 0.5, minlength=len(ids))
        for k, entity in enumerate(ids.tolist()):
            if entity != BACKGROUND_ID and entity not in found:
                found[entity] = (t, sum_x[k] / counts[k] / width, sum_y[k] / counts[k] / height)
    return found


def _free_cell(cell: tuple[int, int], taken: np.ndarray) -> tuple[int, int]:
    gx, gy = taken.shape
    x, y = np.indices((gx, gy))
    dist2 = np.where(taken, np.inf, (x - cell[0]) ** 2 + (y - cell[1]) ** 2)
    best = int(np.argmin(dist2))  # row-major: ties go to the smaller x, then y
    return best // gy, best % gy


def _grid_level(i: int, n: int) -> int:
    return round(255 * (i + 0.5) / n)


def encode_unigs_segmentation(
    masks: np.ndarray, grid: tuple[int, int] = UNIGS_GRID
) -> tuple[np.ndarray, Palette]:
    """UniGS's location-aware colour map (the ablation baseline); returns (video, palette) as
    `encode_segmentation` does. `grid` is (cells along x, cells along y)."""
    masks = _check_masks(masks)
    gx, gy = grid
    if not (1 <= gx <= 256 and 1 <= gy <= 256):
        raise ValueError(f"grid must have 1..256 cells per axis, got {grid}")
    centroids = _first_centroids(masks)
    if len(centroids) > gx * gy:
        raise ValueError(f"{len(centroids)} entities do not fit a {gx}x{gy} grid")
    taken = np.zeros((gx, gy), dtype=bool)
    palette: Palette = {BACKGROUND_ID: BACKGROUND_COLOUR}
    for entity, (_, cx, cy) in sorted(centroids.items(), key=lambda item: (item[1][0], item[0])):
        cell = (min(int(cx * gx), gx - 1), min(int(cy * gy), gy - 1))
        if taken[cell]:
            cell = _free_cell(cell, taken)
        taken[cell] = True
        palette[entity] = (_grid_level(cell[0], gx), _grid_level(cell[1], gy), UNIGS_THIRD_CHANNEL)
    return _paint(masks, palette), palette


# ---------------------------------------------------------------------------------------------
# Depth


@functools.cache
def depth_palette() -> np.ndarray:
    """(256, 3) uint8: the Spectral colormap at depths i / 255 (read-only)."""
    # Integer indices read the lookup table itself: a LinearSegmentedColormap resampled to 256 holds
    # its curve at exactly i / 255, where float inputs are floored into N bins first.
    cmap = matplotlib.colormaps[DEPTH_COLORMAP].resampled(DEPTH_LEVELS)
    colours = np.rint(cmap(np.arange(DEPTH_LEVELS))[:, :3] * 255).astype(np.uint8)
    colours.flags.writeable = False
    return colours


@functools.cache
def _depth_finder() -> NearestColour:
    return NearestColour(depth_palette())


_DEPTH_VALUES = (np.arange(DEPTH_LEVELS) / (DEPTH_LEVELS - 1)).astype(np.float32)


def encode_depth(depth: np.ndarray) -> np.ndarray:
    """(T, H, W) float depth in [0, 1] (0 = near) -> (T, H, W, 3) uint8 Spectral video."""
    depth = _check_depth(depth)
    levels = np.rint(depth * (DEPTH_LEVELS - 1)).astype(np.intp)
    return depth_palette()[levels]


def _median(levels: np.ndarray, kernel: int) -> np.ndarray:
    return np.stack([cv2.medianBlur(np.ascontiguousarray(frame), kernel) for frame in levels])


def decode_depth(rgb: np.ndarray, denoise: str = "none") -> np.ndarray:
    """(T, H, W, 3) uint8 Spectral video -> (T, H, W) float32 depth in [0, 1].

    `denoise="median"` median-filters the decoded depth of each frame (3x3); see the module
    docstring for when that helps.
    """
    rgb = _check_rgb(rgb)
    if denoise not in DENOISE_MODES:
        raise ValueError(f"denoise must be one of {DENOISE_MODES}, got {denoise!r}")
    levels = _depth_finder().nearest(rgb)
    if denoise == "median":
        levels = _median(levels, MEDIAN_KERNEL)
    return _DEPTH_VALUES[levels]


def decode_depth_naive(rgb: np.ndarray) -> np.ndarray:
    """Reference for `decode_depth`: the all-pairs (pixels x 256) distances, chunked. Slow."""
    rgb = _check_rgb(rgb)
    return _DEPTH_VALUES[nearest_colour_naive(rgb, depth_palette())]


def add_rgb_noise(rgb: np.ndarray, sigma: float, seed: int = 0, blur_px: float = 0.0) -> np.ndarray:
    """Gaussian noise of std `sigma` on every RGB value, rounded and clipped: a VAE round-trip proxy.

    The noise is i.i.d. unless `blur_px` > 0: then each frame's noise field is Gaussian-blurred by
    that many pixels (and rescaled to std `sigma`), like the spatially correlated errors of a VAE.
    """
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim < 3 or rgb.shape[-1] != 3:
        raise ValueError(f"rgb must be uint8 (..., H, W, 3), got {rgb.dtype} {rgb.shape}")
    if not (np.isfinite(sigma) and sigma >= 0 and np.isfinite(blur_px) and blur_px >= 0):
        raise ValueError(f"sigma and blur_px must be finite and >= 0, got {sigma!r} and {blur_px!r}")
    if sigma == 0:
        return rgb.copy()
    noise = np.random.default_rng(seed).normal(0.0, 1.0, size=rgb.shape).astype(np.float32)
    if blur_px > 0:
        noise = np.stack(
            [cv2.GaussianBlur(frame, (0, 0), blur_px) for frame in noise.reshape(-1, *rgb.shape[-3:])]
        )
        noise = noise.reshape(rgb.shape) / noise.std()
    return np.clip(np.rint(rgb + sigma * noise), 0, 255).astype(np.uint8)
