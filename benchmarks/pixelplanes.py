"""Pixelplanes depth decoding: throughput of the shipped exact search vs naive all-pairs distances,
and depth error under RGB noise.

Throughput is Mpixel/s of `decode_depth` (best of --repeats) on a synthetic depth clip (a ground
plane and a few moving discs at constant depth) encoded with `encode_depth`: clean, with Gaussian
RGB noise, and on uniform random RGB (the worst case: nearly every pixel a distinct colour). The
naive all-pairs decoder is timed on the first --naive-frames frames only and its rate applies per
pixel to the whole clip. Both decoders must agree on every pixel they both decode.

The error table adds Gaussian noise to the RGB values (rounded, clipped) of two depth clips:
uniform random depths (every depth equally likely, no spatial structure) and the synthetic scene,
decoded without and with the 3x3 median filter (`denoise="median"`). The scene also gets noise
blurred over --blur-px pixels (same std), closer to a VAE's spatially correlated errors.

    .venv/bin/python benchmarks/pixelplanes.py [--frames 49 --height 480 --width 720] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np

from vidprior.udpdiff.pixelplanes import (
    add_rgb_noise,
    decode_depth,
    decode_depth_naive,
    encode_depth,
)

NOISE_SIGMAS = (0, 1, 2, 4, 8)
HALF_BIN = 0.5 / 255


def synthetic_depth(frames: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """A ground plane (far at the top) with three discs at constant depth moving across it."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    ground = 1.0 - 0.7 * ys / max(height - 1, 1)
    depth = np.repeat(ground[None], frames, axis=0)
    for disc_depth in (0.15, 0.35, 0.55):
        x0, y0 = rng.uniform(0.2, 0.8) * width, rng.uniform(0.3, 0.8) * height
        vx, vy = rng.uniform(-2, 2, size=2) * width / 720
        radius = rng.uniform(0.08, 0.15) * min(height, width)
        for t in range(frames):
            inside = (xs - x0 - vx * t) ** 2 + (ys - y0 - vy * t) ** 2 < radius**2
            depth[t][inside] = np.minimum(depth[t][inside], disc_depth)
    return depth


def _best_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def _throughput(args: argparse.Namespace) -> list[tuple[str, float, float]]:
    depth = synthetic_depth(args.frames, args.height, args.width)
    clean = encode_depth(depth)
    inputs = {
        "clean": clean,
        "noise sigma 2": add_rgb_noise(clean, 2.0, seed=1),
        "noise sigma 8": add_rgb_noise(clean, 8.0, seed=2),
        "uniform random RGB": np.random.default_rng(3).integers(0, 256, clean.shape, dtype=np.uint8),
    }
    decode_depth(clean[:1])  # builds the cached candidate table, once per process
    rows = []
    for name, rgb in inputs.items():
        fast = _best_time(lambda rgb=rgb: decode_depth(rgb), args.repeats)
        subset = rgb[: args.naive_frames]
        naive = _best_time(lambda subset=subset: decode_depth_naive(subset), 1)
        if not np.array_equal(decode_depth(subset), decode_depth_naive(subset)):
            raise AssertionError(f"fast and naive decoders disagree on {name}")
        rows.append((name, rgb[..., 0].size / fast / 1e6, subset[..., 0].size / naive / 1e6))
    return rows


def _noise_errors(args: argparse.Namespace) -> list[tuple]:
    shape = (args.noise_frames, args.noise_size, args.noise_size)
    uniform = np.random.default_rng(4).random(shape)
    scene = synthetic_depth(*shape).astype(np.float64)
    uniform_rgb, scene_rgb = encode_depth(uniform), encode_depth(scene)
    rows = []
    for sigma in NOISE_SIGMAS:
        err = np.abs(decode_depth(add_rgb_noise(uniform_rgb, sigma, seed=5)) - uniform)
        row = [sigma, err.mean(), (err <= HALF_BIN).mean()]
        for blur_px in (0.0, args.blur_px):
            noisy = add_rgb_noise(scene_rgb, sigma, seed=6, blur_px=blur_px)
            row += [np.abs(decode_depth(noisy, denoise=mode) - scene).mean() for mode in ("none", "median")]
        rows.append(tuple(row))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--frames", type=int, default=49, help="frames per clip (CogVideoX: 49)")
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=720)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--naive-frames", type=int, default=1, help="frames the naive decoder is timed on")
    parser.add_argument("--noise-frames", type=int, default=4, help="frames of the error-vs-noise clips")
    parser.add_argument("--noise-size", type=int, default=256, help="side of the error-vs-noise clips")
    parser.add_argument("--blur-px", type=float, default=2.0, help="blur of the correlated noise")
    args = parser.parse_args()

    print(
        f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, numpy {np.__version__}; "
        f"clip {args.frames}x{args.height}x{args.width}; naive decoder timed on {args.naive_frames} "
        "frame(s), rate per pixel applied to the whole clip"
    )
    print("| input | decode_depth Mpixel/s | naive all-pairs Mpixel/s | speed-up | clip s (shipped) |")
    print("|---|---|---|---|---|")
    pixels = args.frames * args.height * args.width / 1e6
    for name, fast, naive in _throughput(args):
        print(
            f"| {name} | {fast:.1f} | {naive:.2f} | {fast / naive:.0f}x | {pixels / fast:.2f} |", flush=True
        )

    print(
        f"\n# depth error vs Gaussian RGB noise; {args.noise_frames}x{args.noise_size}x{args.noise_size} "
        f"clips; half a bin = {HALF_BIN:.5f}; correlated = noise blurred over {args.blur_px:g} px"
    )
    print(
        "| sigma | uniform depths: MAE | uniform: within half a bin | scene: MAE | scene, median: MAE "
        "| scene, correlated: MAE | scene, correlated, median: MAE |"
    )
    print("|---|---|---|---|---|---|---|")
    for sigma, mae, within, *scene in _noise_errors(args):
        print(f"| {sigma} | {mae:.5f} | {within:.3f} | " + " | ".join(f"{e:.5f}" for e in scene) + " |")


if __name__ == "__main__":
    main()
