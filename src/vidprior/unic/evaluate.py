"""Stage `unic.evaluate`: Uni-C Table I, each video workflow with and without the classifier's guidance.

Inputs: [unic.train output (head.safetensors), unic.prompts output, unic.register output (model.json)].
The first `unic.evaluate.max_prompts` prompts are sampled by every workflow of
`unic.evaluate.workflows` twice, unguided (the paper's "SD->SVD" rows) and guided with the workflow's
lambda from the lambda table ("+ Uni-C"), with the SAME image and video seeds (`unic.sample`'s
seeds and generation code: with `unic.evaluate`'s size, steps and frames unset, as in the paper
profile, a prompt's video here is the one `unic.sample` makes for it; the tiny profile evaluates
smaller). The saved videos are scored with `vidprior.evaluate.score_videos` (`unic.evaluate.metrics`;
the paper's are dynamic degree, aesthetic and imaging quality), and each set's mean is compared with
Table I.

Output: `videos/{id}.mp4` (id `{workflow}.{prompt id}.{variant}`), manifest.parquet (one row per
video, a column per metric), rejects.parquet (`empty_prompt`), table.csv / table.md (Table I's rows,
measured next to the paper), evaluation.json (`<workflow>.<metric>` keys, e.g.
`sd_svd.dynamic_degree`: candidate = guided, baseline = unguided) and plots/<metric>.png. The same
keys are written as tags of the registered version (`vidprior.registry.evaluation_tags`).
A killed run resumes at its first unfinished batch of videos.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from vidprior.config import Params
from vidprior.evaluate import report
from vidprior.evaluate.report import Column, Row
from vidprior.io.media import file_sha256, read_video, write_video
from vidprior.registry.evaluation_tags import (
    check_registered,
    read_registered,
    tag_run_from_evaluation,
    tag_version,
)
from vidprior.unic.generation import (
    fingerprint,
    finish_stage,
    kept_table,
    ok,
    quiet_library_logs,
    rejected,
    run_batches,
)
from vidprior.unic.sample import build_video_model, generate, sample_seeds, table_lambda
from vidprior.unic.stage_inputs import input_dir, read_input_manifest

STAGE = "unic.evaluate"
ARTIFACTS = report.ARTIFACTS
VIDEOS_DIR = "videos"
BASELINE, GUIDED = "baseline", "guided"
METHODS = {"sd-svd": "SD->SVD", "sd-pia": "SD->PIA", "animatediff": "AnimateDiff"}
GUIDED_METHOD = "+ Uni-C"
# Uni-C Table I (VBench): each workflow unguided, then "+ Uni-C"; dynamic degree, aesthetic, imaging.
PAPER_TABLE_I = {
    "sd-svd": {BASELINE: (0.0250, 0.5978, 0.6859), GUIDED: (0.0500, 0.6113, 0.6921)},
    "sd-pia": {BASELINE: (0.0500, 0.6344, 0.7110), GUIDED: (0.1250, 0.6408, 0.7191)},
    "animatediff": {BASELINE: (0.0625, 0.6500, 0.7337), GUIDED: (0.1500, 0.6673, 0.7471)},
}
PAPER_METRICS = ("dynamic_degree", "aesthetic_quality", "imaging_quality")
LABELS = {
    "dynamic_degree": "Dynamic Degree",
    "aesthetic_quality": "Aesthetic",
    "imaging_quality": "Imaging",
    "subject_consistency": "SC",
    "background_consistency": "BC",
    "motion_smoothness": "MS",
    "clip_score": "CLIP score",
}
MANIFEST_COLUMNS = [
    "id",
    "prompt_id",
    "prompt",
    "workflow",
    "variant",
    "lambda_",
    "seed",
    "video_seed",
    "video_path",
    "video_sha256",
    "fps",
]


def paper_values(workflow: str, variant: str) -> dict[str, float]:
    return dict(zip(PAPER_METRICS, PAPER_TABLE_I[workflow][variant], strict=True))


def group_of(workflow: str) -> str:
    """The evaluation-key group of a workflow: sd-svd -> sd_svd."""
    return workflow.replace("-", "_")


def generation_params(params: Params) -> Params:
    """`params` with `unic.evaluate`'s size, steps and frames (where set) in unic.images / videos."""
    cfg = params.unic.evaluate
    size = {k: v for k, v in {"height": cfg.height, "width": cfg.width}.items() if v is not None}
    images = {**size, **({"steps": cfg.image_steps} if cfg.image_steps is not None else {})}
    videos = {**size, **({"steps": cfg.video_steps} if cfg.video_steps is not None else {})}
    videos.update({"frames": cfg.frames} if cfg.frames is not None else {})
    unic = params.unic.model_copy(
        update={
            "images": params.unic.images.model_copy(update=images),
            "videos": params.unic.videos.model_copy(update=videos),
        }
    )
    return params.model_copy(update={"unic": unic})


def evaluation_items(params: Params, prompts: pd.DataFrame) -> pd.DataFrame:
    """One row per (workflow, prompt, variant): the prompt's seeds are the same for every row."""
    cfg = params.unic.evaluate
    ids = prompts["id"].astype(str).tolist()
    image_seeds, video_seeds = sample_seeds(
        params, ids, prompts["seed"].tolist() if "seed" in prompts else None
    )
    texts = ["" if pd.isna(p) else str(p).strip() for p in prompts["prompt"]]
    rows = [
        {
            "id": f"{workflow}.{prompt_id}.{variant}",
            "prompt_id": prompt_id,
            "prompt": text,
            "workflow": workflow,
            "variant": variant,
            "lambda_": table_lambda(params, workflow) if variant == GUIDED else 0.0,
            "seed": image_seed,
            "video_seed": video_seed,
        }
        for workflow in cfg.workflows
        for prompt_id, text, image_seed, video_seed in zip(ids, texts, image_seeds, video_seeds, strict=True)
        for variant in (BASELINE, GUIDED)
    ]
    return pd.DataFrame(rows, columns=MANIFEST_COLUMNS[:8])


class _Evaluator:
    """Samples and scores a batch; models load on first use (a fully resumed run loads none)."""

    def __init__(self, params: Params, head_dir: Path, output_dir: Path):
        self.params, self.head_dir, self.output_dir = params, head_dir, output_dir
        self.sd = self.classifier = None
        self.video_model: tuple[str, object] | None = None

    def _models(self, workflow: str):
        from vidprior.models import build_sd15
        from vidprior.unic.classifier import build_classifier

        if self.sd is None:
            self.sd = build_sd15(self.params.models.sd15)
            self.classifier = build_classifier(self.sd.unet).load_head(self.head_dir)
        if self.video_model is None or self.video_model[0] != workflow:
            self.video_model = None  # the previous workflow's model goes before the next one loads
            self.video_model = (workflow, build_video_model(self.params, self.sd, workflow))
        return self.sd, self.classifier, self.video_model[1]

    def __call__(self, batch: pd.DataFrame) -> list[dict]:
        records = [
            rejected(row.id, "empty_prompt", f"prompt {row.prompt_id} is empty")
            for row in batch.itertuples()
            if not row.prompt
        ]
        todo = batch[batch["prompt"] != ""]
        # Items are sorted by id, so a batch holds a few workflows at most, each once.
        for (workflow, _), group in todo.groupby(["workflow", "variant"], sort=False):
            records += self._sample(workflow, group)
        return records

    def _sample(self, workflow: str, group: pd.DataFrame) -> list[dict]:
        from vidprior.evaluate import score_videos

        sd, classifier, video_model = self._models(workflow)
        prompts = group["prompt"].tolist()
        started = time.perf_counter()
        _, videos = generate(
            self.params,
            sd,
            classifier,
            prompts,
            group["prompt_id"].tolist(),
            float(group["lambda_"].iloc[0]),
            (group["seed"].astype(int).tolist(), group["video_seed"].astype(int).tolist()),
            workflow=workflow,
            video_model=video_model,
        )
        seconds = (time.perf_counter() - started) / len(group)
        fps = self.params.unic.videos.fps
        saved = []
        for row, video in zip(group.itertuples(), videos, strict=True):
            path = write_video(self.output_dir / VIDEOS_DIR / f"{row.id}.mp4", video, fps)
            # Scored as saved (decoded from the mp4), as VBench scores video files.
            saved.append((path, read_video(path)))
        scores = score_videos(
            [frames for _, (frames, _) in saved],
            [float(rate) for _, (_, rate) in saved],
            prompts,
            self.params.unic.evaluate.metrics,
            self.params,
        )
        records = []
        for k, row in enumerate(group.itertuples()):
            path = saved[k][0]
            records.append(
                ok(
                    row.id,
                    prompt_id=row.prompt_id,
                    prompt=row.prompt,
                    workflow=row.workflow,
                    variant=row.variant,
                    lambda_=float(row.lambda_),
                    seed=int(row.seed),
                    video_seed=int(row.video_seed),
                    video_path=f"{VIDEOS_DIR}/{path.name}",
                    video_sha256=file_sha256(path),
                    fps=float(saved[k][1][1]),
                    seconds=seconds,
                    **{m: float(scores[m].iloc[k]) for m in self.params.unic.evaluate.metrics},
                )
            )
        return records


def _mean(values: pd.Series) -> float:
    values = values.astype(float)
    return float(values.mean()) if len(values) and values.notna().any() else float("nan")


def summarize(manifest: pd.DataFrame, params: Params) -> tuple[dict, dict, list[Row]]:
    """(candidate, baseline, table rows): each workflow's mean per metric, guided and unguided."""
    cfg = params.unic.evaluate
    candidate, baseline, rows = {}, {}, []
    for workflow in cfg.workflows:
        group = group_of(workflow)
        for variant, keys, method in (
            (BASELINE, baseline, METHODS[workflow]),
            (GUIDED, candidate, GUIDED_METHOD),
        ):
            videos = manifest[(manifest["workflow"] == workflow) & (manifest["variant"] == variant)]
            measured = {m: _mean(videos[m]) if m in videos else float("nan") for m in cfg.metrics}
            keys.update({f"{group}.{m}": v for m, v in measured.items()})
            rows.append(
                Row(
                    method=method,
                    group=group,
                    variant="candidate" if variant == GUIDED else "baseline",
                    videos=len(videos),
                    measured=measured,
                    paper=paper_values(workflow, variant),
                    plot_label=f"{METHODS[workflow]} + Uni-C" if variant == GUIDED else method,
                )
            )
    return candidate, baseline, rows


def _head_stamp(head_dir: Path) -> str:
    from vidprior.unic.classifier import HEAD_FILE

    head = head_dir / HEAD_FILE
    return file_sha256(head) if head.is_file() else ""


def run(params: Params, inputs: Sequence[Path | str] | None, output_dir: Path) -> dict[str, float]:
    """inputs: [train dir, prompts dir, registered dir]. Writes videos/, the table, evaluation.json."""
    params = generation_params(params)
    cfg = params.unic.evaluate
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    head_dir = input_dir(inputs, 0, "unic.train")
    prompts = read_input_manifest(inputs, 1, "unic.prompts", ["prompt"]).head(cfg.max_prompts)
    name, version = read_registered(input_dir(inputs, 2, "unic.register"))
    check_registered(name, version)
    items = evaluation_items(params, prompts)
    quiet_library_logs()

    section = params.model_dump(mode="json")
    result = run_batches(
        items,
        output_dir=output_dir,
        name="videos",
        config_fingerprint=fingerprint(
            STAGE,
            {k: section["unic"][k] for k in ("evaluate", "images", "videos", "guidance", "classifier")},
            {k: section["models"][k] for k in ("sd15", "svd", "pia", "animatediff")},
            section.get("evaluate"),
            _head_stamp(head_dir),
        ),
        batch_size=cfg.batch_size,
        process=_Evaluator(params, head_dir, output_dir),
    )
    columns_out = MANIFEST_COLUMNS + ["seconds", *cfg.metrics]
    manifest, rejects = kept_table(result.records, STAGE, columns_out)
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

    candidate, baseline, rows = summarize(manifest, params)
    columns = [Column(m, LABELS[m]) for m in cfg.metrics]
    table = report.table_frame(rows, columns)
    lambdas = ", ".join(f"{w}: {table_lambda(params, w)}" for w in cfg.workflows)
    notes = [
        f"{len(prompts)} prompts per row, the same image and video seeds for a workflow's two rows; "
        f"guided with the lambda table ({lambdas}). Images {params.unic.images.height}x"
        f"{params.unic.images.width} px, {params.unic.images.steps} steps; videos "
        f"{params.unic.videos.frames} frames, {params.unic.videos.steps} steps.",
        "Paper: Uni-C Table I (VBench). Dynamic degree is the fraction of videos judged dynamic.",
        f"Model: {name} version {version}; profile {params.profile}.",
    ]
    report.write_tables(output_dir, [table], report.markdown(table, columns, "Uni-C Table I (VBench)", notes))
    report.write_evaluation(
        output_dir,
        model=name,
        version=version,
        candidate=candidate,
        baseline=baseline,
        paper={
            "candidate": {
                f"{group_of(w)}.{m}": v for w in cfg.workflows for m, v in paper_values(w, GUIDED).items()
            },
            "baseline": {
                f"{group_of(w)}.{m}": v for w in cfg.workflows for m, v in paper_values(w, BASELINE).items()
            },
        },
        tables=[table],
    )
    report.bar_charts(output_dir, rows, columns)
    tag_version(name, version, candidate, baseline)
    metrics.update(report.flat_metrics(candidate, baseline))
    metrics["prompts"] = len(prompts)
    metrics["stage_seconds"] = round(time.perf_counter() - started, 4)
    return metrics


def after_tracked(run_id: str, output_dir: Path) -> None:
    """`eval.run_id` on the evaluated version, once `vidprior.stages.execute` has logged the run."""
    tag_run_from_evaluation(run_id, output_dir)
