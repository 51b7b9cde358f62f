"""Stage `udpdiff.evaluate`: the UDPDiff paper's comparison, base CogVideoX vs UDPDiff per task.

Inputs: [udpdiff.sample output, udpdiff.dataset output, udpdiff.register output (model.json)].
The base CogVideoX (`models.cogvideox`, no fine-tune) samples every clip the samples manifest names,
on the SAME prompt and seed and with the same sampler settings as `udpdiff.sample` recorded
(scheduler, steps, frames, size, guidance), through the one pipeline of `udpdiff.sampler`
(`load_base` + `sample_base`). Every video, the base model's and each UDPDiff sample's RGB half, is
scored as saved with `vidprior.evaluate.score_videos` (`udpdiff.evaluate.metrics`: the paper's
subject consistency, background consistency, motion smoothness); FVD is measured per set against the
dataset's first `max_reference_clips` clips. The depth samples' decoded depth (`dense/{id}.npz`
`depth`) is compared with the dataset's depth label of the same clip (`depth_metrics`, after
resizing the sample to the label's frames and size when they differ; alignment
`evaluate.depth_align`).

Groups: `segmentation` and `depth` (the tasks). A group's baseline is the base model on the same
clips as the group's kept samples, so every comparison is paired. Output: `videos/{id}.mp4` (base
samples `{clip id}.cogvideox`, UDPDiff samples linked from the input under their ids),
manifest.parquet, rejects.parquet (`clip_not_in_dataset`, `unreadable_video`, `unreadable_depth`,
`unreadable_depth_label`, `non_finite_sample`), table.csv / table.md (the paper's rows with SC/BC/MS
x100 and FVD, and the depth row), evaluation.json (`<task>.<metric>` keys), plots/<metric>.png, and
the keys as tags of the registered version. A killed run resumes at its first unfinished batch.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from vidprior.config import Params
from vidprior.evaluate import report
from vidprior.evaluate.report import Column, Row
from vidprior.io.media import MediaError, read_video, write_video
from vidprior.registry.evaluation_tags import (
    check_registered,
    read_registered,
    tag_run_from_evaluation,
    tag_version,
)
from vidprior.udpdiff.dataset import link_or_copy
from vidprior.unic.generation import (
    fingerprint,
    finish_stage,
    kept_table,
    ok,
    quiet_library_logs,
    rejected,
    run_batches,
)
from vidprior.unic.stage_inputs import input_dir, read_input_manifest

STAGE = "udpdiff.evaluate"
ARTIFACTS = report.ARTIFACTS
VIDEOS_DIR = "videos"
BASE_ID_SUFFIX = "cogvideox"
BASE_METHOD = "CogVideoX"
TASK_METHODS = {"segmentation": "UDPDiff (seg)", "depth": "UDPDiff (depth)"}
# UDPDiff paper, comparison with CogVideoX 5B (VBench subject / background consistency and motion
# smoothness, printed x100, and FVD), and its depth against DepthCrafter pseudo ground truth on
# 1,024 clips. Kept as printed; `PAPER` holds them at the metrics' own scale.
PAPER_PRINTED = {
    "cogvideox": {
        "subject_consistency": 94.57,
        "background_consistency": 95.80,
        "motion_smoothness": 97.67,
        "fvd": 343.92,
    },
    "segmentation": {
        "subject_consistency": 95.21,
        "background_consistency": 95.69,
        "motion_smoothness": 98.24,
        "fvd": 316.76,
    },
    "depth": {
        "subject_consistency": 97.07,
        "background_consistency": 96.89,
        "motion_smoothness": 99.23,
        "fvd": 302.55,
        "depth_delta1": 0.4176,
        "depth_rmse": 0.1634,
    },
}
PERCENT_METRICS = ("subject_consistency", "background_consistency", "motion_smoothness")
PAPER = {
    group: {k: v / 100 if k in PERCENT_METRICS else v for k, v in values.items()}
    for group, values in PAPER_PRINTED.items()
}
LABELS = {
    "subject_consistency": "SC",
    "background_consistency": "BC",
    "motion_smoothness": "MS",
    "dynamic_degree": "Dynamic Degree",
    "aesthetic_quality": "Aesthetic",
    "imaging_quality": "Imaging",
    "clip_score": "CLIP score",
}
DEPTH_METRICS = ("depth_delta1", "depth_rmse")
SAMPLE_COLUMNS = ["clip_id", "prompt", "task", "seed", "video_path", "dense_values_path"]
SETTINGS = ["scheduler", "steps", "frames", "height", "width", "guidance_scale", "fps"]
MANIFEST_COLUMNS = [
    "id",
    "clip_id",
    "prompt",
    "seed",
    "variant",
    "task",
    "method",
    "video_path",
    "source_video_path",
    "fps",
    "seconds",
]


def _stamp(path: Path) -> str:
    # Size and mtime: enough to notice a re-sampled input on resume without hashing every video.
    return f"{path.stat().st_size}:{path.stat().st_mtime_ns}" if path.is_file() else "missing"


def sampler_settings(samples: pd.DataFrame, where: Path) -> dict:
    """The one set of sampler settings the samples were made with (the base model gets the same)."""
    missing = [c for c in SETTINGS if c not in samples.columns]
    if missing:
        raise ValueError(f"{where}: the samples manifest lacks {missing} (written by udpdiff.sample)")
    distinct = samples[SETTINGS].drop_duplicates()
    if len(distinct) != 1:
        raise ValueError(
            f"{where}: the samples were made with {len(distinct)} sampler settings "
            f"({distinct.to_dict('records')}); the base model can only match one"
        )
    record = distinct.iloc[0].to_dict()
    return {
        k: (str(v) if k == "scheduler" else float(v) if k == "guidance_scale" else int(v))
        for k, v in record.items()
    }


def evaluation_items(samples: pd.DataFrame, samples_dir: Path) -> pd.DataFrame:
    """A base-model item per clip (its prompt and seed) and a scoring item per UDPDiff sample."""
    clips = samples[["clip_id", "prompt", "seed"]].drop_duplicates()
    repeated = clips["clip_id"][clips["clip_id"].duplicated()].unique()
    if len(repeated):
        raise ValueError(
            f"{samples_dir}: clip(s) {list(repeated[:5])} were sampled with different prompts or seeds "
            "across tasks; the base model's comparison needs one prompt and seed per clip"
        )
    base = pd.DataFrame(
        {
            "id": [f"{c}.{BASE_ID_SUFFIX}" for c in clips["clip_id"]],
            "clip_id": clips["clip_id"].astype(str).tolist(),
            "prompt": clips["prompt"].astype(str).tolist(),
            "seed": clips["seed"].astype(int).tolist(),
            "variant": "baseline",
            "task": "",
            "source_video_path": "",
            "dense_values_path": "",
            "source_stamp": "",
        }
    )
    candidates = pd.DataFrame(
        {
            "id": samples["id"].astype(str).tolist(),
            "clip_id": samples["clip_id"].astype(str).tolist(),
            "prompt": samples["prompt"].astype(str).tolist(),
            "seed": samples["seed"].astype(int).tolist(),
            "variant": "candidate",
            "task": samples["task"].astype(str).tolist(),
            "source_video_path": samples["video_path"].astype(str).tolist(),
            "dense_values_path": samples["dense_values_path"].fillna("").astype(str).tolist(),
            "source_stamp": [
                _stamp(samples_dir / v) + "|" + (_stamp(samples_dir / d) if isinstance(d, str) and d else "")
                for v, d in zip(samples["video_path"], samples["dense_values_path"], strict=True)
            ],
        }
    )
    return pd.concat([base, candidates], ignore_index=True)


def _load_depth(path: Path) -> np.ndarray:
    try:
        with np.load(path, allow_pickle=False) as values:
            depth = values["depth"]
    except (OSError, ValueError, KeyError, EOFError) as exc:
        raise MediaError(f"{path}: no readable 'depth' array ({exc})") from None
    if depth.ndim != 3 or depth.dtype.kind != "f":
        raise MediaError(f"{path}: 'depth' is {depth.dtype} {depth.shape}; expected float [T, H, W]")
    return depth


def resize_depth(depth: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """`depth` [T, H, W] at `shape`: nearest frames in time, bilinear in space (values stay in range)."""
    import torch

    frames, height, width = shape
    if depth.shape == tuple(shape):
        return depth
    index = np.round(np.linspace(0, depth.shape[0] - 1, frames)).astype(int)
    picked = torch.from_numpy(np.ascontiguousarray(depth[index], dtype=np.float32))[:, None]
    resized = torch.nn.functional.interpolate(
        picked, size=(height, width), mode="bilinear", align_corners=False
    )
    return resized[:, 0].numpy()


class _Evaluator:
    """Samples the base model and scores a batch; the base model loads on first use."""

    def __init__(self, params: Params, settings: dict, dirs: dict[str, Path], labels: dict[str, str]):
        self.params, self.settings, self.dirs, self.labels = params, settings, dirs, labels
        self.model = None

    def __call__(self, batch: pd.DataFrame) -> list[dict]:
        from vidprior.evaluate import depth_metrics, score_videos

        records, ready = [], []  # ready: (row, frames, fps, extra fields)
        base = batch[batch["variant"] == "baseline"]
        if len(base):
            generated = self._sample_base(base)
            for row in base.itertuples():
                item = generated[row.id]
                if isinstance(item, dict):
                    records.append(item)
                else:
                    ready.append((row, *item))
        for row in batch[batch["variant"] == "candidate"].itertuples():
            if row.clip_id not in self.labels:
                records.append(
                    rejected(row.id, "clip_not_in_dataset", f"clip {row.clip_id} is not in the dataset input")
                )
                continue
            source = self.dirs["samples"] / row.source_video_path
            try:
                frames, fps = read_video(source)
            except MediaError as exc:
                records.append(rejected(row.id, "unreadable_video", str(exc)))
                continue
            extra = {}
            if row.task == "depth":
                try:
                    predicted = _load_depth(self.dirs["samples"] / row.dense_values_path)
                except MediaError as exc:
                    records.append(rejected(row.id, "unreadable_depth", str(exc)))
                    continue
                try:
                    reference = _load_depth(self.dirs["dataset"] / self.labels[row.clip_id])
                except MediaError as exc:
                    records.append(rejected(row.id, "unreadable_depth_label", str(exc)))
                    continue
                extra = depth_metrics(
                    resize_depth(predicted, reference.shape),
                    reference,
                    align=self.params.evaluate.depth_align,
                )
            link_or_copy(source, self.dirs["output"] / VIDEOS_DIR / f"{row.id}.mp4")
            ready.append((row, frames, fps, {"seconds": float("nan"), **extra}))
        if ready:
            metrics = self.params.udpdiff.evaluate.metrics
            scores = score_videos(
                [r[1] for r in ready],
                [float(r[2]) for r in ready],
                [r[0].prompt for r in ready],
                metrics,
                self.params,
            )
            for k, (row, _, fps, extra) in enumerate(ready):
                fields = {m: float(scores[m].iloc[k]) for m in metrics}
                for name in DEPTH_METRICS:
                    fields[name] = float(extra.get(name, float("nan")))
                records.append(
                    ok(
                        row.id,
                        clip_id=row.clip_id,
                        prompt=row.prompt,
                        seed=int(row.seed),
                        variant=row.variant,
                        task=row.task,
                        method=BASE_METHOD if row.variant == "baseline" else TASK_METHODS[row.task],
                        video_path=f"{VIDEOS_DIR}/{row.id}.mp4",
                        source_video_path=row.source_video_path,
                        fps=float(fps),
                        seconds=float(extra["seconds"]),
                        **fields,
                    )
                )
        return records

    def _sample_base(self, base: pd.DataFrame) -> dict:
        """id -> (frames as saved, fps, {"seconds"}) or a reject record."""
        from vidprior.udpdiff.sampler import load_base, sample_base

        if self.model is None:
            self.model = load_base(self.params.models.cogvideox)
        s = self.settings
        out = sample_base(
            self.model,
            base["prompt"].tolist(),
            base["seed"].tolist(),
            steps=s["steps"],
            frames=s["frames"],
            height=s["height"],
            width=s["width"],
            guidance_scale=s["guidance_scale"],
            scheduler=s["scheduler"],
        )
        if out.scheduler != s["scheduler"]:
            raise AssertionError(
                f"the base model sampled with {out.scheduler}, the samples with {s['scheduler']}"
            )
        seconds = out.seconds / len(base)
        result = {}
        for k, row in enumerate(base.itertuples()):
            if not out.finite[k]:
                result[row.id] = rejected(
                    row.id, "non_finite_sample", "the final latent has NaN or inf values"
                )
                continue
            path = write_video(self.dirs["output"] / VIDEOS_DIR / f"{row.id}.mp4", out.videos[k], s["fps"])
            # Scored as saved, like the UDPDiff samples it is compared with.
            frames, fps = read_video(path)
            result[row.id] = (frames, fps, {"seconds": seconds})
        return result


def _mean(values: pd.Series) -> float:
    values = values.astype(float)
    return float(values.mean()) if values.notna().any() else float("nan")


class _SetFvd:
    """FVD of sets of this stage's videos against the reference clips.

    Features are computed once per video, streaming (a paper-scale reference set does not fit in
    memory as frames), so the five sets (base model overall and per task, each task) cost one pass.
    """

    def __init__(self, params: Params, output_dir: Path, reference_paths: list[Path]):
        from vidprior.evaluate.fvd import video_features

        self.params, self.output_dir = params, output_dir
        self.reference = [video_features([_read_reference(p)], params)[0] for p in reference_paths]
        self.features: dict[str, np.ndarray] = {}

    def _feature(self, video_path: str) -> np.ndarray:
        from vidprior.evaluate.fvd import video_features

        if video_path not in self.features:
            frames, _ = read_video(self.output_dir / video_path)
            self.features[video_path] = video_features([frames], self.params)[0]
        return self.features[video_path]

    def __call__(self, rows: pd.DataFrame) -> float:
        from vidprior.evaluate.fvd import features_fvd

        if not len(rows) or not self.reference:
            return math.nan
        generated = np.stack([self._feature(p) for p in rows["video_path"]])
        return features_fvd(generated, np.stack(self.reference), self.params.evaluate.fvd.eps)


def _read_reference(path: Path) -> np.ndarray:
    try:
        return read_video(path)[0]
    except MediaError as exc:
        raise ValueError(f"reference clip unreadable ({exc}); is the dataset input complete?") from None


def summarize(
    manifest: pd.DataFrame, params: Params, set_fvd: _SetFvd | None
) -> tuple[dict, dict, list[Row]]:
    """(candidate, baseline, table rows). A task's baseline: the base model on that task's clips."""
    metrics = params.udpdiff.evaluate.metrics
    base = manifest[manifest["variant"] == "baseline"]
    candidate, baseline = {}, {}
    measured_of = {}

    def measure(rows: pd.DataFrame) -> dict[str, float]:
        values = {m: _mean(rows[m]) for m in metrics}
        if set_fvd is not None:
            values["fvd"] = set_fvd(rows)
        return values

    measured_of["cogvideox"] = measure(base)
    for task in TASK_METHODS:
        rows = manifest[(manifest["variant"] == "candidate") & (manifest["task"] == task)]
        if not len(rows):
            continue
        values = measure(rows)
        if task == "depth":
            values.update({m: _mean(rows[m]) for m in DEPTH_METRICS})
        measured_of[task] = values
        candidate.update({f"{task}.{k}": v for k, v in values.items()})
        paired = base[base["clip_id"].isin(rows["clip_id"])]
        baseline.update({f"{task}.{k}": v for k, v in measure(paired).items()})
    rows_out = [
        Row(BASE_METHOD, "", "baseline", len(base), measured_of["cogvideox"], PAPER["cogvideox"], "CogVideoX")
    ]
    for task, method in TASK_METHODS.items():
        if task in measured_of:
            count = int(((manifest["variant"] == "candidate") & (manifest["task"] == task)).sum())
            rows_out.append(Row(method, task, "candidate", count, measured_of[task], PAPER[task], method))
    return candidate, baseline, rows_out


def reference_paths(dataset: pd.DataFrame, dataset_dir: Path, limit: int) -> list[Path]:
    """FVD's reference set: the dataset's first `limit` clips by id."""
    clips = dataset.sort_values("id", kind="stable").head(limit)
    return [dataset_dir / p for p in clips["clip_path"]]


def run(params: Params, inputs: Sequence[Path | str] | None, output_dir: Path) -> dict[str, float]:
    """inputs: [samples dir, dataset dir, registered dir]. Writes videos/, the tables, evaluation.json."""
    cfg = params.udpdiff.evaluate
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    samples_dir = input_dir(inputs, 0, "udpdiff.sample")
    samples = read_input_manifest(inputs, 0, "udpdiff.sample", SAMPLE_COLUMNS + ["base_model"])
    dataset_dir = input_dir(inputs, 1, "udpdiff.dataset")
    dataset = read_input_manifest(inputs, 1, "udpdiff.dataset", ["clip_path", "depth_values_path"])
    name, version = read_registered(input_dir(inputs, 2, "udpdiff.register"))
    check_registered(name, version)
    spec = params.models.cogvideox
    bases = sorted(set(samples["base_model"].astype(str)))
    if bases and bases != [spec.model_id]:
        raise ValueError(
            f"{samples_dir}: the samples were fine-tuned from {bases}, but models.cogvideox is "
            f"{spec.model_id}; the comparison needs the samples' own base model"
        )
    settings = sampler_settings(samples, samples_dir) if len(samples) else {}
    items = evaluation_items(samples, samples_dir)
    labels = dict(zip(dataset["id"].astype(str), dataset["depth_values_path"].astype(str), strict=True))
    quiet_library_logs()

    section = params.model_dump(mode="json")
    result = run_batches(
        items,
        output_dir=output_dir,
        name="videos",
        config_fingerprint=fingerprint(
            STAGE,
            section["udpdiff"]["evaluate"],
            section["models"]["cogvideox"],
            section.get("evaluate"),
            settings,
        ),
        batch_size=cfg.batch_size,
        process=_Evaluator(
            params, settings, {"samples": samples_dir, "dataset": dataset_dir, "output": output_dir}, labels
        ),
    )
    manifest, rejects = kept_table(
        result.records, STAGE, MANIFEST_COLUMNS + list(cfg.metrics) + list(DEPTH_METRICS)
    )
    metrics = finish_stage(
        manifest,
        rejects,
        stage=STAGE,
        items=len(items),
        output_dir=output_dir,
        reused_batches=result.reused_batches,
        started=started,
        noun="videos",
    )

    set_fvd = (
        _SetFvd(params, output_dir, reference_paths(dataset, dataset_dir, cfg.max_reference_clips))
        if cfg.fvd
        else None
    )
    candidate, baseline, rows = summarize(manifest, params, set_fvd)
    columns = [Column(m, LABELS[m], 100.0 if m in PERCENT_METRICS else 1.0, 2) for m in cfg.metrics]
    if cfg.fvd:
        columns.append(Column("fvd", "FVD", 1.0, 2))
    depth_columns = [Column("depth_delta1", "delta1"), Column("depth_rmse", "RMSE")]
    # One table (the depth columns filled on the depth row); table.md prints the paper's two.
    table = report.table_frame(rows, columns + depth_columns)
    depth_rows = [r for r in rows if r.group == "depth"]
    reference_count = len(set_fvd.reference) if set_fvd is not None else 0
    clips = int(items["variant"].eq("baseline").sum())
    notes = [
        f"{clips} clips; the base model samples each clip's prompt on the UDPDiff samples' seed with the "
        "same sampler settings "
        f"({', '.join(f'{k} {v}' for k, v in settings.items())}).",
        "SC/BC/MS x100 as the paper prints them. Paper: UDPDiff vs CogVideoX 5B (VBench, FVD).",
        f"FVD against the dataset's first {reference_count} clips." if cfg.fvd else "FVD not measured.",
        f"Model: {name} version {version}; base {spec.model_id}; profile {params.profile}.",
    ]
    depth_notes = [
        "Decoded depth of the depth samples vs the dataset's depth label of the same clip "
        f"(alignment {params.evaluate.depth_align}). Paper: vs DepthCrafter pseudo ground truth, 1,024 clips."
    ]
    text = report.markdown(table, columns, "UDPDiff vs CogVideoX", notes)
    if depth_rows:
        depth = table[table["group"] == "depth"]
        text += "\n" + report.markdown(depth, depth_columns, "UDPDiff depth", depth_notes)
    report.write_tables(output_dir, [table], text)
    report.write_evaluation(
        output_dir,
        model=name,
        version=version,
        candidate=candidate,
        baseline=baseline,
        paper={
            "candidate": {f"{t}.{k}": v for t in TASK_METHODS for k, v in PAPER[t].items()},
            "baseline": {f"{t}.{k}": v for t in TASK_METHODS for k, v in PAPER["cogvideox"].items()},
        },
        tables=[table],
    )
    report.bar_charts(output_dir, rows, columns + (depth_columns if depth_rows else []))
    tag_version(name, version, candidate, baseline)
    metrics.update(report.flat_metrics(candidate, baseline))
    base_rows = manifest[manifest["variant"] == "baseline"]
    metrics["clips"] = clips
    if len(base_rows) and base_rows["seconds"].notna().any():
        metrics["mean_base_sample_seconds"] = float(base_rows["seconds"].mean())
    metrics["stage_seconds"] = round(time.perf_counter() - started, 4)
    return metrics


def after_tracked(run_id: str, output_dir: Path) -> None:
    """`eval.run_id` on the evaluated version, once `vidprior.stages.execute` has logged the run."""
    tag_run_from_evaluation(run_id, output_dir)
