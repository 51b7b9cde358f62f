"""Stage `udpdiff.clips`: Panda-70M clips filtered by quality and motion, normalised for CogVideoX.

Input: a directory holding the Panda-70M CSV and the clip files (`udpdiff.panda.csv` and
`.clips_dir`, relative to it; see `vidprior.udpdiff.panda` for the format and file names).

Every clip the CSV reader accepts is read and, in this order, rejected if:

* `unreadable_video`: the file cannot be decoded (or is truncated);
* `source_too_small`: its frames are below `min_source_height` x `min_source_width`;
* `too_few_frames`: it has fewer frames than the normalised clip needs (`frames`), which would
  otherwise repeat frames;
* `blurry`: its sharpness is below `min_sharpness`;
* `too_static` / `too_fast`: its mean flow magnitude lies outside [`min_motion`, `max_motion`];
* `non_finite_statistic`: a flow statistic is NaN or infinite.

The normalised clip is `frames` frames sampled at regular intervals over the whole source clip,
resized (INTER_AREA) to `height` x `width` and written at `fps`. Sharpness (the variance of the
Laplacian of each frame, averaged) and flow are measured on those normalised frames: they are what
the model trains on, and one resolution gives every threshold the same meaning for every source.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from vidprior.config import Params
from vidprior.io.media import MediaError, file_sha256, read_video, sample_frame_indices, write_video
from vidprior.udpdiff.panda import PandaClip, read_panda_csv
from vidprior.unic.flow_rule import STAT_COLUMNS
from vidprior.unic.generation import fingerprint, finish_stage, kept_table, ok, rejected, run_batches
from vidprior.unic.stage_inputs import input_dir

STAGE = "udpdiff.clips"
BATCH = 16  # clips decoded, measured and checkpointed together
CLIPS_DIR = "clips"
FLOW_COLUMNS = tuple(f"flow_{name}" for name in STAT_COLUMNS)
MANIFEST_COLUMNS = [
    "id",
    "clip_path",
    "sha256",
    "video_id",
    "clip_index",
    "url",
    "start",
    "end",
    "short_caption",
    "matching_score",
    "source_path",
    "source_frames",
    "source_height",
    "source_width",
    "source_fps",
    "frames",
    "height",
    "width",
    "fps",
    "sharpness",
    "flow_mean_magnitude",
    *FLOW_COLUMNS,
    "flow_pairs",
]


def _within(path: Path, root: Path) -> str:
    """`path` relative to `root` when inside it (portable provenance), else absolute."""
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(path.resolve())


def normalise(frames: np.ndarray, count: int, height: int, width: int) -> np.ndarray:
    """`count` frames at regular intervals over the clip, resized to height x width (INTER_AREA)."""
    picked = frames[sample_frame_indices(len(frames), count)]
    if picked.shape[1:3] == (height, width):
        return np.ascontiguousarray(picked)
    return np.stack([cv2.resize(f, (width, height), interpolation=cv2.INTER_AREA) for f in picked])


def sharpness(frames: np.ndarray) -> float:
    """Mean over frames of the variance of the Laplacian of the grey frame (higher is sharper)."""
    grey = [cv2.cvtColor(np.ascontiguousarray(f), cv2.COLOR_RGB2GRAY) for f in frames]
    return float(np.mean([cv2.Laplacian(g, cv2.CV_64F).var() for g in grey]))


def process_clip(clip: PandaClip, root: Path, output_dir: Path, params: Params) -> dict:
    """Filter one clip and write its normalised version; a kept record or a reject with the reason."""
    from vidprior.flow import video_flow_statistics

    cfg = params.udpdiff.panda
    try:
        source, source_fps = read_video(clip.source_path)
    except MediaError as exc:
        return rejected(clip.id, "unreadable_video", str(exc))
    n, h, w = source.shape[:3]
    if h < cfg.min_source_height or w < cfg.min_source_width:
        detail = f"{w}x{h} < {cfg.min_source_width}x{cfg.min_source_height} (width x height)"
        return rejected(clip.id, "source_too_small", detail)
    if n < cfg.frames:
        return rejected(clip.id, "too_few_frames", f"{n} frame(s) < {cfg.frames}")
    frames = normalise(source, cfg.frames, cfg.height, cfg.width)
    sharp = sharpness(frames)
    if not sharp >= cfg.min_sharpness:
        return rejected(clip.id, "blurry", f"sharpness {sharp:.4g} < {cfg.min_sharpness:g}")
    size = (cfg.flow.analysis_height, cfg.flow.analysis_width)
    stats = video_flow_statistics(frames, cfg.flow.backend, size)
    values = {f"flow_{name}": float(getattr(stats, name)) for name in STAT_COLUMNS}
    bad = [name for name, value in values.items() if not np.isfinite(value)]
    if bad:
        return rejected(clip.id, "non_finite_statistic", ", ".join(f"{k}={values[k]}" for k in bad))
    motion = values["flow_mean_mag"]
    if motion < cfg.min_motion:
        return rejected(clip.id, "too_static", f"mean flow {motion:.4g} px < {cfg.min_motion:g}")
    if motion > cfg.max_motion:
        return rejected(clip.id, "too_fast", f"mean flow {motion:.4g} px > {cfg.max_motion:g}")

    relative = f"{CLIPS_DIR}/{clip.id}.mp4"
    write_video(output_dir / relative, frames, cfg.fps)
    return ok(
        clip.id,
        clip_path=relative,
        sha256=file_sha256(output_dir / relative),
        video_id=clip.video_id,
        clip_index=clip.clip_index,
        url=clip.url,
        start=clip.start,
        end=clip.end,
        short_caption=clip.caption,
        matching_score=clip.matching_score,
        source_path=_within(clip.source_path, root),
        source_frames=int(n),
        source_height=int(h),
        source_width=int(w),
        source_fps=float(source_fps),
        frames=cfg.frames,
        height=cfg.height,
        width=cfg.width,
        fps=cfg.fps,
        sharpness=sharp,
        flow_mean_magnitude=motion,
        **values,
        flow_pairs=int(stats.n_pairs),
    )


def clip_items(inputs: Sequence[Path | str] | None) -> pd.DataFrame:
    """(id, clip_path) of every clip of a `udpdiff.clips` output (inputs[0]), for the labelling stages."""
    from vidprior.io.manifest import MANIFEST
    from vidprior.unic.stage_inputs import read_input_manifest

    manifest = read_input_manifest(inputs, 0, STAGE, required=["clip_path"])
    bad = [
        str(i)
        for i, p in zip(manifest["id"], manifest["clip_path"], strict=True)
        if not isinstance(p, str) or not p.strip()
    ]
    if bad:
        raise ValueError(
            f"{input_dir(inputs, 0, STAGE) / MANIFEST}: column 'clip_path' must hold the clip file "
            f"(relative to the clips directory) for every row; empty or not a string for id(s) {bad[:5]} "
            f"({len(bad)} in all)"
        )
    return pd.DataFrame({"id": manifest["id"].astype(str), "clip_path": list(manifest["clip_path"])})


def run(params: Params, inputs: Sequence[Path | str] | None, output_dir: Path) -> dict[str, float]:
    """inputs: [Panda-70M source dir]. Writes clips/{id}.mp4, manifest.parquet and rejects.parquet."""
    cfg = params.udpdiff.panda
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    root = input_dir(inputs, 0, "Panda-70M source")
    read = read_panda_csv(
        root / cfg.csv,
        root / cfg.clips_dir,
        min_matching_score=cfg.min_matching_score,
        max_clips=cfg.max_clips,
    )
    by_id = {clip.id: clip for clip in read.clips}
    items = pd.DataFrame({"id": list(by_id), "source": [str(c.source_path) for c in by_id.values()]})

    result = run_batches(
        items,
        output_dir=output_dir,
        name="clips",
        # Source files are named by id, not hashed (70M of them); a changed file under the same
        # name is not noticed by a resumed run, as with the other stages' media.
        config_fingerprint=fingerprint(STAGE, cfg.model_dump(mode="json"), str(root.resolve())),
        batch_size=BATCH,
        process=lambda batch: [process_clip(by_id[i], root, output_dir, params) for i in batch["id"]],
    )
    kept, rejects = kept_table(result.records, STAGE, MANIFEST_COLUMNS)
    reader_rejects = pd.DataFrame(
        [{"id": r["id"], "stage": STAGE, "reason": r["reason"], "detail": r["detail"]} for r in read.rejects],
        columns=rejects.columns,
    )
    rejects = pd.concat([reader_rejects, rejects], ignore_index=True) if len(reader_rejects) else rejects
    manifest = kept[MANIFEST_COLUMNS]
    manifest = manifest.assign(
        flow_backend=cfg.flow.backend,
        analysis_height=cfg.flow.analysis_height,
        analysis_width=cfg.flow.analysis_width,
        source_csv=cfg.csv,
        seed=params.seed,
    )
    metrics = finish_stage(
        manifest,
        rejects,
        stage=STAGE,
        items=read.items,
        output_dir=output_dir,
        reused_batches=result.reused_batches,
        started=started,
    )
    metrics["capped"] = int(read.capped)
    if len(manifest):
        metrics["median_flow_mean_magnitude"] = float(manifest["flow_mean_magnitude"].median())
        metrics["median_sharpness"] = float(manifest["sharpness"].median())
    return metrics
