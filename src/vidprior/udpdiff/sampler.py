"""Joint sampling (Sec. 3.4): text + task id -> an RGB video and its dense map, from one latent.

`UDPDiffPipeline` is diffusers' `CogVideoXPipeline` run unchanged (prompt encoding, classifier-free
guidance, the DPM++ scheduler's `old_pred_original_sample` hand-over, CogVideoX 1.5's latent frame
padding) on the widened transformer: its `in_channels` (2 x 16) make the parent draw the [video |
dense] latent, and a forward pre-hook passes the task id to every transformer call, the
unconditional and the conditional CFG branch alike. The parent returns the final latent; both halves
are then decoded in ONE `decode_latents` call of the same VAE (the dense half is an ordinary video
latent to it, as the paper trains it).

With a plain 16-channel `CogVideoXTransformer3DModel` and no task id the same class is the base
model's sampler (`sample_base`), so comparisons differ only in the transformer.

Schedulers: "auto" is DPM++ (`CogVideoXDPMScheduler`) except for CogVideoX-2B, which samples with
DDIM (`CogVideoXDDIMScheduler`), as the paper and the CogVideoX repositories do. 2B is recognised by
its pretrained id (a name containing "cogvideox-2b") or by its architecture: it is the only CogVideoX
transformer without rotary positional embeddings (sin-cos positions instead). "dpm++" / "ddim" force
one. Either is built with `from_config` of the base model's scheduler, so the schedule (v-prediction,
zero-SNR betas, trailing spacing, SNR shift) is the checkpoint's own.

Noise: each sample draws its latent (and the scheduler's noise) from its own CPU generator seeded
with its seed, so a sample does not depend on the other samples of its batch.

API for other stages and the registry: `load_udpdiff(train_dir)` (or `load_udpdiff_parts` from a
transformer directory and the base `ModelSpec`), then `generate(model, prompts, tasks, seeds, ...)`;
`load_base(spec)` then `sample_base(model, prompts, seeds, ...)` for the base model alone.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from diffusers import (
    AutoencoderKLCogVideoX,
    CogVideoXDDIMScheduler,
    CogVideoXDPMScheduler,
    CogVideoXPipeline,
    CogVideoXTransformer3DModel,
)
from pydantic import ValidationError
from transformers import T5EncoderModel, T5TokenizerFast

from vidprior.models.loading import default_device
from vidprior.models.spec import ModelSpec
from vidprior.seeding import generators
from vidprior.udpdiff.model import TASKS, UDPDiffTransformer3DModel, split_latent
from vidprior.unic.images import to_uint8

SchedulerChoice = Literal["auto", "dpm++", "ddim"]
SCHEDULERS = {"dpm++": CogVideoXDPMScheduler, "ddim": CogVideoXDDIMScheduler}
CONFIG_FILE = "udpdiff.json"
CONFIG_FORMAT = 1
_COGVIDEOX_2B = re.compile(r"cogvideox-2b", re.IGNORECASE)


# ---------------------------------------------------------------------------------------------
# Schedulers


def is_cogvideox_2b(base_spec: ModelSpec | None, transformer_config: Mapping[str, Any]) -> bool:
    if base_spec is not None and base_spec.pretrained and _COGVIDEOX_2B.search(base_spec.pretrained):
        return True
    return not transformer_config.get("use_rotary_positional_embeddings", False)


def resolve_scheduler(
    choice: SchedulerChoice, base_spec: ModelSpec | None, transformer_config: Mapping[str, Any]
) -> str:
    """ "dpm++" or "ddim" for `choice` ("auto": DDIM for CogVideoX-2B, DPM++ otherwise)."""
    if choice == "auto":
        return "ddim" if is_cogvideox_2b(base_spec, transformer_config) else "dpm++"
    if choice not in SCHEDULERS:
        raise ValueError(f"scheduler must be 'auto', 'dpm++' or 'ddim', got {choice!r}")
    return choice


def make_scheduler(name: str, base_scheduler) -> CogVideoXDPMScheduler | CogVideoXDDIMScheduler:
    """A fresh scheduler (they keep per-run state) of the named kind on the base model's schedule."""
    return SCHEDULERS[name].from_config(base_scheduler.config)


# ---------------------------------------------------------------------------------------------
# Pipeline


@dataclass
class SampleOutput:
    """uint8 frames [B, T, H, W, 3]; `dense` is None for the base model. Times in seconds."""

    frames: np.ndarray
    dense: np.ndarray | None
    latents: torch.Tensor  # final latent, frame padding removed: [B, F, C or 2C, h, w]
    finite: np.ndarray  # [B] bool: the final latent is finite (fp16/bf16 overflow shows up here)
    encode_seconds: float
    denoise_seconds: float
    decode_seconds: float

    @property
    def seconds(self) -> float:
        return self.encode_seconds + self.denoise_seconds + self.decode_seconds


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class UDPDiffPipeline(CogVideoXPipeline):
    """`CogVideoXPipeline` whose transformer may be a `UDPDiffTransformer3DModel` (then `task_id` is
    required and the output holds the dense half too)."""

    @property
    def joint(self) -> bool:
        return isinstance(self.transformer, UDPDiffTransformer3DModel)

    def _bind_task(self, task_ids: torch.Tensor):
        def add_task_id(_module, args, kwargs):
            batch = kwargs["hidden_states"].shape[0]
            if batch % len(task_ids):
                raise AssertionError(f"transformer batch {batch} is not a multiple of {len(task_ids)} tasks")
            # CFG stacks [unconditional, conditional] batches: both get the samples' task ids.
            return args, {
                **kwargs,
                "task_id": task_ids.repeat(batch // len(task_ids)).to(kwargs["hidden_states"].device),
            }

        return self.transformer.register_forward_pre_hook(add_task_id, with_kwargs=True)

    def _check_size(self, frames: int, height: int, width: int) -> None:
        ratio = self.vae_scale_factor_temporal
        if frames < 1 or (frames - 1) % ratio:
            raise ValueError(
                f"frames must be 1 + a multiple of {ratio} (the VAE's time compression), got {frames}"
            )
        multiple = self.vae_scale_factor_spatial * self.transformer.config.patch_size
        if height % multiple or width % multiple:
            raise ValueError(
                f"height and width must be multiples of {multiple} (VAE {self.vae_scale_factor_spatial}x "
                f"x patch {self.transformer.config.patch_size}), got {height}x{width}"
            )

    def _padding_frames(self, frames: int) -> int:
        # Mirrors the parent: CogVideoX 1.5 pads the latent frames to a multiple of patch_size_t and
        # drops the padding (at the front) before decoding.
        latent_frames = (frames - 1) // self.vae_scale_factor_temporal + 1
        patch_t = self.transformer.config.patch_size_t
        return 0 if patch_t is None or latent_frames % patch_t == 0 else patch_t - latent_frames % patch_t

    @torch.no_grad()
    def __call__(
        self,
        prompt: Sequence[str],
        task_id: Sequence[int] | None = None,
        *,
        seeds: Sequence[int],
        num_frames: int,
        height: int,
        width: int,
        num_inference_steps: int,
        guidance_scale: float = 6.0,
        negative_prompt: str | Sequence[str] | None = None,
        max_sequence_length: int | None = None,
    ) -> SampleOutput:
        prompts = list(prompt)
        if not prompts:
            raise ValueError("no prompts to sample")
        if len(seeds) != len(prompts):
            raise ValueError(f"{len(seeds)} seeds for {len(prompts)} prompts")
        if self.joint == (task_id is None):
            raise ValueError(
                "a UDPDiff transformer needs one task id per prompt"
                if self.joint
                else "task ids need a UDPDiff transformer; this pipeline holds the base model"
            )
        self._check_size(num_frames, height, width)
        device = self._execution_device
        max_length = max_sequence_length or self.transformer.config.max_text_seq_length
        if isinstance(negative_prompt, Sequence) and not isinstance(negative_prompt, str):
            negative_prompt = list(negative_prompt)

        _sync(device)
        started = time.perf_counter()
        prompt_embeds, negative_embeds = self.encode_prompt(
            prompts,
            negative_prompt,
            do_classifier_free_guidance=guidance_scale > 1.0,
            max_sequence_length=max_length,
            device=device,
        )
        _sync(device)
        encoded = time.perf_counter()

        handle = None
        if task_id is not None:
            ids = torch.as_tensor(list(task_id), dtype=torch.long)
            if len(ids) != len(prompts):
                raise ValueError(f"{len(ids)} task ids for {len(prompts)} prompts")
            handle = self._bind_task(ids)
        try:
            (latents,) = super().__call__(
                prompt_embeds=prompt_embeds,
                negative_prompt_embeds=negative_embeds,
                height=height,
                width=width,
                num_frames=num_frames,
                num_inference_steps=num_inference_steps,
                guidance_scale=guidance_scale,
                generator=generators(list(seeds)),
                output_type="latent",
                return_dict=False,
                max_sequence_length=max_length,
            )
        finally:
            if handle is not None:
                handle.remove()
        latents = latents[:, self._padding_frames(num_frames) :]
        _sync(device)
        denoised = time.perf_counter()

        halves = split_latent(latents) if self.joint else (latents,)
        decoded = self.decode_latents(torch.cat(halves))  # one VAE call for both halves
        frames = to_uint8(self.video_processor.postprocess_video(video=decoded, output_type="np"))
        _sync(device)
        finished = time.perf_counter()

        batch = len(prompts)
        finite = torch.isfinite(latents.float()).flatten(1).all(dim=1).cpu().numpy()
        return SampleOutput(
            frames=frames[:batch],
            dense=frames[batch:] if self.joint else None,
            latents=latents,
            finite=finite,
            encode_seconds=encoded - started,
            denoise_seconds=denoised - encoded,
            decode_seconds=finished - denoised,
        )


# ---------------------------------------------------------------------------------------------
# Loading


@dataclass(frozen=True)
class UDPDiffModel:
    """The fine-tuned transformer and the base model's VAE, T5, tokenizer and scheduler."""

    transformer: UDPDiffTransformer3DModel
    vae: AutoencoderKLCogVideoX
    text_encoder: T5EncoderModel
    tokenizer: T5TokenizerFast
    scheduler: CogVideoXDPMScheduler | CogVideoXDDIMScheduler
    base_spec: ModelSpec | None = None
    tasks: Mapping[str, int] = field(default_factory=lambda: dict(TASKS))
    # The 16-channel base transformer, for base-vs-UDPDiff comparisons (`sample_base`); optional.
    base_transformer: CogVideoXTransformer3DModel | None = None
    # The T5 length the transformer was fine-tuned with (udpdiff.json "latents.text_tokens"); prompts are
    # padded to it when sampling too. None: the transformer config's max_text_seq_length.
    text_tokens: int | None = None

    @property
    def base_model_id(self) -> str:
        return self.base_spec.model_id if self.base_spec is not None else "unknown"

    def pipeline(self, scheduler: str, *, base: bool = False) -> UDPDiffPipeline:
        transformer = self.transformer
        if base:
            if self.base_transformer is None:
                raise ValueError("this UDPDiffModel has no base transformer; load it with with_base=True")
            transformer = self.base_transformer
        pipe = UDPDiffPipeline(
            tokenizer=self.tokenizer,
            text_encoder=self.text_encoder,
            vae=self.vae,
            transformer=transformer,
            scheduler=make_scheduler(scheduler, self.scheduler),
        )
        pipe.set_progress_bar_config(disable=True)
        return pipe


def _check_parts(transformer, vae, tasks: Mapping[str, int]) -> None:
    if not isinstance(transformer, UDPDiffTransformer3DModel):
        raise TypeError(f"expected a UDPDiffTransformer3DModel, got {type(transformer).__name__}")
    half = vae.config.latent_channels
    if transformer.config.in_channels != 2 * half or transformer.config.out_channels != 2 * half:
        raise ValueError(
            f"the transformer has {transformer.config.in_channels} in / {transformer.config.out_channels} "
            f"out channels; the base VAE's latent has {half}, so [video | dense] needs {2 * half}"
        )
    bad = {name: i for name, i in tasks.items() if not 0 <= i < transformer.config.num_tasks}
    if bad:
        raise ValueError(f"task ids {bad} outside the transformer's {transformer.config.num_tasks} tasks")


def from_parts(
    transformer: UDPDiffTransformer3DModel,
    base_parts,
    *,
    base_spec: ModelSpec | None = None,
    tasks: Mapping[str, int] = TASKS,
    with_base: bool = False,
    text_tokens: int | None = None,
) -> UDPDiffModel:
    """A `UDPDiffModel` from a transformer and a `vidprior.models.cogvideox.CogVideoXParts`."""
    _check_parts(transformer, base_parts.vae, tasks)
    return UDPDiffModel(
        transformer=transformer,
        vae=base_parts.vae,
        text_encoder=base_parts.text_encoder,
        tokenizer=base_parts.tokenizer,
        scheduler=base_parts.scheduler,
        base_spec=base_spec,
        tasks=dict(tasks),
        base_transformer=base_parts.transformer if with_base else None,
        text_tokens=text_tokens,
    )


def _base_components(spec: ModelSpec, with_base: bool):
    """VAE, T5, tokenizer, scheduler (and the base transformer if asked) of `spec`.

    Without `with_base` a pretrained base skips its transformer: for 5B that is 11 GB not read.
    """
    from vidprior.models.cogvideox import CogVideoXParts, build_cogvideox
    from vidprior.models.loading import load_pretrained

    if spec.tiny is not None or with_base:
        return build_cogvideox(spec)
    return CogVideoXParts(
        transformer=None,
        vae=load_pretrained(AutoencoderKLCogVideoX, spec, "vae"),
        text_encoder=load_pretrained(T5EncoderModel, spec, "text_encoder"),
        tokenizer=load_pretrained(T5TokenizerFast, spec, "tokenizer"),
        scheduler=load_pretrained(CogVideoXDPMScheduler, spec, "scheduler"),
        model_id=spec.model_id,
    )


def load_udpdiff_parts(
    transformer_dir: Path | str,
    base_spec: ModelSpec,
    *,
    tasks: Mapping[str, int] = TASKS,
    device: str | None = None,
    with_base: bool = False,
    text_tokens: int | None = None,
) -> UDPDiffModel:
    """Load the saved transformer and the base model's other parts (the registry's entry point)."""
    from vidprior.models.loading import torch_dtype

    transformer_dir = Path(transformer_dir)
    if not (transformer_dir / "config.json").is_file():
        raise ValueError(
            f"{transformer_dir}: no config.json (expected UDPDiffTransformer3DModel.save_pretrained)"
        )
    transformer = UDPDiffTransformer3DModel.from_pretrained(transformer_dir, dtype=torch_dtype(base_spec))
    model = from_parts(
        transformer.eval(),
        _base_components(base_spec, with_base),
        base_spec=base_spec,
        tasks=tasks,
        with_base=with_base,
        text_tokens=text_tokens,
    )
    return to_device(model, device or default_device())


def to_device(model: UDPDiffModel, device: str | torch.device) -> UDPDiffModel:
    for module in (model.transformer, model.vae, model.text_encoder, model.base_transformer):
        if module is not None:
            module.to(device)
    return model


def read_train_config(train_dir: Path | str) -> dict[str, Any]:
    """`<train dir>/udpdiff.json`, checked field by field (the train -> sample hand-over)."""
    path = Path(train_dir) / CONFIG_FILE
    if not path.is_file():
        raise ValueError(f"{path}: not found (expected the udpdiff.train stage's {CONFIG_FILE})")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(config).__name__}")
    if config.get("format") != CONFIG_FORMAT:
        raise ValueError(f"{path}: field 'format' is {config.get('format')!r}, expected {CONFIG_FORMAT}")
    for key, kind in (("transformer_dir", str), ("base_model", dict), ("tasks", dict)):
        if not isinstance(config.get(key), kind):
            raise ValueError(f"{path}: field {key!r} must be a JSON {kind.__name__}, got {config.get(key)!r}")
    try:
        config["base_model"] = ModelSpec.model_validate(config["base_model"])
    except ValidationError as exc:
        raise ValueError(f"{path}: field 'base_model' is not a ModelSpec: {exc}") from None
    tasks = config["tasks"]
    if not tasks or not all(isinstance(k, str) and type(v) is int for k, v in tasks.items()):
        raise ValueError(f"{path}: field 'tasks' must map task names to int ids, got {tasks!r}")
    return config


def trained_text_tokens(config: Mapping[str, Any]) -> int | None:
    """The T5 length of training, from a udpdiff.json; None when it does not record one."""
    tokens = (config.get("latents") or {}).get("text_tokens")
    return int(tokens) if tokens is not None else None


def load_udpdiff(
    train_dir: Path | str, *, device: str | None = None, with_base: bool = False
) -> UDPDiffModel:
    """The model a udpdiff.train output directory describes."""
    config = read_train_config(train_dir)
    model = load_udpdiff_parts(
        Path(train_dir) / config["transformer_dir"],
        config["base_model"],
        tasks=config["tasks"],
        device=device,
        with_base=with_base,
        text_tokens=trained_text_tokens(config),
    )
    channels = config.get("latent_channels")
    if channels is not None and 2 * channels != model.transformer.config.in_channels:
        raise ValueError(
            f"{Path(train_dir) / CONFIG_FILE}: field 'latent_channels' is {channels}, but the transformer "
            f"takes {model.transformer.config.in_channels} channels (expected 2 x {channels})"
        )
    return model


def load_base(base_spec: ModelSpec, *, device: str | None = None) -> UDPDiffModel:
    """The base CogVideoX alone, no fine-tune, for `sample_base`: the same pipeline class, scheduler
    choice and per-sample seeding as UDPDiff's, so a comparison differs only in the transformer. It
    samples with its own T5 length (the transformer config's), as released."""
    from vidprior.models.cogvideox import build_cogvideox

    parts = build_cogvideox(base_spec)
    model = UDPDiffModel(
        # No UDPDiff transformer: `transformer` only answers the scheduler choice (2B or not), which
        # reads the same architecture fields.
        transformer=parts.transformer,
        vae=parts.vae,
        text_encoder=parts.text_encoder,
        tokenizer=parts.tokenizer,
        scheduler=parts.scheduler,
        base_spec=base_spec,
        tasks={},
        base_transformer=parts.transformer,
    )
    return to_device(model, device or default_device())


# ---------------------------------------------------------------------------------------------
# Sampling


@dataclass(frozen=True)
class Generation:
    """uint8 videos [T, H, W, 3] per prompt; dense maps likewise (None for the base model)."""

    videos: list[np.ndarray]
    dense: list[np.ndarray] | None
    tasks: list[str] | None
    seeds: list[int]
    finite: list[bool]
    scheduler: str
    encode_seconds: float
    denoise_seconds: float
    decode_seconds: float

    @property
    def seconds(self) -> float:
        return self.encode_seconds + self.denoise_seconds + self.decode_seconds


def _task_list(model: UDPDiffModel, tasks: str | Sequence[str], count: int) -> list[str]:
    names = [tasks] * count if isinstance(tasks, str) else list(tasks)
    if len(names) != count:
        raise ValueError(f"{len(names)} tasks for {count} prompts")
    unknown = sorted({t for t in names if t not in model.tasks})
    if unknown:
        raise ValueError(f"unknown task(s) {unknown}; the model knows {sorted(model.tasks)}")
    return names


def _run(
    model: UDPDiffModel,
    prompts: Sequence[str],
    tasks: list[str] | None,
    seeds: Sequence[int],
    settings: dict[str, Any],
) -> Generation:
    """Sample with the UDPDiff transformer (`tasks` given) or the base one (`tasks` None)."""
    chosen = resolve_scheduler(settings.pop("scheduler"), model.base_spec, model.transformer.config)
    out = model.pipeline(chosen, base=tasks is None)(
        list(prompts),
        None if tasks is None else [model.tasks[t] for t in tasks],
        seeds=[int(s) for s in seeds],
        num_frames=settings["frames"],
        height=settings["height"],
        width=settings["width"],
        num_inference_steps=settings["steps"],
        guidance_scale=settings["guidance_scale"],
        negative_prompt=settings["negative_prompt"],
        max_sequence_length=model.text_tokens,
    )
    return Generation(
        videos=list(out.frames),
        dense=None if tasks is None else list(out.dense),
        tasks=tasks,
        seeds=[int(s) for s in seeds],
        finite=out.finite.tolist(),
        scheduler=chosen,
        encode_seconds=out.encode_seconds,
        denoise_seconds=out.denoise_seconds,
        decode_seconds=out.decode_seconds,
    )


def generate(
    model: UDPDiffModel,
    prompts: Sequence[str],
    tasks: str | Sequence[str],
    seeds: Sequence[int],
    *,
    steps: int,
    frames: int,
    height: int,
    width: int,
    guidance_scale: float = 6.0,
    scheduler: SchedulerChoice = "auto",
    negative_prompt: str | None = None,
) -> Generation:
    """One batch: a video and a dense map (`tasks`: one name for all, or one per prompt) per prompt."""
    names = _task_list(model, tasks, len(prompts))
    settings = dict(steps=steps, frames=frames, height=height, width=width, guidance_scale=guidance_scale)
    return _run(
        model, prompts, names, seeds, {**settings, "scheduler": scheduler, "negative_prompt": negative_prompt}
    )


def sample_base(
    model: UDPDiffModel,
    prompts: Sequence[str],
    seeds: Sequence[int],
    *,
    steps: int,
    frames: int,
    height: int,
    width: int,
    guidance_scale: float = 6.0,
    scheduler: SchedulerChoice = "auto",
    negative_prompt: str | None = None,
) -> Generation:
    """The base CogVideoX's plain text-to-video with the same VAE, T5, schedule and seeds."""
    settings = dict(steps=steps, frames=frames, height=height, width=width, guidance_scale=guidance_scale)
    return _run(
        model, prompts, None, seeds, {**settings, "scheduler": scheduler, "negative_prompt": negative_prompt}
    )
