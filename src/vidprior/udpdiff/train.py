"""Stage `udpdiff.train`: full fine-tune of the UDPDiff transformer on Panda-Dense latents (Sec. 3.4).

Input: the `udpdiff.encode` directory (per clip the VAE latents of the video, its segmentation and its
depth Pixelplanes videos, and the T5 embeddings of the long and the short caption).

The model is the base CogVideoX transformer (`models.cogvideox`) widened to [video | dense] channels by
`vidprior.udpdiff.model.widen_from_base` (`udpdiff.model.dense_init`), with the zero-initialised task
embedding; every weight trains, under DeepSpeed (`vidprior.training.engine`: ZeRO-2 by default, ZeRO-3
and CPU offload by params, bf16 where the precision resolves to it), one process or
`torchrun --nproc_per_node N`, with gradient checkpointing when set.

Each sample is drawn from (seed, its global sample index) alone: the clip (position k is offset
k mod n of epoch k // n's permutation), the task (segmentation with `segmentation_probability`, else
depth), the caption (long with `long_caption_probability`, else short), the timestep (uniform over the
scheduler's training timesteps) and the noise (on both halves). The objective is the v-prediction
loss of diffusers' CogVideoX fine-tuning example (`examples/cogvideo`):

    x_0 = join_latent(video, dense of the task);   x_t = scheduler.add_noise(x_0, eps, t)
    v = transformer(x_t, text, t, task_id, image_rotary_emb)
    x_0' = scheduler.get_velocity(v, x_t, t)       # = sqrt(abar_t) x_t - sqrt(1 - abar_t) v
    loss = mean(1 / (1 - abar_t) * (x_0' - x_0) ** 2)

with the rotary embedding `CogVideoXPipeline._prepare_rotary_positional_embeddings` computes when the
model uses rotary positions. (The weighting turns the x_0 error back into the v error.) The loss of
each half (`loss_video`, `loss_dense`) and of each task is logged besides the total.

Determinism and resume (as `vidprior.unic.train`): nothing random is carried between steps, and a
checkpoint (model, optimizer, step, history) is written every `checkpoint_every` steps, `latest`
atomically and only once complete; a rerun resumes from it and its history equals an uninterrupted
run's. Outputs (rank 0): transformer/ (`save_pretrained` of the fp32 master weights), udpdiff.json
(the hand-over to `udpdiff.sample` and the registry), history.csv, checkpoints/, report/history.csv
and report/training.png.

Run under torchrun with `python -m vidprior.udpdiff.train` (see `main`).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import torch

from vidprior.config import Params
from vidprior.io.atomic import atomic_path, write_text_atomic
from vidprior.io.checkpoint import clear_partials, fingerprint
from vidprior.io.manifest import MANIFEST, REPORT_DIR
from vidprior.training import engine as ds
from vidprior.training.runs import sample_seed, torchrun_main, write_csv
from vidprior.udpdiff.model import TASKS, join_latent, split_latent
from vidprior.unic.stage_inputs import input_dir, read_input_manifest

STAGE = "udpdiff.train"
CHECKPOINTS = "checkpoints"
HISTORY = "history.csv"
SUMMARY_JSON = "udpdiff.json"
TRANSFORMER_DIR = "transformer"
PLOT = "training.png"
FORMAT = 1
RUN_VERSION = 1
# Caption choice -> the latents file's key (written by `udpdiff.encode`).
TEXT_KEYS = {"long": "long_text", "short": "short_text"}
SHAPE_COLUMNS = ["latent_frames", "latent_channels", "latent_height", "latent_width"]
REQUIRED_COLUMNS = ["latent_path", *SHAPE_COLUMNS, "text_tokens", "text_dim"]
HISTORY_COLUMNS = [
    "step",
    "loss",
    "loss_video",
    "loss_dense",
    "loss_segmentation",
    "loss_depth",
    "lr",
    *TASKS,  # samples of each task in the step's global batch
    "long_caption",
    "short_caption",
    "timestep_mean",
]

log = logging.getLogger("vidprior.udpdiff.train")  # also when run as __main__


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Clips:
    ids: list[str]
    paths: list[Path]  # absolute latents files
    shape: tuple[int, int, int, int]  # (F', C, h, w) of every clip's video (and dense) latent
    text_tokens: int
    text_dim: int
    key: str  # fingerprint of the encoded data

    @property
    def channels(self) -> int:
        return self.shape[1]


def read_clips(inputs: Sequence[Path | str] | None) -> Clips:
    root = input_dir(inputs, 0, "encode")
    manifest = read_input_manifest(inputs, 0, "encode", REQUIRED_COLUMNS)
    where = root / MANIFEST
    if len(manifest) == 0:
        raise ValueError(f"{where}: no encoded clip to train on")
    manifest = manifest.sort_values("id", kind="stable").reset_index(drop=True)
    shapes = sorted({tuple(int(v) for v in row) for row in manifest[SHAPE_COLUMNS].to_numpy()})
    texts = sorted({(int(a), int(b)) for a, b in manifest[["text_tokens", "text_dim"]].to_numpy()})
    if len(shapes) != 1 or len(texts) != 1:
        raise ValueError(
            f"{where}: clips must share one latent shape ({', '.join(SHAPE_COLUMNS)}) and one text shape "
            f"(text_tokens, text_dim) to be batched; found {shapes} and {texts}"
        )
    paths = [root / str(p) for p in manifest["latent_path"]]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise ValueError(f"{where}: {len(missing)} latent_path file(s) missing, e.g. {missing[0]}")
    content = manifest["latent_sha256"] if "latent_sha256" in manifest.columns else manifest["latent_path"]
    ids = manifest["id"].astype(str).tolist()
    return Clips(
        ids=ids,
        paths=paths,
        shape=shapes[0],
        text_tokens=texts[0][0],
        text_dim=texts[0][1],
        key=fingerprint(list(zip(ids, content.astype(str), strict=True)), shapes[0], texts[0]),
    )


def load_sample(path: Path, task: str, caption: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(video latent, the task's dense latent, the caption's T5 embedding), float32."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return tuple(handle.get_tensor(k).float() for k in ("video", task, TEXT_KEYS[caption]))


def check_compatible(config: Any, clips: Clips, where: Path) -> None:
    """The base transformer can take these latents and embeddings; else an error naming the mismatch."""
    frames, channels, height, width = clips.shape
    problems = []
    if channels != config.in_channels:
        problems.append(f"latent_channels {channels} != the transformer's in_channels {config.in_channels}")
    if clips.text_dim != config.text_embed_dim:
        problems.append(
            f"text_dim {clips.text_dim} != the transformer's text_embed_dim {config.text_embed_dim}"
        )
    if height % config.patch_size or width % config.patch_size:
        problems.append(f"latent size {height}x{width} is not a multiple of patch_size {config.patch_size}")
    if config.patch_size_t is not None and frames % config.patch_size_t:
        problems.append(
            f"latent_frames {frames} is not a multiple of patch_size_t {config.patch_size_t} (CogVideoX 1.5)"
        )
    if not config.use_rotary_positional_embeddings and clips.text_tokens != config.max_text_seq_length:
        problems.append(
            f"text_tokens {clips.text_tokens} != max_text_seq_length {config.max_text_seq_length}, which the "
            "sin-cos positional table needs (set udpdiff.encode.max_text_tokens to it)"
        )
    if problems:
        raise ValueError(f"{where}: the latents do not fit models.cogvideox: " + "; ".join(problems))


# --------------------------------------------------------------------------- what each sample is


@dataclass(frozen=True)
class Choice:
    task: str
    caption: str  # "long" | "short"
    timestep: int

    @property
    def task_id(self) -> int:
        return TASKS[self.task]


class Sampler:
    """Samples as a pure function of their position in the run.

    Position k (over the whole run and all ranks) is clip k mod n of the permutation of epoch k // n;
    its task, caption and timestep come from a generator seeded by (seed, k), its noise from another.
    Step s, micro-step a, rank r read positions s*G + (a*W + r)*m + [0, m), with micro-batch m, world
    size W and global batch G = m * accum * W: any step can be drawn without replaying the ones before
    it, so a resumed run continues the same curve, and the split over ranks does not change the data.
    """

    def __init__(self, n_clips: int, seed: int, train: Any, rank: int, world: int, num_timesteps: int):
        if n_clips == 0:
            raise ValueError(f"{STAGE}: no clips")
        self.n_clips, self.seed, self.rank, self.world = n_clips, seed, rank, world
        self.micro = train.micro_batch
        self.global_batch = train.micro_batch * train.grad_accum * world
        self.p_segmentation = train.segmentation_probability
        self.p_long = train.long_caption_probability
        self.num_timesteps = num_timesteps
        self._permutations: dict[int, np.ndarray] = {}

    def clip(self, position: int) -> int:
        epoch, offset = divmod(position, self.n_clips)
        if epoch not in self._permutations:
            if len(self._permutations) > 2:
                self._permutations.pop(min(self._permutations))
            rng = np.random.default_rng(sample_seed(self.seed, "udpdiff.train.order", epoch))
            self._permutations[epoch] = rng.permutation(self.n_clips)
        return int(self._permutations[epoch][offset])

    def choice(self, position: int) -> Choice:
        generator = torch.Generator().manual_seed(sample_seed(self.seed, "udpdiff.train.choice", position))
        u = torch.rand(2, generator=generator, dtype=torch.float64)
        t = int(torch.randint(0, self.num_timesteps, (1,), generator=generator))
        return Choice(
            task="segmentation" if float(u[0]) < self.p_segmentation else "depth",
            caption="long" if float(u[1]) < self.p_long else "short",
            timestep=t,
        )

    def noise(self, position: int, shape: Sequence[int]) -> torch.Tensor:
        generator = torch.Generator().manual_seed(sample_seed(self.seed, "udpdiff.train.noise", position))
        return torch.randn(tuple(shape), generator=generator)

    def positions(self, step: int, micro_step: int) -> range:
        first = step * self.global_batch + (micro_step * self.world + self.rank) * self.micro
        return range(first, first + self.micro)

    def step_positions(self, step: int) -> range:
        return range(step * self.global_batch, (step + 1) * self.global_batch)


# --------------------------------------------------------------------------- model


def load_base(spec: Any) -> tuple[Any, Any]:
    """(base CogVideoX transformer, its scheduler). A pretrained spec loads only those two parts: the
    VAE and T5 (~10 GB for 5B) are not needed when the latents are precomputed."""
    from vidprior.models import build_cogvideox

    if spec.tiny is not None:
        parts = build_cogvideox(spec)  # the tiny parts come from one seeded build
        return parts.transformer, parts.scheduler
    from diffusers import CogVideoXDPMScheduler, CogVideoXTransformer3DModel

    from vidprior.models.loading import load_pretrained

    return (
        load_pretrained(CogVideoXTransformer3DModel, spec, "transformer"),
        load_pretrained(CogVideoXDPMScheduler, spec, "scheduler"),
    )


def rotary_embedding(config: Any, frames: int, height: int, width: int, device: torch.device):
    """The pipeline's rotary embedding for a latent of (frames, height, width), or None without rotary.

    `CogVideoXPipeline._prepare_rotary_positional_embeddings` takes pixel sizes and divides them by the
    VAE's spatial factor; latent sizes with a factor of 1 give it the same grid.
    """
    if not config.use_rotary_positional_embeddings:
        return None
    from diffusers import CogVideoXPipeline

    pipeline = SimpleNamespace(vae_scale_factor_spatial=1, transformer=SimpleNamespace(config=config))
    return CogVideoXPipeline._prepare_rotary_positional_embeddings(pipeline, height, width, frames, device)


def non_persistent_buffers(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Buffers `save_pretrained` does not write (the 2B's sin-cos table), as fp32 CPU copies."""
    persistent = set(model.state_dict())
    return {n: b.detach().cpu().clone() for n, b in model.named_buffers() if n not in persistent}


def final_model(config: Any, state: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor]):
    """A fresh fp32 UDPDiff transformer on CPU holding `state` (the engine's master weights)."""
    from vidprior.udpdiff.model import UDPDiffTransformer3DModel

    kwargs = {k: v for k, v in dict(config).items() if not k.startswith("_")}
    with torch.device("meta"):  # no random init of a 5B model only to overwrite it
        model = UDPDiffTransformer3DModel(**kwargs)
    keys = set(model.state_dict())
    model.load_state_dict({k: state[k] for k in keys}, strict=True, assign=True)
    for name, buffer in buffers.items():
        owner, _, leaf = name.rpartition(".")
        model.get_submodule(owner)._buffers[leaf] = buffer
    return model.eval()


def save_transformer(model: torch.nn.Module, target: Path) -> None:
    """`save_pretrained` into a temporary folder, then swapped in: never a half-written transformer/."""
    tmp = target.parent / f".{target.name}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp), safe_serialization=True)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)


# --------------------------------------------------------------------------- history and report


def _history_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=HISTORY_COLUMNS)
    counts = ["step", *TASKS, "long_caption", "short_caption"]
    return frame.astype({c: ("int64" if c in counts else "float64") for c in HISTORY_COLUMNS})


def _curve(ax, frame: pd.DataFrame, column: str, label: str, window: int) -> None:
    values = frame[column]
    if window == 1:
        ax.plot(frame["step"], values, lw=1.2, label=label)
        return
    (line,) = ax.plot(frame["step"], values, lw=0.5, alpha=0.3)
    smooth = values.rolling(window, min_periods=1).mean()
    ax.plot(frame["step"], smooth, lw=1.5, color=line.get_color(), label=f"{label} ({window}-step mean)")


def plot_history(frame: pd.DataFrame, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_halves, ax_tasks) = plt.subplots(1, 2, figsize=(11, 4))
    window = max(1, len(frame) // 50)
    for column, label in (("loss", "total"), ("loss_video", "video half"), ("loss_dense", "dense half")):
        _curve(ax_halves, frame, column, label, window)
    ax_halves.set_title("loss by latent half", fontsize=9)
    for task in TASKS:
        # A step without a sample of the task has no loss for it; the curve joins the steps that do.
        seen = frame.dropna(subset=[f"loss_{task}"]).reset_index(drop=True)
        if len(seen):
            _curve(ax_tasks, seen, f"loss_{task}", task, max(1, len(seen) // 50))
    ax_tasks.set_title("loss by task", fontsize=9)
    for ax in (ax_halves, ax_tasks):
        ax.set_xlabel("step")
        ax.set_ylabel("v-prediction MSE")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------- the run


@dataclass
class Objective:
    """The v-prediction loss of one micro-batch, per sample and per latent half."""

    scheduler: Any
    alphas_cumprod: torch.Tensor  # (T,) float64, CPU
    config: Any  # the transformer's config
    device: torch.device
    dtype: torch.dtype
    _rotary: dict[tuple[int, int, int], Any] = field(default_factory=dict)

    def rotary(self, frames: int, height: int, width: int):
        key = (frames, height, width)
        if key not in self._rotary:
            self._rotary[key] = rotary_embedding(self.config, frames, height, width, self.device)
        return self._rotary[key]

    def __call__(self, engine, x0: torch.Tensor, noise: torch.Tensor, text: torch.Tensor, t, task_ids):
        """(per-sample loss, per-sample video-half loss, per-sample dense-half loss), each (B,)."""
        x0, noise, t = x0.to(self.device), noise.to(self.device), t.to(self.device)
        noisy = self.scheduler.add_noise(x0, noise, t)
        frames, height, width = x0.shape[1], x0.shape[3], x0.shape[4]
        output = engine(
            hidden_states=noisy.to(self.dtype),
            encoder_hidden_states=text.to(device=self.device, dtype=self.dtype),
            timestep=t,
            task_id=task_ids.to(self.device),
            image_rotary_emb=self.rotary(frames, height, width),
            return_dict=False,
        )[0]
        predicted = self.scheduler.get_velocity(output.float(), noisy, t)  # the x_0 estimate
        weights = (1.0 / (1.0 - self.alphas_cumprod[t.cpu()])).float().to(self.device)
        error = weights.reshape(-1, 1, 1, 1, 1) * (predicted - x0) ** 2
        video, dense = split_latent(error)
        batch = error.shape[0]
        return (
            error.reshape(batch, -1).mean(1),
            video.reshape(batch, -1).mean(1),
            dense.reshape(batch, -1).mean(1),
        )


def run(params: Params, inputs: Sequence[Path | str] | None, output_dir: Path) -> dict[str, float]:
    """inputs: [encode dir]. Trains the UDPDiff transformer; writes transformer/, udpdiff.json,
    history.csv, checkpoints/ and report/ (rank 0). Every rank returns the same metrics."""
    with ds.session() as dist_info:
        return _train(params, inputs, Path(output_dir), dist_info)


def _train(
    params: Params, inputs: Sequence[Path | str] | None, output_dir: Path, dist_info: ds.DistInfo
) -> dict[str, float]:
    from vidprior.udpdiff.model import widen_from_base
    from vidprior.unic.generation import quiet_library_logs

    started = time.perf_counter()
    cfg = params.udpdiff.train
    spec = params.models.cogvideox
    main_rank, device = dist_info.rank == 0, dist_info.device
    if main_rank:
        output_dir.mkdir(parents=True, exist_ok=True)
    ds.barrier()
    quiet_library_logs()

    clips = read_clips(inputs)
    base, scheduler = load_base(spec)
    check_compatible(base.config, clips, input_dir(inputs, 0, "encode") / MANIFEST)
    num_timesteps = int(scheduler.config.num_train_timesteps)
    if len(scheduler.alphas_cumprod) != num_timesteps:
        raise ValueError(f"{STAGE}: the scheduler's alphas_cumprod does not cover its timesteps")
    model = widen_from_base(base, dense_init=params.udpdiff.model.dense_init, seed=params.seed)
    del base  # it shares every unwidened tensor with `model`; ZeRO can free them only without it
    # fp32 master weights whatever dtype the spec loads in; DeepSpeed casts the working copy to bf16.
    model = model.float().train()
    if cfg.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    buffers = non_persistent_buffers(model)
    model_config = model.config
    n_parameters = sum(p.numel() for p in model.parameters())

    # ---- engine, and the checkpoint to resume from
    config = ds.config_from_params(cfg, device=device.type)
    precision = ds.resolve_precision(cfg.precision, device.type)
    engine = ds.initialize(model, config)
    sampler = Sampler(len(clips.ids), params.seed, cfg, dist_info.rank, dist_info.world_size, num_timesteps)
    train_params = cfg.model_dump(mode="json")
    for key in ("steps", "checkpoint_every", "keep_checkpoints"):  # more steps continue a run
        train_params.pop(key)
    run_key = {
        "version": RUN_VERSION,
        "model": spec.model_id,
        "dense_init": params.udpdiff.model.dense_init,
        "seed": params.seed,
        "train": train_params,
        "precision": precision,
        "world_size": dist_info.world_size,
        "data": clips.key,
    }
    ckpt_dir = output_dir / CHECKPOINTS
    ds.prepare_checkpoint_dir(ckpt_dir, run_key, max_step=cfg.steps)
    start_step, client = ds.load_latest(engine, ckpt_dir)
    history: list[dict[str, Any]] = list(client["history"]) if client else []
    if len(history) != start_step or (history and history[-1]["step"] != start_step):
        raise RuntimeError(f"{ckpt_dir}: the checkpoint at step {start_step} has {len(history)} history rows")
    if start_step and engine.global_steps != start_step:
        raise RuntimeError(f"{ckpt_dir}: engine restored at step {engine.global_steps}, not {start_step}")

    # ---- training
    objective = Objective(
        scheduler=scheduler,
        alphas_cumprod=scheduler.alphas_cumprod.detach().double().cpu().clone(),
        config=model_config,
        device=device,
        dtype=ds.compute_dtype(engine),
    )
    latent_shape = (clips.shape[0], 2 * clips.channels, *clips.shape[2:])
    log_every = max(1, cfg.steps // 10)
    startup_seconds = time.perf_counter() - started
    train_started = time.perf_counter()
    engine.train()
    for step in range(start_step, cfg.steps):
        # Sums over this rank's samples: total, video half, dense half, then loss and count per task.
        sums = np.zeros(3 + 2 * len(TASKS), dtype=np.float64)
        for micro_step in range(cfg.grad_accum):
            positions = sampler.positions(step, micro_step)
            choices = [sampler.choice(p) for p in positions]
            samples = [
                load_sample(clips.paths[sampler.clip(p)], c.task, c.caption)
                for p, c in zip(positions, choices, strict=True)
            ]
            # [B, F', 2C, h, w]: each sample's video latent and its task's dense latent.
            x0 = join_latent(torch.stack([s[0] for s in samples]), torch.stack([s[1] for s in samples]))
            text = torch.stack([embedding for _, _, embedding in samples])
            noise = torch.stack([sampler.noise(p, latent_shape) for p in positions])
            t = torch.tensor([c.timestep for c in choices], dtype=torch.long)
            task_ids = torch.tensor([c.task_id for c in choices], dtype=torch.long)
            per_sample, video, dense = objective(engine, x0, noise, text, t, task_ids)
            engine.backward(per_sample.mean())
            engine.step()
            losses = per_sample.detach().double().cpu()
            sums[0] += float(losses.sum())
            sums[1] += float(video.detach().double().sum())
            sums[2] += float(dense.detach().double().sum())
            for k, task in enumerate(TASKS):
                mask = torch.tensor([c.task == task for c in choices])
                sums[3 + 2 * k] += float(losses[mask].sum())
                sums[4 + 2 * k] += int(mask.sum())
        totals = ds.all_reduce_sum(sums, device)
        done = step + 1
        batch_choices = [sampler.choice(p) for p in sampler.step_positions(step)]
        row: dict[str, Any] = {
            "step": done,
            "loss": totals[0] / sampler.global_batch,
            "loss_video": totals[1] / sampler.global_batch,
            "loss_dense": totals[2] / sampler.global_batch,
            "lr": float(engine.get_lr()[0]),
            "long_caption": sum(c.caption == "long" for c in batch_choices),
            "short_caption": sum(c.caption == "short" for c in batch_choices),
            "timestep_mean": float(np.mean([c.timestep for c in batch_choices])),
        }
        for k, task in enumerate(TASKS):
            count = round(totals[4 + 2 * k])
            row[task] = count
            row[f"loss_{task}"] = totals[3 + 2 * k] / count if count else float("nan")
        if [row[task] for task in TASKS] != [sum(c.task == task for c in batch_choices) for task in TASKS]:
            raise AssertionError(f"{STAGE}: step {done}: the ranks drew other tasks than the sampler says")
        history.append(row)
        if main_rank and (done % log_every == 0 or done == cfg.steps):
            log.info(
                "%s: step %d/%d loss %.4f (video %.4f, dense %.4f)",
                STAGE,
                done,
                cfg.steps,
                row["loss"],
                row["loss_video"],
                row["loss_dense"],
            )
        if done % cfg.checkpoint_every == 0 or done == cfg.steps:
            ds.save_checkpoint(engine, ckpt_dir, done, {"history": history}, keep_last=cfg.keep_checkpoints)
    train_seconds = time.perf_counter() - train_started

    # ---- outputs
    state = ds.full_fp32_state_dict(engine)  # collective under ZeRO
    frame = _history_frame(history)
    window = max(1, cfg.steps // 10)
    metrics: dict[str, float] = {
        "steps": cfg.steps,
        "examples": len(clips.ids),
        "global_batch": sampler.global_batch,
        "parameters": n_parameters,
        "first_loss": float(frame["loss"].iloc[0]),
        "final_loss": float(frame["loss"].iloc[-1]),
        "final_loss_mean": float(frame["loss"].iloc[-window:].mean()),
        "final_loss_video_mean": float(frame["loss_video"].iloc[-window:].mean()),
        "final_loss_dense_mean": float(frame["loss_dense"].iloc[-window:].mean()),
        **{f"samples_{task}": int(frame[task].sum()) for task in TASKS},
        "samples_long_caption": int(frame["long_caption"].sum()),
        "samples_short_caption": int(frame["short_caption"].sum()),
        "resumed_from_step": start_step,
        "startup_seconds": round(startup_seconds, 4),
        "train_seconds": round(train_seconds, 4),
    }
    if main_rank:
        summary = {
            "format": FORMAT,
            "transformer_dir": TRANSFORMER_DIR,
            "base_model": spec.model_dump(mode="json"),
            "base_model_id": spec.model_id,
            "dense_init": params.udpdiff.model.dense_init,
            "tasks": dict(TASKS),
            "latent_channels": clips.channels,
            "latents": {
                "shape": list(clips.shape),
                "text_tokens": clips.text_tokens,
                "text_dim": clips.text_dim,
                "clips": len(clips.ids),
            },
            "objective": {
                "prediction": "v (CogVideoX), loss on the x_0 estimate weighted by 1/(1 - abar_t)",
                "num_train_timesteps": num_timesteps,
                "timestep_sampling": "uniform over 0..T-1, per sample",
                "scheduler": type(scheduler).__name__,
                "rotary_positional_embeddings": bool(model_config.use_rotary_positional_embeddings),
            },
            "train": {
                **cfg.model_dump(mode="json"),
                "precision_resolved": precision,
                "world_size": dist_info.world_size,
                "global_batch": sampler.global_batch,
                "device": device.type,
                "seed": params.seed,
                "deepspeed": config,
            },
            "final_loss": metrics["final_loss"],
            "final_loss_mean": metrics["final_loss_mean"],
            "steps": cfg.steps,
        }
        save_transformer(final_model(model_config, state, buffers), output_dir / TRANSFORMER_DIR)
        write_csv(frame, output_dir / HISTORY)
        report = output_dir / REPORT_DIR
        report.mkdir(parents=True, exist_ok=True)
        write_csv(frame, report / HISTORY)
        plot_history(
            frame,
            report / PLOT,
            f"UDPDiff ({spec.model_id}, {params.udpdiff.model.dense_init} init): {len(clips.ids)} clips, "
            f"{cfg.steps} steps, lr {cfg.lr:g}, batch {sampler.global_batch}, {precision}",
        )
        # Last: its presence says the transformer next to it is complete.
        write_text_atomic(output_dir / SUMMARY_JSON, json.dumps(summary, indent=2) + "\n")
    ds.barrier()
    if main_rank:
        clear_partials(output_dir)
    metrics["stage_seconds"] = round(time.perf_counter() - started, 4)
    return metrics


# --------------------------------------------------------------------------- torchrun entry point


def main(argv: Sequence[str] | None = None) -> int:
    """`[torchrun --nproc_per_node N] python -m vidprior.udpdiff.train LATENTS --output DIR`."""
    inputs = [("latents", "the udpdiff.encode stage's output directory")]
    return torchrun_main("vidprior.udpdiff.train", inputs, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
