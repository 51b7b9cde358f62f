"""Optical-flow throughput and accuracy: DIS (preset MEDIUM) vs Farneback on the CPU.

Synthetic videos with known flow (vidprior.synthetic_video) rendered at the analysis resolution;
throughput is frame pairs per second of `compute_flow` (grey conversion included, OpenCV using
all its threads unless --threads says otherwise), best of --repeats runs per video; accuracy is
the mean end-point error against the true flow. The offline judge's cost per video is reported
too, since it is the labelling stage's per-video work without a GPU.

    .venv/bin/python benchmarks/flow.py [--size 256 256] [--frames 14] [--threads N] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import cv2
import numpy as np

from vidprior import synthetic_video as sv
from vidprior.config import FlowParams, OfflineJudgeParams
from vidprior.flow import compute_flow
from vidprior.unic.judge_types import JudgeItem
from vidprior.unic.offline_judge import OfflineJudge

BACKENDS = ("dis", "farneback")


def _videos(height: int, width: int, frames: int) -> list[sv.SyntheticVideo]:
    k = min(height, width) / 128  # the scenes' default speeds are for 128 px frames
    kw = {"frames": frames, "height": height, "width": width}
    return [
        sv.pan(2.0 * k, 1.0 * k, **kw),
        sv.zoom(0.02, **kw),
        sv.moving_object(1.0 * k, 0.5 * k, size=0.2, **kw),
        sv.object_and_pan(1.0 * k, -0.5 * k, 0.75 * k, 0.25 * k, size=0.2, **kw),
    ]


def _best_time(fn, repeats: int) -> float:
    fn()  # warm-up: first call pays OpenCV's lazy initialisation
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def _measure(backend: str, videos: list[sv.SyntheticVideo], repeats: int, size: tuple[int, int]) -> dict:
    pairs = sum(v.n_frames - 1 for v in videos)
    seconds = sum(_best_time(lambda v=v: compute_flow(v.frames, backend), repeats) for v in videos)
    errors = [np.linalg.norm(compute_flow(v.frames, backend) - v.flow, axis=-1).mean() for v in videos]
    judge = OfflineJudge(OfflineJudgeParams(), backend, size)
    judge_s = sum(
        _best_time(lambda v=v: judge.judge(JudgeItem(v.name, "", list(v.frames), "")), 1) for v in videos
    )
    return {
        "pairs_per_s": pairs / seconds,
        "mean_epe_px": float(np.mean(errors)),
        "judge_s_per_video": judge_s / len(videos),
    }


def main() -> None:
    defaults = FlowParams()
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--size", type=int, nargs=2, default=[defaults.analysis_height, defaults.analysis_width]
    )
    parser.add_argument("--frames", type=int, default=14, help="frames per video (SVD: 14)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="cv2.setNumThreads; default: OpenCV's")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of markdown")
    args = parser.parse_args()
    if args.threads is not None:
        cv2.setNumThreads(args.threads)
    height, width = args.size
    videos = _videos(height, width, args.frames)

    results = {backend: _measure(backend, videos, args.repeats, (height, width)) for backend in BACKENDS}
    ratio = results["dis"]["pairs_per_s"] / results["farneback"]["pairs_per_s"]
    machine = {
        "cpu": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "opencv": cv2.__version__,
        "opencv_threads": cv2.getNumThreads(),
        "size": f"{height}x{width}",
        "frames": args.frames,
        "videos": [v.name for v in videos],
    }
    if args.json:
        print(json.dumps({"machine": machine, "results": results, "dis_speedup": ratio}, indent=2))
        return
    print(
        f"# {machine['cpu']}, {machine['cpus']} cpus, OpenCV {machine['opencv']} "
        f"({machine['opencv_threads']} threads); {height}x{width}, "
        f"{len(videos)} videos x {args.frames} frames ({', '.join(machine['videos'])})"
    )
    print(
        "| size | DIS pairs/s | Farneback pairs/s | DIS speed-up | DIS EPE px | Farneback EPE px "
        "| offline judge s/video (DIS) | offline judge s/video (Farneback) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    dis, farneback = results["dis"], results["farneback"]
    print(
        f"| {height}x{width} | {dis['pairs_per_s']:,.0f} | {farneback['pairs_per_s']:,.0f} | {ratio:.2f}x | "
        f"{dis['mean_epe_px']:.3f} | {farneback['mean_epe_px']:.3f} | {dis['judge_s_per_video']:.3f} | "
        f"{farneback['judge_s_per_video']:.3f} |"
    )


if __name__ == "__main__":
    main()
