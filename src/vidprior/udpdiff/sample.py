"""Stage `udpdiff.sample`: the fine-tuned UDPDiff generates a video and its dense map per prompt and task.

Inputs: [udpdiff.train output (udpdiff.json + transformer/), udpdiff.dataset output]. The prompts are
the long captions of the dataset's first `max_prompts` clips (id order); each is sampled once per task
in `tasks`, with the SAME seed for every task (`item_seed(seed, STAGE, clip id)`), as the paper
compares the tasks on the same seeds. A sample's id is `{clip id}.{task}`.

Per sample: `videos/{id}.mp4` (the RGB half), `dense/{id}.mp4` (the dense half as decoded RGB,
lossless), `dense/{id}.npz` (`ids` int32 [T, H, W] for segmentation, entity colours found in the
generated clip by `vidprior.udpdiff.entity_colours`; `depth` float32 [T, H, W] in [0, 1] for depth,
`pixelplanes.decode_depth`). Rejects: `empty_prompt` (a clip without a long caption),
`non_finite_sample` (the final latent overflowed).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from vidprior.config import Params
from vidprior.io.atomic import atomic_path
from vidprior.io.media import write_video
from vidprior.seeding import item_seed
from vidprior.unic.generation import (
    fingerprint,
    finish_stage,
    ok,
    quiet_library_logs,
    rejected,
    run_batches,
    split_records,
)
from vidprior.unic.stage_inputs import input_dir, read_input_manifest

STAGE = "udpdiff.sample"
VIDEOS_DIR = "videos"
DENSE_DIR = "dense"
BACKEND = "diffusers"
MANIFEST_COLUMNS = [
    "id",
    "clip_id",
    "prompt",
    "task",
    "task_id",
    "seed",
    "video_path",
    "dense_path",
    "dense_values_path",
    "entities",
    "palette",
    "unknown_fraction",
    "depth_min",
    "depth_max",
    "scheduler",
    "steps",
    "frames",
    "height",
    "width",
    "fps",
    "guidance_scale",
    "seconds",
]


def sample_items(dataset: pd.DataFrame, params: Params) -> pd.DataFrame:
    """One row per (clip, task) of the first `max_prompts` clips: id, clip id, prompt, task, seed."""
    cfg = params.udpdiff.sample
    clips = dataset.sort_values("id", kind="stable").head(cfg.max_prompts)
    rows = [
        {
            "id": f"{clip_id}.{task}",
            "clip_id": clip_id,
            "prompt": "" if pd.isna(caption) else str(caption).strip(),
            "task": task,
            "seed": item_seed(params.seed, STAGE, clip_id),
        }
        for clip_id, caption in zip(clips["id"], clips["long_caption"], strict=True)
        for task in cfg.tasks
    ]
    return pd.DataFrame(rows, columns=["id", "clip_id", "prompt", "task", "seed"])


def decode_dense(
    task: str, rgb: np.ndarray, *, min_entity_fraction: float = 1e-3, depth_denoise: str = "none"
) -> tuple[dict[str, np.ndarray], dict]:
    """The generated dense half decoded ({"ids"} or {"depth"}) and its manifest fields.

    Segmentation: the entity colours are found in the clip (`entity_colours`), since a generated
    video's palette is the model's own; depth: nearest Spectral sample (`pixelplanes.decode_depth`).
    """
    from vidprior.udpdiff.entity_colours import decode_generated_segmentation
    from vidprior.udpdiff.pixelplanes import UNKNOWN_ID, decode_depth, palette_to_json

    if task == "segmentation":
        ids, palette = decode_generated_segmentation(rgb, min_fraction=min_entity_fraction)
        fields = {
            "entities": len(palette) - 1,
            "palette": palette_to_json(palette),
            "unknown_fraction": float(np.mean(ids == UNKNOWN_ID)),
        }
        return {"ids": ids}, fields
    if task == "depth":
        depth = decode_depth(rgb, denoise=depth_denoise)
        return {"depth": depth}, {"depth_min": float(depth.min()), "depth_max": float(depth.max())}
    raise ValueError(f"unknown task {task!r}; expected 'segmentation' or 'depth'")


def _write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez_compressed(handle, **arrays)


class _Sampler:
    """Loads the model on first use, so a fully resumed run never loads it."""

    def __init__(self, train_dir: Path, params: Params, output_dir: Path):
        self.train_dir, self.params, self.output_dir = train_dir, params, output_dir
        self.model = None

    def __call__(self, batch: pd.DataFrame) -> list[dict]:
        records = [
            rejected(row.id, "empty_prompt", f"clip {row.clip_id} has no long caption")
            for row in batch.itertuples()
            if not row.prompt
        ]
        todo = batch[batch["prompt"] != ""]
        if len(todo):
            records += self._sample(todo)
        return records

    def _sample(self, todo: pd.DataFrame) -> list[dict]:
        from vidprior.udpdiff.sampler import generate, load_udpdiff

        cfg = self.params.udpdiff.sample
        if self.model is None:
            self.model = load_udpdiff(self.train_dir)
        out = generate(
            self.model,
            todo["prompt"].tolist(),
            todo["task"].tolist(),
            todo["seed"].tolist(),
            steps=cfg.steps,
            frames=cfg.frames,
            height=cfg.height,
            width=cfg.width,
            guidance_scale=cfg.guidance_scale,
            scheduler=cfg.scheduler,
        )
        seconds = out.seconds / len(todo)
        records = []
        for k, row in enumerate(todo.itertuples()):
            if not out.finite[k]:
                records.append(
                    rejected(row.id, "non_finite_sample", "the final latent has NaN or inf values")
                )
                continue
            video_path = f"{VIDEOS_DIR}/{row.id}.mp4"
            dense_path = f"{DENSE_DIR}/{row.id}.mp4"
            values_path = f"{DENSE_DIR}/{row.id}.npz"
            write_video(self.output_dir / video_path, out.videos[k], cfg.fps)
            write_video(self.output_dir / dense_path, out.dense[k], cfg.fps, lossless=True)
            values, fields = decode_dense(
                row.task,
                out.dense[k],
                min_entity_fraction=self.params.udpdiff.sample.min_entity_fraction,
                depth_denoise=self.params.udpdiff.sample.depth_denoise,
            )
            _write_npz(self.output_dir / values_path, values)
            video = out.videos[k]
            records.append(
                ok(
                    row.id,
                    clip_id=row.clip_id,
                    prompt=row.prompt,
                    task=row.task,
                    task_id=int(self.model.tasks[row.task]),
                    seed=int(row.seed),
                    video_path=video_path,
                    dense_path=dense_path,
                    dense_values_path=values_path,
                    **fields,
                    scheduler=out.scheduler,
                    steps=cfg.steps,
                    frames=int(video.shape[0]),
                    height=int(video.shape[1]),
                    width=int(video.shape[2]),
                    fps=cfg.fps,
                    guidance_scale=cfg.guidance_scale,
                    seconds=seconds,
                )
            )
        return records


def _transformer_stamp(transformer_dir: Path) -> list:
    # Name, size and mtime rather than a hash: a retrained 5B transformer is 11 GB to read.
    return [
        [p.relative_to(transformer_dir).as_posix(), p.stat().st_size, p.stat().st_mtime_ns]
        for p in sorted(transformer_dir.rglob("*"))
        if p.is_file()
    ]


def run(params: Params, inputs: Sequence[Path | str] | None, output_dir: Path) -> dict[str, float]:
    """inputs: [train dir, dataset dir]. Writes videos/, dense/, manifest.parquet and rejects.parquet."""
    from vidprior.udpdiff.sampler import read_train_config

    cfg = params.udpdiff.sample
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    train_dir = input_dir(inputs, 0, "udpdiff.train")
    train = read_train_config(train_dir)
    unknown = sorted(set(cfg.tasks) - set(train["tasks"]))
    if unknown:
        raise ValueError(
            f"udpdiff.sample.tasks {unknown} are not tasks of {train_dir / 'udpdiff.json'} "
            f"(it has {sorted(train['tasks'])})"
        )
    dataset = read_input_manifest(inputs, 1, "udpdiff.dataset", ["long_caption"])
    items = sample_items(dataset, params)
    quiet_library_logs()

    base = train["base_model"]
    result = run_batches(
        items,
        output_dir=output_dir,
        name="samples",
        config_fingerprint=fingerprint(
            STAGE,
            cfg.model_dump(mode="json"),
            {**train, "base_model": base.model_dump(mode="json")},
            _transformer_stamp(train_dir / train["transformer_dir"]),
        ),
        batch_size=cfg.batch_size,
        process=_Sampler(train_dir, params, output_dir),
    )
    kept, rejects = split_records(result.records, STAGE)
    # reindex: a depth-only run has no segmentation columns (entities, palette) in its records.
    manifest = kept.reindex(columns=MANIFEST_COLUMNS)
    manifest = manifest.assign(
        entities=manifest["entities"].astype("Int64"),
        base_model=base.model_id,
        train_steps=train.get("steps"),
        backend=BACKEND,
    )
    metrics = finish_stage(
        manifest,
        rejects,
        stage=STAGE,
        items=len(items),
        output_dir=output_dir,
        reused_batches=result.reused_batches,
        started=started,
        noun="samples",
    )
    if len(manifest):
        metrics["mean_sample_seconds"] = float(manifest["seconds"].mean())
    seg = manifest[manifest["task"] == "segmentation"]
    if len(seg):
        metrics["entities_found_mean"] = float(seg["entities"].astype(float).mean())
        metrics["unknown_fraction_mean"] = float(seg["unknown_fraction"].mean())
    depth = manifest[manifest["task"] == "depth"]
    if len(depth):
        metrics["depth_range_mean"] = float((depth["depth_max"] - depth["depth_min"]).mean())
    return metrics
