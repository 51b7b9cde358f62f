"""Pixelplanes: segmentation and depth as RGB videos, the exact nearest-colour search, noise tolerance."""

from __future__ import annotations

import json

import matplotlib
import numpy as np
import pytest

from vidprior.udpdiff import pixelplanes as pp
from vidprior.udpdiff.pixelplanes import (
    BACKGROUND_COLOUR,
    BACKGROUND_ID,
    MIN_SEPARATION,
    UNKNOWN_ID,
    NearestColour,
    add_rgb_noise,
    decode_depth,
    decode_depth_naive,
    decode_segmentation,
    depth_palette,
    encode_depth,
    encode_segmentation,
    encode_unigs_segmentation,
    entity_palette,
    nearest_colour_naive,
    palette_from_json,
    palette_to_json,
)

HALF_BIN = 0.5 / 255
# float32 depth values i / 255 are off by up to one float32 ulp near 1.
FLOAT_SLACK = 1e-6


def blocky_masks(frames: int = 4, size: int = 48, entities: int = 12, seed: int = 0) -> np.ndarray:
    """Entity ids (0..entities, ids not contiguous) in 4x4 blocks, different in every frame."""
    rng = np.random.default_rng(seed)
    ids = np.array([0, *rng.choice(np.arange(1, 1000), entities, replace=False)])
    blocks = rng.integers(0, len(ids), (frames, size // 4, size // 4))
    return ids[blocks].repeat(4, axis=1).repeat(4, axis=2).astype(np.int32)


def colour_distances(colours: np.ndarray) -> np.ndarray:
    colours = np.asarray(colours, dtype=np.float64)
    d = np.sqrt(((colours[:, None] - colours[None]) ** 2).sum(-1))
    np.fill_diagonal(d, np.inf)
    return d


# ------------------------------------------------------------------------------------- segmentation


def test_segmentation_round_trip_is_exact_without_noise() -> None:
    masks = blocky_masks()
    rgb, palette = encode_segmentation(masks, seed=3)
    assert rgb.shape == (*masks.shape, 3) and rgb.dtype == np.uint8
    assert set(palette) == set(np.unique(masks).tolist()) | {BACKGROUND_ID}
    decoded = decode_segmentation(rgb, palette)
    assert decoded.dtype == np.int32
    np.testing.assert_array_equal(decoded, masks)


def test_palette_colours_unique_separated_and_background_black() -> None:
    masks = blocky_masks(entities=40)
    rgb, palette = encode_segmentation(masks, seed=0)
    assert palette[BACKGROUND_ID] == BACKGROUND_COLOUR == (0, 0, 0)
    np.testing.assert_array_equal(rgb[masks == BACKGROUND_ID], 0)
    colours = np.array(list(palette.values()))
    assert len({tuple(c) for c in colours}) == len(colours)
    assert colour_distances(colours).min() >= MIN_SEPARATION


def test_palette_is_random_per_seed_and_depends_on_ids_only() -> None:
    ids = [0, 5, 9, 42]
    assert entity_palette(ids, seed=7) == entity_palette(list(reversed(ids)) + [5], seed=7)
    assert entity_palette(ids, seed=7) != entity_palette(ids, seed=8)
    # Channels drawn uniformly over 0..255: many palettes cover the range with a central mean.
    channels = np.array([entity_palette(range(1, 11), seed=s)[k] for s in range(40) for k in range(1, 11)])
    assert channels.min() < 16 and channels.max() > 239
    np.testing.assert_allclose(channels.mean(axis=0), 127.5, atol=12)


def test_colours_fixed_over_time() -> None:
    masks = blocky_masks(frames=6)
    rgb, palette = encode_segmentation(masks, seed=1)
    for entity, colour in palette.items():
        where = masks == entity
        if where.any():
            np.testing.assert_array_equal(rgb[where], np.broadcast_to(colour, (where.sum(), 3)))
    # The same entity keeps its colour when it moves: a two-frame clip with one shifted square.
    moving = np.zeros((2, 16, 16), np.int32)
    moving[0, 2:6, 2:6] = moving[1, 9:13, 8:12] = 4
    rgb, palette = encode_segmentation(moving, seed=1)
    np.testing.assert_array_equal(rgb[0, 3, 3], rgb[1, 10, 10])
    np.testing.assert_array_equal(rgb[0, 3, 3], palette[4])


def test_segmentation_decoding_tolerates_small_colour_noise() -> None:
    masks = blocky_masks(frames=4, size=96, entities=60)
    errors = {}
    for sigma in (4.0, 8.0):
        wrong = []
        for seed in range(3):
            rgb, palette = encode_segmentation(masks, seed=seed)
            noisy = add_rgb_noise(rgb, sigma, seed=seed)
            assert not np.array_equal(noisy, rgb)
            wrong.append(np.mean(decode_segmentation(noisy, palette) != masks))
        errors[sigma] = float(np.mean(wrong))
    # Measured: 0 of 110,592 pixels wrong at sigma 4, 0.6-0.7% at sigma 8 (a 16-unit move is 2 sigma).
    assert errors[4.0] <= 1e-4
    assert 0 < errors[8.0] < 0.015


def test_max_distance_gives_unknown_id() -> None:
    palette = {0: (0, 0, 0), 1: (200, 10, 10), 2: (10, 200, 10)}
    rgb = np.array([[[[0, 0, 0], [205, 10, 10], [10, 200, 13], [60, 60, 60]]]], np.uint8)
    np.testing.assert_array_equal(decode_segmentation(rgb, palette), [[[0, 1, 2, 0]]])
    within_5 = decode_segmentation(rgb, palette, max_distance=5)
    np.testing.assert_array_equal(within_5, [[[0, 1, 2, UNKNOWN_ID]]])
    # Strictly farther than max_distance is unknown; at exactly the distance it still decodes.
    np.testing.assert_array_equal(
        decode_segmentation(rgb, palette, max_distance=4.9), [[[0, UNKNOWN_ID, 2, UNKNOWN_ID]]]
    )
    np.testing.assert_array_equal(
        decode_segmentation(rgb, palette, max_distance=0), [[[0, UNKNOWN_ID, UNKNOWN_ID, UNKNOWN_ID]]]
    )


def test_ties_go_to_the_lower_id() -> None:
    palette = {3: (100, 0, 0), 8: (110, 0, 0)}
    rgb = np.array([[[[105, 0, 0]]]], np.uint8)
    assert decode_segmentation(rgb, palette)[0, 0, 0] == 3


def test_palette_json_round_trip_and_string_keys() -> None:
    masks = blocky_masks()
    rgb, palette = encode_segmentation(masks, seed=2)
    text = palette_to_json(palette)
    raw = json.loads(text)
    assert list(raw) == [str(i) for i in sorted(palette)] and raw["0"] == [0, 0, 0]
    assert palette_from_json(text) == palette
    np.testing.assert_array_equal(decode_segmentation(rgb, raw), masks)


# ------------------------------------------------------------------------------------- UniGS baseline


def test_unigs_colour_from_first_frame_centroid() -> None:
    masks = np.zeros((3, 64, 64), np.int32)
    masks[0, 0:8, 0:8] = 1  # centroid (4, 4) -> cell (0, 0)
    masks[1:, 40:48, 56:64] = 1  # moved: the colour must not follow
    masks[1, 32:40, 16:24] = 2  # appears in frame 1 at cell (2, 4)
    masks[2, 0:8, 0:8] = 2
    rgb, palette = encode_unigs_segmentation(masks)
    level = [round(255 * (i + 0.5) / 8) for i in range(8)]
    assert palette == {0: (0, 0, 0), 1: (level[0], level[0], 128), 2: (level[2], level[4], 128)}
    np.testing.assert_array_equal(rgb[2, 44, 60], palette[1])
    np.testing.assert_array_equal(decode_segmentation(rgb, palette), masks)


def test_unigs_resolves_collisions_and_limits_entities() -> None:
    masks = np.zeros((2, 64, 64), np.int32)
    masks[0, 8:16, 8:12] = 5  # both centroids in cell (1, 1)
    masks[0, 8:16, 12:16] = 3
    masks[1, 9:15, 9:15] = 7  # later frame, same cell again
    rgb, palette = encode_unigs_segmentation(masks)
    colours = [palette[i] for i in (3, 5, 7)]
    assert len(set(colours)) == 3
    level = [round(255 * (i + 0.5) / 8) for i in range(8)]
    # Frame 0 first, then the lower id keeps the cell; the others take the nearest free cells.
    assert palette[3] == (level[1], level[1], 128)
    assert palette[5] == (level[0], level[1], 128)
    assert palette[7] == (level[1], level[0], 128)
    np.testing.assert_array_equal(decode_segmentation(rgb, palette), masks)
    many = np.arange(10, dtype=np.int32).reshape(1, 2, 5).repeat(4, 1).repeat(4, 2)
    with pytest.raises(ValueError, match="9 entities do not fit a 2x4 grid"):
        encode_unigs_segmentation(many, grid=(2, 4))
    with pytest.raises(ValueError, match="grid must have 1..256 cells"):
        encode_unigs_segmentation(masks, grid=(0, 8))


# ------------------------------------------------------------------------------------- depth


def test_depth_palette_is_spectral_sampled_at_i_over_255() -> None:
    colours = depth_palette()
    assert colours.shape == (256, 3) and colours.dtype == np.uint8 and not colours.flags.writeable
    assert len({tuple(c) for c in colours}) == 256
    cmap = matplotlib.colormaps["Spectral"]
    expected = np.rint(np.array([cmap(i / 255)[:3] for i in range(256)]) * 255)
    np.testing.assert_array_equal(colours, expected)
    assert colours[0, 0] > colours[0, 2] and colours[-1, 2] > colours[-1, 0]  # near red, far blue
    steps = np.sqrt((np.diff(colours.astype(float), axis=0) ** 2).sum(-1))
    assert steps.min() == 1.0 and steps.max() < 4.4 and np.median(steps) == pytest.approx(2.83, abs=0.01)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_depth_round_trip_within_half_a_bin(dtype: type) -> None:
    rng = np.random.default_rng(0)
    depth = rng.random((3, 8, 256))
    # Bin centres, bin edges (the worst case) and the ends of the range.
    depth[0, 0, :256] = np.arange(256) / 255
    depth[0, 1, :255] = (np.arange(255) + 0.5) / 255
    depth[0, 2, :2] = (0.0, 1.0)
    depth = depth.astype(dtype)
    decoded = decode_depth(encode_depth(depth))
    assert decoded.dtype == np.float32 and decoded.shape == depth.shape
    error = np.abs(decoded.astype(np.float64) - depth)
    assert error.max() <= HALF_BIN + FLOAT_SLACK
    np.testing.assert_allclose(decoded[0, 0, :256], np.arange(256) / 255, atol=FLOAT_SLACK)
    assert decoded[0, 2, 0] == 0.0 and decoded[0, 2, 1] == 1.0


def test_shipped_decoder_equals_naive() -> None:
    rng = np.random.default_rng(1)
    clean = encode_depth(rng.random((2, 48, 64)))
    inputs = [
        clean,
        add_rgb_noise(clean, 2.0, seed=1),
        add_rgb_noise(clean, 8.0, seed=2, blur_px=1.5),
        rng.integers(0, 256, (2, 48, 64, 3), dtype=np.uint8),
    ]
    for rgb in inputs:
        np.testing.assert_array_equal(decode_depth(rgb), decode_depth_naive(rgb))


def test_nearest_colour_equals_naive_on_random_palettes_with_ties() -> None:
    rng = np.random.default_rng(2)
    rgb = rng.integers(0, 256, (1, 64, 64, 3), dtype=np.uint8)
    for k in (1, 2, 7, 60, 300):
        colours = rng.integers(0, 256, (k, 3))
        if k > 2:
            colours[k // 2] = colours[0]  # a duplicate: ties must go to the lower index
        finder = NearestColour(colours)
        np.testing.assert_array_equal(finder.nearest(rgb), nearest_colour_naive(rgb, colours))
        index, dist2 = finder.nearest(rgb, with_distance=True)
        expected = ((rgb.astype(int) - colours[index]) ** 2).sum(-1)
        np.testing.assert_array_equal(dist2, expected)


def test_depth_candidate_tables_prune_the_search() -> None:
    counts = NearestColour(depth_palette()).candidate_counts()
    assert counts.shape == (32**3,) and counts.min() >= 1
    assert counts.max() == 155 and 24 < counts.mean() < 26


def test_depth_error_under_gaussian_rgb_noise() -> None:
    depth = np.random.default_rng(4).random((4, 128, 128))
    rgb = encode_depth(depth)
    measured = {}
    for sigma in (1.0, 2.0, 4.0, 8.0):
        error = np.abs(decode_depth(add_rgb_noise(rgb, sigma, seed=5)) - depth)
        measured[sigma] = (error.mean(), np.mean(error <= HALF_BIN + FLOAT_SLACK))
    # Measured (65,536 uniform depths): MAE 0.00166 / 0.00290 / 0.00558 / 0.0118 and within half a bin
    # 0.786 / 0.491 / 0.264 / 0.134 at sigma 1 / 2 / 4 / 8.
    bounds = {1.0: (0.0019, 0.75), 2.0: (0.0033, 0.46), 4.0: (0.0062, 0.24), 8.0: (0.013, 0.12)}
    for sigma, (mae, within) in measured.items():
        assert mae < bounds[sigma][0], (sigma, mae)
        assert within > bounds[sigma][1], (sigma, within)
    assert measured[1.0][0] < measured[2.0][0] < measured[4.0][0] < measured[8.0][0]


def test_median_denoising_helps_on_smooth_depth_under_noise() -> None:
    ys = np.linspace(0.1, 0.9, 64)[:, None].repeat(64, axis=1)
    depth = np.stack([ys, ys.T])
    noisy = add_rgb_noise(encode_depth(depth), 8.0, seed=3)
    plain = np.abs(decode_depth(noisy) - depth).mean()
    median = np.abs(decode_depth(noisy, denoise="median") - depth).mean()
    assert median < 0.6 * plain
    # Without noise a smooth ramp stays within half a bin after the median too.
    clean = decode_depth(encode_depth(depth), denoise="median")
    assert np.abs(clean - depth).max() <= HALF_BIN + FLOAT_SLACK


def test_add_rgb_noise_is_seeded_and_correlated_noise_keeps_sigma() -> None:
    rgb = np.full((2, 64, 64, 3), 128, np.uint8)
    assert np.array_equal(add_rgb_noise(rgb, 4.0, seed=1), add_rgb_noise(rgb, 4.0, seed=1))
    assert not np.array_equal(add_rgb_noise(rgb, 4.0, seed=1), add_rgb_noise(rgb, 4.0, seed=2))
    assert np.array_equal(add_rgb_noise(rgb, 0.0), rgb)
    for blur in (0.0, 2.0):
        noise = add_rgb_noise(rgb, 6.0, seed=0, blur_px=blur).astype(float) - 128
        assert noise.std() == pytest.approx(6.0, rel=0.1)
    smooth = add_rgb_noise(rgb, 6.0, seed=0, blur_px=2.0).astype(float)
    rough = add_rgb_noise(rgb, 6.0, seed=0).astype(float)
    assert np.abs(np.diff(smooth, axis=2)).mean() < 0.5 * np.abs(np.diff(rough, axis=2)).mean()


# ------------------------------------------------------------------------------------- bad input


def test_bad_inputs_raise_clear_errors() -> None:
    good_rgb = np.zeros((1, 4, 4, 3), np.uint8)
    palette = {0: (0, 0, 0), 1: (255, 0, 0)}
    cases = [
        (lambda: encode_segmentation(np.zeros((4, 4), np.int32), 0), r"masks must have shape \(T, H, W\)"),
        (lambda: encode_segmentation(np.zeros((1, 4, 4), np.float32), 0), "integer array of entity ids"),
        (lambda: encode_segmentation(-np.ones((1, 4, 4), np.int32), 0), "entity ids must be >= 0"),
        (lambda: entity_palette([0, -2], 0), "entity ids must be >= 0"),
        (lambda: decode_segmentation(np.zeros((4, 4, 3), np.uint8), palette), r"shape \(T, H, W, 3\)"),
        (lambda: decode_segmentation(good_rgb.astype(np.float32), palette), "rgb must be uint8"),
        (lambda: decode_segmentation(good_rgb, {}), "palette is empty"),
        (lambda: decode_segmentation(good_rgb, {0: (0, 0, 0), 1: (0, 0, 0)}), "same colour"),
        (lambda: decode_segmentation(good_rgb, {0: (0, 0, 300)}), "3 channels in 0..255"),
        (lambda: decode_segmentation(good_rgb, {0: (0, 0)}), "3 channels in 0..255"),
        (lambda: decode_segmentation(good_rgb, {"x": (0, 0, 0)}), "not entity id -> "),
        (lambda: decode_segmentation(good_rgb, {0: (0, 0, 0), "0": (1, 1, 1)}), "entity id 0 twice"),
        (lambda: decode_segmentation(good_rgb, palette, max_distance=-1), "max_distance must be"),
        (lambda: palette_from_json("[1, 2]"), "must be a JSON object"),
        (lambda: palette_from_json("{"), "palette is not JSON"),
        (lambda: encode_depth(np.zeros((2, 2))), r"depth must have shape \(T, H, W\)"),
        (lambda: encode_depth(np.zeros((1, 2, 2), np.uint8)), "float array in"),
        (lambda: encode_depth(np.full((1, 2, 2), np.nan)), "1 non-finite|4 non-finite"),
        (lambda: encode_depth(np.full((1, 2, 2), 1.5)), r"must lie in \[0, 1\], got min 1.5"),
        (lambda: encode_depth(np.full((1, 2, 2), -0.1)), r"must lie in \[0, 1\]"),
        (lambda: decode_depth(good_rgb, denoise="gaussian"), "denoise must be one of"),
        (lambda: decode_depth(good_rgb[0]), r"shape \(T, H, W, 3\)"),
        (lambda: decode_depth(good_rgb.astype(np.int16)), "rgb must be uint8"),
        (lambda: add_rgb_noise(good_rgb, -1.0), "sigma and blur_px must be"),
        (lambda: add_rgb_noise(good_rgb.astype(float), 1.0), "rgb must be uint8"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            call()


def test_palette_raises_when_colours_run_out(monkeypatch: pytest.MonkeyPatch) -> None:
    # At the real separation ~400 colours fit and finding that out takes seconds; a wide one fails fast.
    monkeypatch.setattr(pp, "MIN_SEPARATION", 220.0)
    with pytest.raises(ValueError, match=r"cannot fit entity colour #\d+ 220 RGB units away from black"):
        entity_palette(range(50), 0)


def test_encoders_accept_the_documented_dtypes() -> None:
    masks = blocky_masks().astype(np.uint16)
    rgb, palette = encode_segmentation(masks, seed=0)
    np.testing.assert_array_equal(decode_segmentation(rgb, palette), masks)
    assert pp.BACKGROUND_ID in palette
