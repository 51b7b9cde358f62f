"""Entity colours found in a generated segmentation video (no palette known)."""

from __future__ import annotations

import numpy as np
import pytest

from vidprior.udpdiff.entity_colours import decode_generated_segmentation, find_entity_colours
from vidprior.udpdiff.pixelplanes import (
    BACKGROUND_ID,
    MIN_SEPARATION,
    UNKNOWN_ID,
    add_rgb_noise,
    encode_segmentation,
)


def _masks(seed: int, entities: int = 5, frames: int = 9, height: int = 32, width: int = 48) -> np.ndarray:
    """Moving rectangles of different sizes over a background; later ones occlude earlier ones."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((frames, height, width), np.int32)
    for entity in range(1, entities + 1):
        h, w = rng.integers(6, 14), rng.integers(8, 18)
        y, x = rng.integers(0, height - h), rng.integers(0, width - w - frames // 2)
        for t in range(frames):
            masks[t, y : y + h, x + t // 2 : x + t // 2 + w] = entity
    return masks


def _same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal up to relabelling: the label pairs form a bijection."""
    pairs = set(zip(a.ravel().tolist(), b.ravel().tolist(), strict=True))
    return len(pairs) == len(np.unique(a)) == len(np.unique(b))


def _majority_accuracy(truth: np.ndarray, found: np.ndarray) -> float:
    """Share of pixels whose found id is the one most found for their true entity."""
    correct = 0
    for entity in np.unique(truth):
        got = found[truth == entity]
        correct += np.bincount(got[got >= 0]).max(initial=0) if (got >= 0).any() else 0
    return correct / truth.size


@pytest.mark.parametrize("seed", range(6))
def test_clean_input_recovers_the_partition_and_the_exact_colours(seed):
    masks = _masks(seed)
    rgb, palette = encode_segmentation(masks, seed=seed)
    ids, found = decode_generated_segmentation(rgb)
    assert _same_partition(masks, ids)
    assert (ids == UNKNOWN_ID).sum() == 0
    assert found[BACKGROUND_ID] == (0, 0, 0)
    assert ids[masks == 0].tolist() == [BACKGROUND_ID] * int((masks == 0).sum())
    used = {palette[i] for i in np.unique(masks).tolist()}
    assert set(found.values()) == used


def test_ids_follow_decreasing_pixel_count():
    masks = _masks(3)
    ids, _ = decode_generated_segmentation(encode_segmentation(masks, seed=3)[0])
    counts = [int((ids == k).sum()) for k in range(1, ids.max() + 1)]
    assert counts == sorted(counts, reverse=True)


@pytest.mark.parametrize("seed", range(4))
def test_sigma_4_noise_is_tolerated(seed):
    masks = _masks(seed)
    rgb, _ = encode_segmentation(masks, seed=seed)
    ids, found = decode_generated_segmentation(add_rgb_noise(rgb, 4.0, seed=seed))
    assert len(found) == len(np.unique(masks))
    # A 16-unit move at sigma 4 is a 4-sigma event in 3D: about 0.1 % of the pixels.
    assert np.mean(ids == UNKNOWN_ID) < 0.005
    assert _majority_accuracy(masks, ids) > 0.995


def test_far_pixels_become_unknown_and_do_not_make_an_entity():
    masks = _masks(1)
    rgb, palette = encode_segmentation(masks, seed=1)
    colours = np.array(list(palette.values()), dtype=float)
    # A colour at least 40 units from every palette colour, on a few pixels (under min_fraction).
    grid = np.stack(np.meshgrid(*[np.arange(0, 256, 8)] * 3, indexing="ij"), -1).reshape(-1, 3)
    far = grid[np.sqrt(((grid[:, None] - colours[None]) ** 2).sum(-1)).min(1) >= 40][0]
    rgb[0, :2, :3] = far
    ids, found = decode_generated_segmentation(rgb, min_fraction=0.01)
    assert len(found) == len(np.unique(masks))
    assert (ids[0, :2, :3] == UNKNOWN_ID).all()
    assert (ids == UNKNOWN_ID).sum() == 6
    # With a smaller threshold the same pixels are an entity of their own.
    _, more = decode_generated_segmentation(rgb, min_fraction=6 / rgb[..., 0].size)
    assert tuple(int(v) for v in far) in set(more.values())


def test_a_thin_blend_band_between_two_colours_is_not_an_entity():
    masks = np.zeros((4, 32, 48), np.int32)
    masks[:, :, 24:] = 1
    masks[:, 8:24, 4:16] = 2
    rgb, palette = encode_segmentation(masks, seed=5)
    # A two-pixel band of the 50/50 mix of entity 1 and the background (a VAE's edge blend).
    rgb[:, :, 22:24] = (np.array(palette[1]) / 2).round().astype(np.uint8)
    ids, found = decode_generated_segmentation(rgb)
    assert len(found) == 3
    assert (ids[:, :, 22:24] == UNKNOWN_ID).all()


def test_background_only_and_bad_input():
    palette = find_entity_colours(np.zeros((2, 8, 8, 3), np.uint8))
    assert palette == {BACKGROUND_ID: (0, 0, 0)}
    with pytest.raises(ValueError, match=r"uint8 array of shape \(T, H, W, 3\)"):
        find_entity_colours(np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="min_fraction"):
        find_entity_colours(np.zeros((1, 8, 8, 3), np.uint8), min_fraction=0)


def test_near_colours_merge_within_half_the_separation():
    rgb = np.zeros((1, 20, 20, 3), np.uint8)
    rgb[0, :, :10] = (200, 40, 40)
    rgb[0, :, 10:] = (200, 40 + int(MIN_SEPARATION / 2) - 4, 40)  # 12 units away: the same colour
    assert len(find_entity_colours(rgb)) == 2
