"""Stage `unic.sample`: guided generation with a trained Uni-C classifier (Sec. IV, Eq. 3).

Workflows: `sd` (guided SD images), `sd-svd` and `sd-pia` (guided SD images animated by SVD / PIA,
the paper's workflow tasks) and `animatediff` (text-to-video, guided frame by frame). Lambda comes
from `unic.sample.lambda_` or the workflow's row of the lambda table. With `with_baseline` the same
prompts and seeds are also sampled unguided, and both sets are scored by the classifier, so every
run reports what guidance bought: p(y = 1) of the generated images, re-noised to fixed timesteps.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from vidprior.config import Params
from vidprior.io.manifest import write_manifest, write_rejects
from vidprior.io.media import file_sha256, write_image, write_video
from vidprior.seeding import item_seed
from vidprior.unic.stage_inputs import input_dir, read_input_manifest

STAGE = "unic.sample"
TASK_OF_WORKFLOW = {"sd": "sd_svd", "sd-svd": "sd_svd", "sd-pia": "sd_pia", "animatediff": "animatediff"}
# Scoring re-noises each image at these fractions of the diffusion schedule (fixed noise per image).
SCORE_FRACTIONS = (0.25, 0.5)


def lambda_for(params: Params) -> float:
    cfg = params.unic.sample
    return cfg.lambda_ if cfg.lambda_ is not None else table_lambda(params, cfg.workflow)


def table_lambda(params: Params, workflow: str) -> float:
    """The workflow's row of the lambda table (`unic.lambdas`; sd and sd-svd share sd_svd)."""
    return float(getattr(params.unic.lambdas, TASK_OF_WORKFLOW[workflow]))


@torch.no_grad()
def classifier_scores(
    sd, classifier, images: list[np.ndarray], prompts: list[str], seeds: list[int], mode: str
):
    """Mean p(y = 1 | z_t) of each image over SCORE_FRACTIONS of the schedule, noise fixed by its seed."""
    from vidprior.unic.classifier import text_condition

    if not images:
        return []
    pixels = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
    z0 = sd.vae.encode(pixels.to(sd.vae.device, sd.vae.dtype)).latent_dist.mean * sd.vae.config.scaling_factor
    condition = text_condition(sd.tokenizer, sd.text_encoder, prompts, mode)
    alphas = sd.scheduler.alphas_cumprod
    total = torch.zeros(len(images))
    for fraction in SCORE_FRACTIONS:
        t = int(fraction * (len(alphas) - 1))
        noise = torch.stack(
            [torch.randn(z0.shape[1:], generator=torch.Generator().manual_seed(s + t)) for s in seeds]
        ).to(z0)
        z_t = alphas[t].sqrt() * z0 + (1 - alphas[t]).sqrt() * noise
        total += classifier.log_prob(z_t, torch.full((len(images),), t), condition.to(z0.dtype)).exp().cpu()
    return (total / len(SCORE_FRACTIONS)).tolist()


def sample_seeds(params: Params, ids: list[str], given: list | None = None) -> tuple[list[int], list[int]]:
    """(image seeds, video seeds): the prompts manifest's `seed` column when it has one, else derived
    from (run seed, prompt id); the video seed is derived from the image seed, so one number names both."""
    image = (
        [int(s) for s in given]
        if given is not None
        else [item_seed(params.seed, "sample-image", i) for i in ids]
    )
    return image, [item_seed(s, "sample-video", i) for s, i in zip(image, ids, strict=True)]


def build_video_model(params: Params, sd, workflow: str):
    """The model that animates `workflow`'s images (SVD, PIA on `sd`, AnimateDiff on `sd`); None for sd."""
    from vidprior import models

    if workflow == "sd-svd":
        return models.build_svd(params.models.svd)
    if workflow == "sd-pia":
        return models.build_pia(params.models.pia, sd)
    if workflow == "animatediff":
        return models.build_animatediff(params.models.animatediff, sd)
    return None


def generate(
    params: Params,
    sd,
    classifier,
    prompts: list[str],
    ids: list[str],
    lambda_: float,
    seeds,
    *,
    workflow: str | None = None,
    video_model=None,
):
    """(images, videos or None) for `workflow` (default `unic.sample.workflow`); `video_model` is
    `build_video_model`'s, built here when not given (callers sampling several times pass one)."""
    from vidprior.unic import workflows

    images_cfg, videos_cfg, guidance = params.unic.images, params.unic.videos, params.unic.guidance
    workflow = workflow or params.unic.sample.workflow
    if video_model is None:
        video_model = build_video_model(params, sd, workflow)
    image_seeds, video_seeds = seeds
    sd_args = dict(
        steps=images_cfg.steps,
        guidance_scale=images_cfg.guidance_scale,
        height=images_cfg.height,
        width=images_cfg.width,
        start=guidance.start,
        end=guidance.end,
        text_condition_mode=params.unic.classifier.text_condition,
        batch_size=images_cfg.batch_size,
    )
    if workflow == "sd":
        return workflows.sample_sd(sd, classifier, prompts, image_seeds, lambda_=lambda_, **sd_args), None
    video_args = dict(
        frames=videos_cfg.frames, steps=videos_cfg.steps, height=videos_cfg.height, width=videos_cfg.width
    )
    if workflow == "sd-svd":
        svd_args = dict(
            video_args,
            fps=videos_cfg.fps,
            motion_bucket_id=videos_cfg.motion_bucket_id,
            noise_aug_strength=videos_cfg.noise_aug_strength,
            decode_chunk_size=videos_cfg.decode_chunk_size,
        )
        return workflows.sd_then_svd(
            sd,
            video_model,
            classifier,
            prompts,
            image_seeds,
            video_seeds,
            lambda_=lambda_,
            sd=sd_args,
            svd=svd_args,
        )
    if workflow == "sd-pia":
        pia_args = dict(
            video_args, guidance_scale=videos_cfg.pia_guidance_scale, motion_scale=videos_cfg.pia_motion_scale
        )
        return workflows.sd_then_pia(
            sd,
            video_model,
            classifier,
            prompts,
            image_seeds,
            video_seeds,
            lambda_=lambda_,
            sd=sd_args,
            pia=pia_args,
        )
    videos = workflows.sample_animatediff(
        video_model,
        classifier,
        prompts,
        video_seeds,
        lambda_=lambda_,
        frames=videos_cfg.frames,
        steps=images_cfg.steps,
        guidance_scale=images_cfg.guidance_scale,
        height=images_cfg.height,
        width=images_cfg.width,
        start=guidance.start,
        end=guidance.end,
        text_condition_mode=params.unic.classifier.text_condition,
    )
    return [video[0] for video in videos], videos


def run(params: Params, inputs: Sequence[Path | str] | None, output_dir: Path) -> dict[str, float]:
    """inputs: [train dir (head.safetensors), prompts dir]. Writes images/, videos/ and the manifest."""
    from vidprior.models import build_sd15
    from vidprior.unic.classifier import build_classifier
    from vidprior.unic.generation import quiet_library_logs

    cfg = params.unic.sample
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    head_dir = input_dir(inputs, 0, "train")
    prompts = read_input_manifest(inputs, 1, "prompts", ["prompt"]).head(cfg.max_prompts)
    quiet_library_logs()

    sd = build_sd15(params.models.sd15)
    classifier = build_classifier(sd.unet).load_head(head_dir)
    lambda_ = lambda_for(params)
    ids, texts = prompts["id"].tolist(), prompts["prompt"].tolist()
    image_seeds, video_seeds = sample_seeds(
        params, ids, prompts["seed"].tolist() if "seed" in prompts else None
    )
    runs = [("guided", lambda_)] + ([("baseline", 0.0)] if cfg.with_baseline else [])
    rows, scores = [], {}
    for variant, strength in runs:
        images, videos = generate(params, sd, classifier, texts, ids, strength, (image_seeds, video_seeds))
        mode = params.unic.classifier.text_condition
        seeds = image_seeds
        scores[variant] = classifier_scores(sd, classifier, images, texts, seeds, mode)
        for k, (item_id, prompt) in enumerate(zip(ids, texts, strict=True)):
            sample_id = f"{item_id}-{variant}"
            image_path = write_image(output_dir / "images" / f"{sample_id}.png", images[k])
            row = {
                "id": sample_id,
                "prompt_id": item_id,
                "prompt": prompt,
                "variant": variant,
                "workflow": cfg.workflow,
                "lambda_": strength,
                "seed": seeds[k],
                "image_path": f"images/{sample_id}.png",
                "image_sha256": file_sha256(image_path),
                "classifier_p": scores[variant][k],
                "video_path": "",
            }
            if videos is not None:
                video_path = write_video(
                    output_dir / "videos" / f"{sample_id}.mp4", videos[k], params.unic.videos.fps
                )
                row.update(video_path=f"videos/{sample_id}.mp4", video_sha256=file_sha256(video_path))
            rows.append(row)

    write_manifest(pd.DataFrame(rows), output_dir)
    write_rejects(pd.DataFrame(), output_dir)
    metrics: dict[str, float] = {
        "samples": len(rows),
        "lambda": float(lambda_),
        "mean_classifier_p_guided": float(np.mean(scores["guided"])) if ids else float("nan"),
        "stage_seconds": round(time.perf_counter() - started, 4),
    }
    if cfg.with_baseline and ids:
        metrics["mean_classifier_p_baseline"] = float(np.mean(scores["baseline"]))
        metrics["guidance_gain"] = metrics["mean_classifier_p_guided"] - metrics["mean_classifier_p_baseline"]
    return metrics
