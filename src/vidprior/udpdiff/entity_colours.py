"""Entity ids from a GENERATED segmentation video, whose palette nobody knows.

UDPDiff draws the entity colours itself, so decoding first has to find them: the colours whose
neighbourhood in RGB space holds many pixels. Pixelplanes colours are at least `MIN_SEPARATION`
(32) apart and from black, so each entity is one tight cluster, and a VAE's colour noise (sigma of a
few units) keeps it tight:

1. the clip's distinct colours are binned on a 4-unit grid (64^3 bins, with per-bin pixel counts
   and colour sums);
2. density = pixels within +-2 bins (a box sum); seeds are its local maxima over +-4 bins (half the
   separation), holding at least `min_fraction` of the clip's pixels;
3. each seed moves to the mean colour of the pixels within `MIN_SEPARATION / 2` of it (flat-kernel
   mean shift on the bins, to convergence); on clean input a bin holds one colour only and the mean
   is that colour, exactly;
4. modes are taken by decreasing mass (pixels within the kernel); a mode closer than
   `MIN_SEPARATION / 2` to black (the background, always id 0) or to a mode already taken is the
   same colour again, and a mode below `min_fraction` is noise (e.g. a blend band along an edge).

Entity ids are 1..N by decreasing mass. Pixels are then assigned with
`pixelplanes.decode_segmentation(rgb, palette, max_distance)`; farther than `max_distance`
(default `MIN_SEPARATION / 2`, the radius within which a Pixelplanes colour is unambiguous) from
every found colour they get `UNKNOWN_ID`. At Gaussian RGB noise sigma = 4 that is a 4-sigma move,
about 0.1 % of the pixels.
"""

from __future__ import annotations

import cv2
import numpy as np

from vidprior.udpdiff.pixelplanes import (
    BACKGROUND_COLOUR,
    BACKGROUND_ID,
    MIN_SEPARATION,
    Palette,
    decode_segmentation,
)

BIN_BITS = 2  # 4-unit bins: a Pixelplanes colour and its sigma-4 noise span a few bins, never two colours
_BINS = 256 >> BIN_BITS
_DENSITY_RADIUS = 2  # bins each side counted in a seed's density (+-8..11 units)
# Seeds: the densest peak per block of 4^3 bins (a plateau around one colour spans a few blocks).
_SEED_BLOCK_BITS = 2
_MAX_SEEDS = 4096  # ~10x the colours Pixelplanes can fit; keeps step 3 bounded on pathological clips
_MEAN_SHIFT_STEPS = 20
_CONVERGED = 0.01  # RGB units
# Small clips: sorting their colours beats touching a 2^24-entry (128 MB) count table.
_SORT_BELOW = 1 << 20
# A blend lies strictly between its two colours (not within 10 % of either end) and keeps under a
# quarter of its pixels after a 3x3 erosion.
_BLEND_T = 0.1
_BLEND_INTERIOR = 0.25


def _check_rgb(rgb: np.ndarray) -> np.ndarray:
    rgb = np.asarray(rgb)
    if rgb.ndim != 4 or rgb.shape[-1] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"rgb must be a uint8 array of shape (T, H, W, 3), got {rgb.dtype} {rgb.shape}")
    return rgb


def _distinct(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(distinct colours (n, 3) int64, pixel count of each): one pass over the clip, no sort."""
    codes = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2]
    if codes.size < _SORT_BELOW:
        present, counts = np.unique(codes, return_counts=True)
    else:
        table = np.bincount(codes.ravel(), minlength=1 << 24)
        present = np.flatnonzero(table)
        counts = table[present]
    present = present.astype(np.int64)
    colours = np.stack([present >> 16, (present >> 8) & 255, present & 255], axis=1)
    return colours, counts


def _box_sum(grid: np.ndarray, radius: int) -> np.ndarray:
    for axis in range(3):
        pad = [(0, 0)] * 3
        pad[axis] = (radius + 1, radius)
        cum = np.cumsum(np.pad(grid, pad), axis=axis)
        size = grid.shape[axis]
        hi = np.take(cum, np.arange(2 * radius + 1, 2 * radius + 1 + size), axis=axis)
        lo = np.take(cum, np.arange(size), axis=axis)
        grid = hi - lo
    return grid


def _max_filter(grid: np.ndarray, radius: int) -> np.ndarray:
    for axis in range(3):
        pad = [(0, 0)] * 3
        pad[axis] = (radius, radius)
        padded = np.pad(grid, pad, constant_values=-1)
        grid = np.lib.stride_tricks.sliding_window_view(padded, 2 * radius + 1, axis=axis).max(axis=-1)
    return grid


def _neighbourhood(radius_bins: int) -> np.ndarray:
    r = np.arange(-radius_bins, radius_bins + 1)
    return np.stack(np.meshgrid(r, r, r, indexing="ij"), axis=-1).reshape(-1, 3)


def _mean_shift(
    seeds: np.ndarray, counts: np.ndarray, sums: np.ndarray, radius: float
) -> tuple[np.ndarray, np.ndarray]:
    """Move each seed colour to the mean of the bins (by their mean colour) within `radius`."""
    offsets = _neighbourhood(int(np.ceil(radius / (1 << BIN_BITS))) + 1)
    centres = seeds.astype(np.float64)
    mass = np.zeros(len(seeds))
    for _ in range(_MEAN_SHIFT_STEPS):
        cells = (np.floor(centres).astype(np.int64) >> BIN_BITS)[:, None, :] + offsets[None]
        valid = ((cells >= 0) & (cells < _BINS)).all(axis=-1)
        cells = np.clip(cells, 0, _BINS - 1)
        flat = (cells[..., 0] * _BINS + cells[..., 1]) * _BINS + cells[..., 2]
        n = np.where(valid, counts[flat], 0)
        s = sums[flat]
        means = s / np.maximum(n, 1)[..., None]
        inside = (n > 0) & (((means - centres[:, None, :]) ** 2).sum(axis=-1) <= radius**2)
        mass = np.where(inside, n, 0).sum(axis=1)
        moved = np.where(inside[..., None], s, 0).sum(axis=1) / np.maximum(mass, 1)[:, None]
        moved = np.where(mass[:, None] > 0, moved, centres)
        shift = np.abs(moved - centres).max(initial=0.0)
        centres = moved
        if shift < _CONVERGED:
            break
    return centres, mass


def find_entity_colours(
    rgb: np.ndarray, *, min_fraction: float = 1e-3, min_separation: float = MIN_SEPARATION
) -> Palette:
    """The palette of a Pixelplanes segmentation video: {0: black, 1..N: entity colours}.

    `min_fraction`: the least share of the clip's pixels an entity colour must gather.
    `min_separation`: the palette's spacing (Pixelplanes': 32); colours within half of it are one.
    """
    rgb = _check_rgb(rgb)
    if not 0 < min_fraction < 1:
        raise ValueError(f"min_fraction must lie in (0, 1), got {min_fraction}")
    if min_separation <= 0:
        raise ValueError(f"min_separation must be > 0, got {min_separation}")
    palette: Palette = {BACKGROUND_ID: BACKGROUND_COLOUR}
    if rgb.size == 0:
        return palette
    colours, pixel_counts = _distinct(rgb)
    min_count = max(1.0, min_fraction * rgb[..., 0].size)

    bins = colours >> BIN_BITS
    flat = (bins[:, 0] * _BINS + bins[:, 1]) * _BINS + bins[:, 2]
    counts = np.bincount(flat, weights=pixel_counts, minlength=_BINS**3)
    sums = np.stack(
        [np.bincount(flat, weights=pixel_counts * colours[:, c], minlength=_BINS**3) for c in range(3)],
        axis=1,
    )
    grid = counts.reshape((_BINS,) * 3)
    density = _box_sum(grid, _DENSITY_RADIUS)
    peak_radius = int(np.ceil(min_separation / 2 / (1 << BIN_BITS)))
    peaks = (density == _max_filter(density, peak_radius)) & (density >= min_count)
    seed_bins = np.argwhere(peaks)
    # Densest (then occupied) peak first; then one per block.
    order = np.lexsort((-grid[tuple(seed_bins.T)], -density[tuple(seed_bins.T)]))
    seed_bins = seed_bins[order]
    blocks = seed_bins >> _SEED_BLOCK_BITS
    _, first = np.unique(blocks[:, 0] * 4096 + blocks[:, 1] * 64 + blocks[:, 2], return_index=True)
    seed_bins = seed_bins[np.sort(first)[:_MAX_SEEDS]]
    if not len(seed_bins):
        return palette

    seed_flat = (seed_bins[:, 0] * _BINS + seed_bins[:, 1]) * _BINS + seed_bins[:, 2]
    # A peak bin's own mean colour; a density peak can be an empty bin between occupied ones.
    centre = (seed_bins << BIN_BITS) + ((1 << BIN_BITS) - 1) / 2
    occupied = counts[seed_flat][:, None]
    seeds = np.where(occupied > 0, sums[seed_flat] / np.maximum(occupied, 1), centre)
    modes, mass = _mean_shift(seeds, counts, sums, min_separation / 2)

    taken = [np.asarray(BACKGROUND_COLOUR, dtype=np.float64)]
    # Heaviest first; ties by colour so the result does not depend on the seeds' order.
    order = np.lexsort((modes[:, 2], modes[:, 1], modes[:, 0], -mass))
    for k in order:
        if mass[k] < min_count:
            continue
        mode = np.rint(modes[k])
        if min(np.sqrt(((mode - t) ** 2).sum()) for t in taken) < min_separation / 2:
            continue
        taken.append(mode)
    blends = _blends(rgb, np.stack(taken), min_separation)
    for colour in (c for k, c in enumerate(taken[1:], start=1) if k not in blends):
        palette[len(palette)] = (int(colour[0]), int(colour[1]), int(colour[2]))
    return palette


def _between(colours: np.ndarray, k: int, tolerance: float) -> bool:
    """Colour k lies inside the segment between two heavier colours (lower indices), within `tolerance`."""
    a = colours[:k, None, :]
    b = colours[None, :k, :]
    ab = b - a
    length2 = (ab**2).sum(axis=-1)
    t = ((colours[k] - a) * ab).sum(axis=-1) / np.maximum(length2, 1e-9)
    closest = a + np.clip(t, 0, 1)[..., None] * ab
    near = ((closest - colours[k]) ** 2).sum(axis=-1) <= tolerance**2
    return bool((near & (t > _BLEND_T) & (t < 1 - _BLEND_T) & (length2 > 0)).any())


def _blends(rgb: np.ndarray, colours: np.ndarray, min_separation: float) -> set[int]:
    """Indices of colours that are a VAE's blend along the edge between two heavier colours.

    A blend is a mix of its two neighbours' colours (near the segment between them in RGB space) AND a
    thin band in the image (most of its pixels vanish under a 3x3 erosion). A real entity has to be
    both to be mistaken for one, which a random palette and a compact object make unlikely.
    """
    suspects = [k for k in range(2, len(colours)) if _between(colours, k, min_separation / 4)]
    if not suspects:
        return set()
    palette = {k: tuple(int(v) for v in c) for k, c in enumerate(colours)}
    ids = decode_segmentation(rgb, palette, max_distance=min_separation / 2)
    kernel = np.ones((3, 3), np.uint8)
    found = set()
    for k in suspects:
        mask = (ids == k).astype(np.uint8)
        total = int(mask.sum())
        interior = sum(int(cv2.erode(frame, kernel).sum()) for frame in mask)
        if total == 0 or interior < _BLEND_INTERIOR * total:
            found.add(k)
    return found


def decode_generated_segmentation(
    rgb: np.ndarray,
    *,
    min_fraction: float = 1e-3,
    min_separation: float = MIN_SEPARATION,
    max_distance: float | None = None,
) -> tuple[np.ndarray, Palette]:
    """(T, H, W, 3) uint8 -> ((T, H, W) int32 entity ids, the palette found).

    0 is the background, 1..N the entities (by decreasing colour mass), `UNKNOWN_ID` for pixels
    farther than `max_distance` (default `min_separation / 2`) from every found colour.
    """
    palette = find_entity_colours(rgb, min_fraction=min_fraction, min_separation=min_separation)
    limit = min_separation / 2 if max_distance is None else max_distance
    return decode_segmentation(rgb, palette, max_distance=limit), palette
