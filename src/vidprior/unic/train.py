"""Stage `unic.train`: train the Uni-C classifier head on the labelled SD images (Sec. III-D).

Each example is an SD image, its label (1: the video it started moved plausibly) and its prompt. The
image is encoded once to its SD latent z_0 (VAE posterior mean times the scaling factor); at every
use it is noised to a random timestep t ~ U{0..T-1}: z_t = sqrt(abar_t) z_0 + sqrt(1 - abar_t) eps.
The frozen SD U-Net encoder (`UniCClassifier.features`) maps (z_t, t, text condition) to pooled
features and only the linear head trains, with binary cross-entropy on the label, under DeepSpeed
(`vidprior.training.engine`): one process, or `torchrun --nproc_per_node N` (gloo on CPU).

Determinism and resume. Sample k of the run (k counts examples over the whole run, across ranks) is
the example at position k mod n of the permutation of epoch k // n, noised with a generator seeded
by (seed, k): the data, timesteps and noise are functions of (seed, global step, rank) and nothing
else, no RNG state is carried between steps. A checkpoint (head, optimizer, step, loss history) is
written every `checkpoint_every` steps; a rerun resumes from the latest complete one and continues
the same loss curve: the resumed history equals an uninterrupted run's.

Held-out split: by prompt (every image of a prompt on one side), `eval_fraction` of the prompts,
chosen by a hash of (seed, prompt id). Each held-out image is evaluated once per timestep bucket at
a fixed timestep and noise, so accuracy and AUC are reported overall and per bucket. The encoder is
frozen, so those features are computed once and cached; an evaluation only runs the head.

Cached under `.partial/` (removed at the end): latents, text conditions and held-out features,
chunked and fingerprinted, so a killed run does not recompute them.

Outputs (rank 0): head.safetensors, classifier.json, history.csv, checkpoints/ (latest two),
report/training.png and report/history.csv.

Run under torchrun with `python -m vidprior.unic.train` (see `main`).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from vidprior.config import Params
from vidprior.io.atomic import atomic_path, write_text_atomic
from vidprior.io.checkpoint import ChunkStore, clear_partials, fingerprint
from vidprior.io.manifest import REPORT_DIR
from vidprior.io.media import read_image
from vidprior.training import engine as ds
from vidprior.training.runs import sample_seed, torchrun_main, write_csv
from vidprior.unic.stage_inputs import input_dir, read_input_manifest

STAGE = "unic.train"
CHECKPOINTS = "checkpoints"
HISTORY = "history.csv"
CLASSIFIER_JSON = "classifier.json"
PLOT = "training.png"
KEEP_CHECKPOINTS = 2
CACHE_VERSION = 1
IMAGE_CHUNK = 256  # images per cached latent chunk
TEXT_CHUNK = 256  # prompts per cached text-condition chunk
EVAL_CHUNK = 64  # held-out images per cached feature chunk (times the number of buckets)
VAE_BATCH = 16
TEXT_BATCH = 64
FEATURE_BATCH = 32

log = logging.getLogger("vidprior.unic.train")  # also when run as __main__


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Examples:
    ids: list[str]
    prompt_ids: list[str]
    paths: list[Path]  # absolute image paths
    sha256: list[str]  # "" where the images manifest has none
    labels: np.ndarray  # (N,) int64, 0/1
    texts: list[str]  # the distinct text conditions
    text_index: np.ndarray  # (N,) index into texts
    train: np.ndarray  # indices of the training examples
    held_out: np.ndarray  # indices of the held-out examples


def split_by_prompt(prompt_ids: Sequence[str], eval_fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of held-out examples: `eval_fraction` of the distinct prompts (at least one, and at
    least one left for training when there are two or more), ranked by a hash of (seed, prompt id)."""
    distinct = sorted(set(prompt_ids))
    if len(distinct) < 2:
        return np.zeros(len(prompt_ids), dtype=bool)
    n_eval = min(max(1, round(eval_fraction * len(distinct))), len(distinct) - 1)
    ranked = sorted(distinct, key=lambda p: (sample_seed(seed, "unic.train.split", p), p))
    held = set(ranked[:n_eval])
    return np.array([p in held for p in prompt_ids], dtype=bool)


def read_examples(inputs: Sequence[Path | str] | None, params: Params) -> Examples:
    labels = read_input_manifest(inputs, 0, "labels", ["prompt_id", "prompt", "image_path", "label"])
    images_dir = input_dir(inputs, 1, "images")
    images = read_input_manifest(inputs, 1, "images")
    if len(labels) == 0:
        raise ValueError(f"{STAGE}: the labels manifest has no labelled image to train on")
    sha = dict(zip(images["id"], images["sha256"], strict=True)) if "sha256" in images.columns else {}
    labels = labels.sort_values("id", kind="stable").reset_index(drop=True)
    values = labels["label"].astype("int64").to_numpy()
    if not np.isin(values, [0, 1]).all():
        raise ValueError(f"{STAGE}: labels must be 0 or 1, got {sorted(set(values.tolist()))}")
    prompt_ids = labels["prompt_id"].astype(str).tolist()
    prompts = labels["prompt"].fillna("").astype(str).tolist()
    if params.unic.classifier.text_condition == "prompt":
        texts = sorted(set(prompts))
        position = {text: i for i, text in enumerate(texts)}
        text_index = np.array([position[p] for p in prompts], dtype=np.int64)
    else:
        texts, text_index = [""], np.zeros(len(labels), dtype=np.int64)
    held = split_by_prompt(prompt_ids, params.unic.train.eval_fraction, params.seed)
    return Examples(
        ids=labels["id"].astype(str).tolist(),
        prompt_ids=prompt_ids,
        paths=[images_dir / str(p) for p in labels["image_path"]],
        sha256=[str(sha.get(i, "")) for i in labels["id"]],
        labels=values,
        texts=texts,
        text_index=text_index,
        train=np.flatnonzero(~held),
        held_out=np.flatnonzero(held),
    )


def bucket_edges(num_timesteps: int, buckets: int) -> list[int]:
    """Bucket b holds timesteps [edges[b], edges[b + 1])."""
    if buckets > num_timesteps:
        raise ValueError(f"timestep_buckets ({buckets}) > the scheduler's {num_timesteps} timesteps")
    return [b * num_timesteps // buckets for b in range(buckets + 1)]


def image_tensor(path: Path) -> torch.Tensor:
    """(3, H, W) float in [-1, 1], as the SD VAE expects."""
    array = np.array(read_image(path))  # a writable copy: PIL's buffer is read-only
    return torch.from_numpy(array).permute(2, 0, 1).float() / 127.5 - 1.0


def _storage_dtype(dtype: torch.dtype) -> np.dtype:
    # numpy has no bfloat16: those caches are stored as float32.
    return np.dtype(np.float16) if dtype == torch.float16 else np.dtype(np.float32)


# --------------------------------------------------------------------------- cached, sharded precompute


def cached_chunks(
    output_dir: Path, name: str, key: str, n_chunks: int, compute: Callable[[int], np.ndarray]
) -> tuple[list[np.ndarray], int]:
    """Chunks `0..n_chunks-1` of a ChunkStore, computed round-robin over the ranks, read by every rank.

    Returns (chunks, chunks reused from an earlier run, summed over the ranks).
    """
    if n_chunks == 0:
        return [], 0
    # Rank 0 opens the store first: it alone may wipe a stale one; the others then find it current.
    store = ChunkStore(output_dir, name, key) if ds.is_main() else None
    ds.barrier()
    store = store or ChunkStore(output_dir, name, key)
    rank, world = ds.rank(), ds.world_size()
    for index in range(rank, n_chunks, world):
        store.array(index, lambda index=index: compute(index))
    reused = round(ds.all_reduce_mean(store.reused) * world)
    ds.barrier()

    def missing() -> np.ndarray:
        raise RuntimeError(f"{store.root}: a chunk another rank computed is missing")

    return [store.array(index, missing) for index in range(n_chunks)], reused


# --------------------------------------------------------------------------- metrics


def binary_metrics(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """BCE loss, accuracy (p > 0.5) and ROC AUC; NaN where undefined (no examples, or one class)."""
    from sklearn.metrics import roc_auc_score

    nan = float("nan")
    if len(labels) == 0:
        return {"loss": nan, "accuracy": nan, "auc": nan}
    logits = logits.astype(np.float64)
    y = labels.astype(np.float64)
    loss = np.mean(np.maximum(logits, 0) - logits * y + np.log1p(np.exp(-np.abs(logits))))
    accuracy = np.mean((logits > 0).astype(np.float64) == y)
    auc = float(roc_auc_score(y, logits)) if len(np.unique(y)) == 2 else nan
    return {"loss": float(loss), "accuracy": float(accuracy), "auc": auc}


def eval_columns(n_buckets: int) -> list[str]:
    columns = ["eval_loss", "eval_accuracy", "eval_auc"]
    for b in range(n_buckets):
        columns += [f"eval_loss_b{b}", f"eval_accuracy_b{b}", f"eval_auc_b{b}"]
    return columns


# --------------------------------------------------------------------------- the run


@dataclass
class HeldOut:
    features: torch.Tensor  # (M, C) float32, M = held-out images x buckets
    labels: np.ndarray  # (M,)
    buckets: np.ndarray  # (M,)


def _evaluate(engine, held: HeldOut, n_buckets: int, device: torch.device) -> dict[str, float]:
    if len(held.labels) == 0:
        logits = np.zeros(0)
    else:
        engine.eval()
        with torch.no_grad():
            dtype = ds.compute_dtype(engine)
            parts = [
                engine(chunk.to(device=device, dtype=dtype)).float().reshape(-1).cpu()
                for chunk in held.features.split(4096)
            ]
        engine.train()
        logits = torch.cat(parts).numpy()
    result = {f"eval_{k}": v for k, v in binary_metrics(logits, held.labels).items()}
    for b in range(n_buckets):
        mask = held.buckets == b
        for k, v in binary_metrics(logits[mask], held.labels[mask]).items():
            result[f"eval_{k}_b{b}"] = v
    return result


def _history_frame(rows: list[dict[str, Any]], n_buckets: int) -> pd.DataFrame:
    columns = ["step", "loss", "lr", *eval_columns(n_buckets)]
    frame = pd.DataFrame(rows, columns=columns)
    frame["step"] = frame["step"].astype("int64")
    return frame.astype({c: "float64" for c in columns if c != "step"})


def plot_history(frame: pd.DataFrame, path: Path, n_buckets: int, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_eval) = plt.subplots(1, 2, figsize=(11, 4))
    window = max(1, len(frame) // 50)
    if window == 1:
        ax_loss.plot(frame["step"], frame["loss"], lw=1.2, label="train loss")
    else:
        ax_loss.plot(frame["step"], frame["loss"], lw=0.6, alpha=0.4, label="train loss (per step)")
        smooth = frame["loss"].rolling(window, min_periods=1).mean()
        ax_loss.plot(frame["step"], smooth, lw=1.5, label=f"train loss ({window}-step mean)")
    evaluated = frame.dropna(subset=["eval_loss"])
    if len(evaluated):
        ax_loss.plot(evaluated["step"], evaluated["eval_loss"], "o-", ms=3, label="held-out loss")
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("binary cross-entropy")
    ax_loss.legend(fontsize=8)
    ax_loss.grid(alpha=0.3)
    for column, style, label in (("eval_auc", "o-", "AUC"), ("eval_accuracy", "s-", "accuracy")):
        if len(evaluated) and evaluated[column].notna().any():
            ax_eval.plot(evaluated["step"], evaluated[column], style, ms=3, lw=1.5, label=f"held-out {label}")
    for b in range(n_buckets):
        column = f"eval_auc_b{b}"
        if len(evaluated) and evaluated[column].notna().any():
            ax_eval.plot(evaluated["step"], evaluated[column], "--", lw=0.8, label=f"AUC, t bucket {b}")
    if not (len(evaluated) and evaluated["eval_auc"].notna().any()):
        ax_eval.text(
            0.5,
            0.5,
            "held-out AUC undefined\n(empty split or one class)",
            ha="center",
            va="center",
            transform=ax_eval.transAxes,
        )
    ax_eval.set_ylim(0, 1.02)
    ax_eval.set_xlabel("step")
    if ax_eval.get_legend_handles_labels()[0]:
        ax_eval.legend(fontsize=7)
    ax_eval.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


@dataclass
class Encoders:
    """The frozen SD parts on this rank's device, and the noise schedule."""

    classifier: Any  # UniCClassifier: frozen U-Net encoder + the head being trained
    vae: Any
    text_encoder: Any
    tokenizer: Any
    alphas_cumprod: torch.Tensor  # (T,) float32, CPU
    device: torch.device

    @property
    def num_timesteps(self) -> int:
        return len(self.alphas_cumprod)

    @property
    def feature_dim(self) -> int:
        return int(self.classifier.unet.config.block_out_channels[-1])

    def features(
        self, z0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor, cond: torch.Tensor
    ) -> torch.Tensor:
        """Pooled encoder features of z_t = sqrt(abar_t) z_0 + sqrt(1 - abar_t) eps (no gradient)."""
        abar = self.alphas_cumprod[t].reshape(-1, 1, 1, 1)
        z_t = abar.sqrt() * z0.float() + (1.0 - abar).sqrt() * eps
        dtype = self.classifier.unet.dtype
        with torch.no_grad():
            return self.classifier.features(
                z_t.to(device=self.device, dtype=dtype),
                t.to(self.device),
                cond.to(device=self.device, dtype=dtype),
            )


def load_encoders(params: Params, device: torch.device) -> Encoders:
    from vidprior.models import build_sd15
    from vidprior.unic.classifier import build_classifier

    sd = build_sd15(params.models.sd15)
    unet = sd.unet.to(device)
    if len(sd.scheduler.alphas_cumprod) != int(sd.scheduler.config.num_train_timesteps):
        raise ValueError(f"{STAGE}: the scheduler's alphas_cumprod does not cover its timesteps")
    return Encoders(
        classifier=build_classifier(unet),
        vae=sd.vae.to(device),
        text_encoder=sd.text_encoder.to(device),
        tokenizer=sd.tokenizer,
        alphas_cumprod=sd.scheduler.alphas_cumprod.detach().float().cpu(),
        device=device,
    )


@dataclass
class Precomputed:
    latents: torch.Tensor  # (N, 4, h, w) z_0, CPU
    conditions: torch.Tensor  # (len(texts), L, D) text conditions, CPU
    held: HeldOut
    key: str  # fingerprint of the cached inputs
    reused_chunks: int
    seconds: float


def precompute(
    params: Params, data: Examples, enc: Encoders, edges: list[int], output_dir: Path
) -> Precomputed:
    """Latents, text conditions and held-out features: cached under `.partial/`, shared by the ranks."""
    from vidprior.unic.classifier import text_condition

    started = time.perf_counter()
    mode = params.unic.classifier.text_condition
    model_id = params.models.sd15.model_id
    n_buckets = len(edges) - 1

    def latent_chunk(index: int) -> np.ndarray:
        paths = data.paths[index * IMAGE_CHUNK : (index + 1) * IMAGE_CHUNK]
        out = []
        with torch.no_grad():
            for start in range(0, len(paths), VAE_BATCH):
                batch = torch.stack([image_tensor(p) for p in paths[start : start + VAE_BATCH]])
                posterior = enc.vae.encode(batch.to(device=enc.device, dtype=enc.vae.dtype)).latent_dist
                out.append((posterior.mean * enc.vae.config.scaling_factor).float().cpu())
        return torch.cat(out).numpy().astype(_storage_dtype(enc.vae.dtype))

    def text_chunk(index: int) -> np.ndarray:
        texts = data.texts[index * TEXT_CHUNK : (index + 1) * TEXT_CHUNK]
        out = [
            text_condition(enc.tokenizer, enc.text_encoder, texts[s : s + TEXT_BATCH], mode).float().cpu()
            for s in range(0, len(texts), TEXT_BATCH)
        ]
        return torch.cat(out).numpy().astype(_storage_dtype(enc.text_encoder.dtype))

    items = list(zip(data.ids, [str(p) for p in data.paths], data.sha256, strict=True))
    latent_key = fingerprint(STAGE, CACHE_VERSION, "latents", model_id, IMAGE_CHUNK, items)
    text_key = fingerprint(STAGE, CACHE_VERSION, "text", model_id, mode, TEXT_CHUNK, data.texts)
    chunks, reused_latents = cached_chunks(
        output_dir, "latents", latent_key, math.ceil(len(data.ids) / IMAGE_CHUNK), latent_chunk
    )
    latents = torch.from_numpy(np.concatenate(chunks))
    chunks, reused_text = cached_chunks(
        output_dir, "text", text_key, math.ceil(len(data.texts) / TEXT_CHUNK), text_chunk
    )
    conditions = torch.from_numpy(np.concatenate(chunks))
    if len(latents) != len(data.ids) or len(conditions) != len(data.texts):
        raise RuntimeError(f"{STAGE}: the cached latents or text conditions do not match the examples")

    def held_chunk(index: int) -> np.ndarray:
        # Each held-out image once per bucket, at a timestep and noise fixed by (seed, id, bucket).
        rows = data.held_out[index * EVAL_CHUNK : (index + 1) * EVAL_CHUNK]
        pairs = [(int(i), b) for i in rows for b in range(n_buckets)]
        ts, noises = [], []
        for i, b in pairs:
            generator = torch.Generator().manual_seed(
                sample_seed(params.seed, "unic.train.eval", data.ids[i], b)
            )
            ts.append(int(torch.randint(edges[b], edges[b + 1], (1,), generator=generator)))
            noises.append(torch.randn(latents.shape[1:], generator=generator))
        index = np.array([i for i, _ in pairs], dtype=np.int64)
        t, eps = torch.tensor(ts, dtype=torch.long), torch.stack(noises)
        out = []
        for s in range(0, len(pairs), FEATURE_BATCH):
            part = slice(s, s + FEATURE_BATCH)
            cond = conditions[data.text_index[index[part]]]
            out.append(enc.features(latents[index[part]], t[part], eps[part], cond).float().cpu())
        return torch.cat(out).numpy()

    held_ids = [data.ids[i] for i in data.held_out]
    held_key = fingerprint(
        STAGE, CACHE_VERSION, "held_out", params.seed, edges, EVAL_CHUNK, latent_key, text_key, held_ids
    )
    chunks, reused_held = cached_chunks(
        output_dir, "held_out", held_key, math.ceil(len(held_ids) / EVAL_CHUNK), held_chunk
    )
    held = HeldOut(
        features=torch.from_numpy(np.concatenate(chunks)) if chunks else torch.zeros(0, enc.feature_dim),
        labels=np.repeat(data.labels[data.held_out], n_buckets),
        buckets=np.tile(np.arange(n_buckets), len(held_ids)),
    )
    return Precomputed(
        latents=latents,
        conditions=conditions,
        held=held,
        key=fingerprint(latent_key, text_key, held_key),
        reused_chunks=reused_latents + reused_text + reused_held,
        seconds=time.perf_counter() - started,
    )


class Batches:
    """Training samples as a pure function of their position in the run.

    Position k (over the whole run and all ranks) is the training example at offset k mod n of the
    permutation of epoch k // n, noised at a timestep and with noise drawn from a generator seeded by
    (seed, k). Step s, micro-step a, rank r read the positions s*G + a*m*W + r*m + [0, m), with
    micro-batch m, world size W and global batch G = m * accum * W: any step can be drawn without
    replaying the ones before it, which is what makes a resumed run continue the same curve.
    """

    def __init__(
        self, train: np.ndarray, seed: int, micro: int, accum: int, rank: int, world: int, num_timesteps: int
    ):
        if len(train) == 0:
            raise ValueError(f"{STAGE}: no training examples")
        self.train, self.seed, self.micro, self.rank, self.world = train, seed, micro, rank, world
        self.global_batch = micro * accum * world
        self.num_timesteps = num_timesteps
        self._permutations: dict[int, np.ndarray] = {}

    def _example(self, position: int) -> int:
        epoch, offset = divmod(position, len(self.train))
        if epoch not in self._permutations:
            if len(self._permutations) > 2:
                self._permutations.pop(min(self._permutations))
            rng = np.random.default_rng(sample_seed(self.seed, "unic.train.order", epoch))
            self._permutations[epoch] = rng.permutation(len(self.train))
        return int(self.train[self._permutations[epoch][offset]])

    def micro_batch(
        self, step: int, micro_step: int, latent_shape: Sequence[int]
    ) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
        """(example indices, timesteps, noise) of this rank's micro-batch."""
        first = step * self.global_batch + (micro_step * self.world + self.rank) * self.micro
        index, ts, noises = [], [], []
        for position in range(first, first + self.micro):
            generator = torch.Generator().manual_seed(sample_seed(self.seed, "unic.train.noise", position))
            index.append(self._example(position))
            ts.append(int(torch.randint(0, self.num_timesteps, (1,), generator=generator)))
            noises.append(torch.randn(tuple(latent_shape), generator=generator))
        return np.array(index, dtype=np.int64), torch.tensor(ts, dtype=torch.long), torch.stack(noises)


def data_notes(data: Examples) -> list[str]:
    """What makes a metric undefined or the training degenerate, said in words."""
    notes = []
    train_labels, held_labels = data.labels[data.train], data.labels[data.held_out]
    if len(held_labels) == 0:
        notes.append("no held-out examples (fewer than two prompts): held-out metrics are NaN")
    elif len(np.unique(held_labels)) < 2:
        notes.append(f"held-out examples are all label {int(held_labels[0])}: held-out AUC is NaN")
    if len(np.unique(train_labels)) < 2:
        notes.append(f"training examples are all label {int(train_labels[0])}: the head learns a prior only")
    return notes


def run(params: Params, inputs: Sequence[Path | str] | None, output_dir: Path) -> dict[str, float]:
    """inputs: [labels dir, images dir]. Trains the head; writes head.safetensors, classifier.json,
    history.csv, checkpoints/ and report/ (rank 0). Every rank returns the same metrics."""
    with ds.session() as dist_info:
        return _train(params, inputs, Path(output_dir), dist_info)


def _train(
    params: Params, inputs: Sequence[Path | str] | None, output_dir: Path, dist_info: ds.DistInfo
) -> dict[str, float]:
    from vidprior.unic.generation import quiet_library_logs

    started = time.perf_counter()
    cfg = params.unic.train
    main_rank, device = dist_info.rank == 0, dist_info.device
    if main_rank:
        output_dir.mkdir(parents=True, exist_ok=True)
    ds.barrier()
    quiet_library_logs()

    data = read_examples(inputs, params)
    notes = data_notes(data)
    for note in notes if main_rank else []:
        log.warning("%s: %s", STAGE, note)
    enc = load_encoders(params, device)
    edges = bucket_edges(enc.num_timesteps, cfg.timestep_buckets)
    n_buckets = cfg.timestep_buckets
    cache = precompute(params, data, enc, edges, output_dir)

    # ---- engine, and the checkpoint to resume from
    config = ds.config_from_params(cfg, device=device.type)
    precision = ds.resolve_precision(cfg.precision, device.type)
    engine = ds.initialize(enc.classifier.head, config)
    batches = Batches(
        data.train,
        params.seed,
        cfg.micro_batch,
        cfg.grad_accum,
        dist_info.rank,
        dist_info.world_size,
        enc.num_timesteps,
    )
    train_params = cfg.model_dump(mode="json")
    for key in ("steps", "checkpoint_every"):  # more steps continue a run; checkpoint cadence is free
        train_params.pop(key)
    run_key = {
        "version": CACHE_VERSION,
        "model": params.models.sd15.model_id,
        "seed": params.seed,
        "text_condition": params.unic.classifier.text_condition,
        "train": train_params,
        "precision": precision,
        "world_size": dist_info.world_size,
        "data": fingerprint(cache.key, [(data.ids[i], int(data.labels[i])) for i in data.train]),
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
    labels = torch.from_numpy(data.labels.astype(np.float32))
    dtype = ds.compute_dtype(engine)
    latent_shape = cache.latents.shape[1:]
    log_every = max(1, cfg.steps // 10)
    startup_seconds = time.perf_counter() - started
    train_started = time.perf_counter()
    engine.train()
    for step in range(start_step, cfg.steps):
        total = 0.0
        for micro_step in range(cfg.grad_accum):
            index, t, eps = batches.micro_batch(step, micro_step, latent_shape)
            cond = cache.conditions[data.text_index[index]]
            features = enc.features(cache.latents[index], t, eps, cond)
            logits = engine(features.to(dtype)).float().reshape(-1)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels[index].to(device))
            engine.backward(loss)
            engine.step()
            total += float(loss.detach().item())
        done = step + 1
        row: dict[str, Any] = {
            "step": done,
            "loss": ds.all_reduce_mean(total / cfg.grad_accum, device),
            "lr": float(engine.get_lr()[0]),
        }
        if done % cfg.eval_every == 0:
            row.update(_evaluate(engine, cache.held, n_buckets, device))
        history.append(row)
        if main_rank and (done % log_every == 0 or done == cfg.steps):
            log.info("%s: step %d/%d loss %.4f", STAGE, done, cfg.steps, row["loss"])
        if done % cfg.checkpoint_every == 0 or done == cfg.steps:
            ds.save_checkpoint(engine, ckpt_dir, done, {"history": history}, keep_last=KEEP_CHECKPOINTS)
    train_seconds = time.perf_counter() - train_started

    # ---- final evaluation, after the last checkpoint: a longer rerun continues the same history
    final = dict(history[-1])
    if "eval_loss" not in final:
        final.update(_evaluate(engine, cache.held, n_buckets, device))
    rows = [*history[:-1], final]
    head_state = ds.full_fp32_state_dict(engine)  # collective under ZeRO
    eval_metrics = {k: float(final.get(k, float("nan"))) for k in eval_columns(n_buckets)}
    train_labels, held_labels = data.labels[data.train], data.labels[data.held_out]
    window = max(1, cfg.steps // 10)
    metrics: dict[str, float] = {
        "steps": cfg.steps,
        "examples": len(data.ids),
        "positives": int(data.labels.sum()),
        "negatives": int(len(data.ids) - data.labels.sum()),
        "train_examples": len(data.train),
        "train_positives": int(train_labels.sum()),
        "eval_examples": len(data.held_out),
        "eval_positives": int(held_labels.sum()),
        "global_batch": batches.global_batch,
        "final_loss": float(final["loss"]),
        "final_loss_mean": float(np.mean([r["loss"] for r in rows[-window:]])),
        **eval_metrics,
        "resumed_from_step": start_step,
        "resumed_cache_chunks": cache.reused_chunks,
        "startup_seconds": round(startup_seconds, 4),
        "precompute_seconds": round(cache.seconds, 4),
        "train_seconds": round(train_seconds, 4),
    }
    if main_rank:
        summary = {
            "base_model": {
                "sd15": params.models.sd15.model_id,
                "spec": params.models.sd15.model_dump(mode="json"),
            },
            "text_condition": params.unic.classifier.text_condition,
            "features": "SD U-Net encoder (conv_in, down blocks, mid block), frozen; spatial mean",
            "feature_dim": enc.feature_dim,
            "timesteps": {
                "num_train_timesteps": enc.num_timesteps,
                "train_sampling": "uniform over 0..T-1, per sample",
                "eval_bucket_edges": edges,
                "eval_buckets": [[edges[b], edges[b + 1] - 1] for b in range(n_buckets)],
            },
            "train": {
                **cfg.model_dump(mode="json"),
                "precision_resolved": precision,
                "world_size": dist_info.world_size,
                "global_batch": batches.global_batch,
                "device": device.type,
                "seed": params.seed,
                "deepspeed": config,
            },
            "data": {k: metrics[k] for k in DATA_METRICS},
            "final_loss": metrics["final_loss"],
            "eval": {k: (None if math.isnan(v) else v) for k, v in eval_metrics.items()},
            "notes": notes,
        }
        write_outputs(output_dir, enc, head_state, _history_frame(rows, n_buckets), summary)
    ds.barrier()
    if main_rank:
        clear_partials(output_dir)
    metrics["stage_seconds"] = round(time.perf_counter() - started, 4)
    return metrics


DATA_METRICS = (
    "examples",
    "positives",
    "negatives",
    "train_examples",
    "train_positives",
    "eval_examples",
    "eval_positives",
)


def write_outputs(
    output_dir: Path,
    enc: Encoders,
    head_state: dict[str, torch.Tensor],
    frame: pd.DataFrame,
    summary: dict[str, Any],
) -> None:
    """head.safetensors (fp32), classifier.json, history.csv, report/{training.png, history.csv}."""
    from vidprior.unic.classifier import HEAD_FILE, UniCClassifier

    final = UniCClassifier(enc.classifier.unet)  # a fresh fp32 head on CPU, for the master weights
    final.head.to("cpu").load_state_dict(head_state)
    final.save_head(output_dir)
    write_csv(frame, output_dir / HISTORY)
    report = output_dir / REPORT_DIR
    report.mkdir(parents=True, exist_ok=True)
    write_csv(frame, report / HISTORY)
    data = summary["data"]
    train = summary["train"]
    plot_history(
        frame,
        report / PLOT,
        len(summary["timesteps"]["eval_buckets"]),
        f"Uni-C classifier head: {data['train_examples']} train / {data['eval_examples']} held-out "
        f"images, {train['steps']} steps, lr {train['lr']:g}, batch {train['global_batch']}",
    )
    summary = {"head_file": HEAD_FILE, **summary}
    write_text_atomic(output_dir / CLASSIFIER_JSON, json.dumps(summary, indent=2) + "\n")


# --------------------------------------------------------------------------- torchrun entry point


def main(argv: Sequence[str] | None = None) -> int:
    """`[torchrun --nproc_per_node N] python -m vidprior.unic.train LABELS IMAGES --output DIR`."""
    inputs = [
        ("labels", "the unic.labels stage's output directory"),
        ("images", "the unic.images stage's output directory"),
    ]
    return torchrun_main("vidprior.unic.train", inputs, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
