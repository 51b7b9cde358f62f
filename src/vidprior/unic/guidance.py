"""Uni-C guided sampling (Eq. 3), plug-and-play on existing diffusers pipelines.

    eps_hat = eps_theta(z_t, c, t) - lambda * sqrt(1 - abar_t) * grad_{z_t} log p(y = 1 | z_t, t)

Where it hooks in: every diffusers denoising loop (StableDiffusionPipeline, AnimateDiffPipeline, ...) ends a
step with `latents = self.scheduler.step(noise_pred, t, latents, ...)`, and `noise_pred` there is already the
classifier-free-guidance combination (and guidance_rescale, if any) of the U-Net's outputs; that is exactly
the eps of Eq. 3. `UniCGuidance` therefore replaces the pipeline's `scheduler.step` while attached by a step
that first computes the classifier gradient at (latents, t) and then calls the original step with eps_hat.
The pipeline itself is not copied or changed, and its U-Net eps is used detached (the gradient is through the
classifier only; the pipelines run under `torch.no_grad`, the classifier pass runs under `enable_grad`).

Video latents (5-D, diffusers' motion-U-Net layout (B, C, F, H, W), e.g. AnimateDiff) are guided frame by
frame: reshaped to (B * F, C, H, W), the text condition repeated per frame, the gradient reshaped back.

Conditions, checked when attaching (a clear error otherwise):
- the scheduler parametrises latents as z_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps (has `alphas_cumprod`,
  `init_noise_sigma == 1`: DDIM, DDPM, DPM-Solver; not Euler / LMS, whose latents are sigma-scaled), and
- its model predicts epsilon (`prediction_type == "epsilon"`; v-prediction would need Eq. 3 rewritten).
DDIM (eta = 0) is the sampler of the paper and of the tests.

Text condition (B, L, D): the classifier's encoder condition, one row per latent of the batch *after* CFG
(the conditional half's batch, not 2B): pass the prompts' conditional embeddings from
`vidprior.unic.classifier.text_condition` (mode "prompt" or "empty"), repeated with `repeat_interleave` for
`num_images_per_prompt` > 1. A single row (1, L, D) is broadcast to the whole batch.

Step range: only the steps whose index i (0-based, of n = len(scheduler.timesteps)) has start <= i / n < end
are guided; e.g. start = 0.5 leaves the first (noisiest) half of the trajectory unguided. lambda = 0 (or a
step outside the range) calls the original step with the untouched eps: output bit-identical to no guidance.

The scheduler object is patched in place (an instance attribute `step`) for the duration of the attachment;
a scheduler shared by several pipelines (e.g. `SD15Parts.scheduler`) is guided in all of them meanwhile.
`detach()` (or leaving the `with` block, also on an exception) restores it.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from vidprior.unic.classifier import UniCClassifier


@dataclass(frozen=True)
class GuidedStep:
    """One guided denoising step: its index in the trajectory, its timestep, the batch's mean p(y=1|z_t)."""

    index: int
    timestep: int
    mean_prob: float


def _frames_as_batch(latents: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(B, C, H, W) as is; (B, C, F, H, W) -> (B * F, C, H, W), frame-major within each item."""
    if latents.ndim == 4:
        return latents, 1
    if latents.ndim == 5:
        b, c, f, h, w = latents.shape
        return latents.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w), f
    raise ValueError(f"expected latents (B, C, H, W) or (B, C, F, H, W), got shape {tuple(latents.shape)}")


def _batch_as_frames(flat: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    if like.ndim == 4:
        return flat
    b, c, f, h, w = like.shape
    return flat.reshape(b, f, c, h, w).permute(0, 2, 1, 3, 4)


def _condition_for(text_condition: torch.Tensor, batch: int, frames: int, like: torch.Tensor) -> torch.Tensor:
    if text_condition.ndim != 3:
        raise ValueError(f"text_condition must be (B, L, D), got shape {tuple(text_condition.shape)}")
    n = text_condition.shape[0]
    if n not in (1, batch):
        raise ValueError(
            f"text_condition has {n} rows but the latents have batch {batch}: pass one conditional embedding "
            "per sample after classifier-free guidance (not 2B), repeated for num_images_per_prompt, or one "
            "row to broadcast"
        )
    cond = text_condition.to(device=like.device, dtype=like.dtype)
    cond = cond.expand(batch, *cond.shape[1:])
    return cond.repeat_interleave(frames, dim=0) if frames > 1 else cond


def _log_prob_grad(
    classifier: UniCClassifier,
    latents: torch.Tensor,
    t: torch.Tensor | int,
    text_condition: torch.Tensor,
    chunk_size: int | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """grad_{z_t} log p(y=1 | z_t, t) (latents' shape) and log p per image / frame (N,), no graph kept."""
    if torch.is_inference_mode_enabled():
        raise RuntimeError(
            "Uni-C guidance needs autograd: run the pipeline under no_grad, not inference_mode"
        )
    flat, frames = _frames_as_batch(latents)
    in_channels = classifier.unet.config.in_channels
    if flat.shape[1] != in_channels:
        raise ValueError(
            f"latents have {flat.shape[1]} channels, the classifier's U-Net takes {in_channels}; video "
            "latents must be laid out (B, C, F, H, W)"
        )
    cond = _condition_for(text_condition, latents.shape[0], frames, flat)
    step = chunk_size or flat.shape[0]
    grads, log_probs = [], []
    with torch.enable_grad():
        for i in range(0, flat.shape[0], step):
            # Each image's log p depends on its own latent only, so the sum's gradient is per image.
            z = flat[i : i + step].detach().clone().requires_grad_(True)
            log_p = classifier.log_prob(z, t, cond[i : i + step])
            (grad,) = torch.autograd.grad(log_p.sum(), z)
            grads.append(grad)
            log_probs.append(log_p.detach())
    return _batch_as_frames(torch.cat(grads), latents), torch.cat(log_probs)


def _scaled(grad: torch.Tensor, alphas_cumprod: torch.Tensor, t: torch.Tensor | int, lambda_: float):
    """lambda * sqrt(1 - abar_t) * grad, in float32."""
    abar = alphas_cumprod[int(t)].to(device=grad.device, dtype=torch.float32)
    return lambda_ * torch.sqrt(1.0 - abar) * grad.float()


def guidance_term(
    classifier: UniCClassifier,
    latents: torch.Tensor,
    t: torch.Tensor | int,
    text_condition: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    lambda_: float,
    *,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """lambda * sqrt(1 - abar_t) * grad_{z_t} log p(y=1 | z_t, t), shaped (and typed) like `latents`.

    Eq. 3 is then `eps_hat = eps - guidance_term(...)`. `latents` (B, C, H, W) or video (B, C, F, H, W)
    (guided frame by frame); `text_condition` (B or 1, L, D); `chunk_size` bounds how many images / frames
    go through the classifier's backward pass at once (same result, less memory).
    """
    grad, _ = _log_prob_grad(classifier, latents, t, text_condition, chunk_size)
    return _scaled(grad, alphas_cumprod, t, lambda_).to(latents.dtype)


def check_scheduler(scheduler: Any) -> None:
    """Raise unless Eq. 3 applies as is to `scheduler`'s step (see the module docstring)."""
    name = type(scheduler).__name__
    if not callable(getattr(scheduler, "step", None)):
        raise TypeError(f"{name} has no step(); Uni-C guidance wraps a diffusers scheduler's step")
    if getattr(scheduler, "alphas_cumprod", None) is None:
        raise TypeError(f"{name} has no alphas_cumprod: Uni-C guidance (Eq. 3) needs a DDPM-style scheduler")
    prediction = getattr(scheduler.config, "prediction_type", "epsilon")
    if prediction != "epsilon":
        raise ValueError(
            f"{name} has prediction_type={prediction!r}; Uni-C guidance (Eq. 3) is for epsilon prediction"
        )
    sigma = float(getattr(scheduler, "init_noise_sigma", 1.0))
    if not math.isclose(sigma, 1.0):
        raise TypeError(
            f"{name} scales latents by sigma (init_noise_sigma={sigma:g}); Uni-C guidance needs latents "
            "z_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, as DDIM has them: use DDIMScheduler"
        )


class UniCGuidance:
    """Eq. 3 on a pipeline's scheduler step while attached (`attach`/`detach`, `with g.attached(pipe)`).

    `steps` records every guided step (index, timestep, mean p(y=1)) of every run while attached.
    """

    def __init__(
        self,
        classifier: UniCClassifier,
        lambda_: float,
        text_condition: torch.Tensor,
        *,
        start: float = 0.0,
        end: float = 1.0,
        chunk_size: int | None = None,
    ):
        if not 0.0 <= start < end <= 1.0:
            raise ValueError(f"need 0 <= start < end <= 1, got start={start}, end={end}")
        if lambda_ < 0:
            raise ValueError(f"lambda_ must be >= 0, got {lambda_}")
        if text_condition.ndim != 3:
            raise ValueError(f"text_condition must be (B, L, D), got shape {tuple(text_condition.shape)}")
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self.classifier = classifier
        self.lambda_ = float(lambda_)
        self.text_condition = text_condition.detach()
        self.start, self.end = start, end
        self.chunk_size = chunk_size
        self.steps: list[GuidedStep] = []
        self._scheduler: Any = None
        self._saved: tuple[bool, Any] | None = None

    # --- which steps -------------------------------------------------------------------------------------

    def step_index(self, scheduler: Any, timestep: torch.Tensor | int) -> int:
        timesteps = torch.as_tensor(scheduler.timesteps)
        hits = (timesteps == torch.as_tensor(timestep).to(timesteps.device)).nonzero()
        if len(hits) == 0:
            raise ValueError(f"timestep {timestep} is not in the scheduler's timesteps {timesteps.tolist()}")
        return int(hits[0, 0])

    def in_range(self, index: int, n_steps: int) -> bool:
        return self.start <= index / n_steps < self.end

    # --- the wrapped step --------------------------------------------------------------------------------

    def _wrap(self, scheduler: Any, original: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(original)  # keeps the signature: pipelines inspect it for `eta` and `generator`
        def step(model_output: torch.Tensor, timestep: Any, sample: torch.Tensor, *args: Any, **kwargs: Any):
            if self.lambda_ == 0.0:
                return original(model_output, timestep, sample, *args, **kwargs)
            index = self.step_index(scheduler, timestep)
            if not self.in_range(index, len(scheduler.timesteps)):
                return original(model_output, timestep, sample, *args, **kwargs)
            grad, log_p = _log_prob_grad(
                self.classifier, sample, timestep, self.text_condition, self.chunk_size
            )
            term = _scaled(grad, scheduler.alphas_cumprod, timestep, self.lambda_)
            eps_hat = (model_output.detach().float() - term).to(model_output.dtype)
            self.steps.append(GuidedStep(index, int(timestep), float(log_p.exp().mean())))
            return original(eps_hat, timestep, sample, *args, **kwargs)

        step._unic_guidance = self  # type: ignore[attr-defined]
        return step

    # --- attaching ---------------------------------------------------------------------------------------

    def attach(self, pipeline_or_scheduler: Any) -> UniCGuidance:
        """Guide `pipeline.scheduler` (or the scheduler given) until `detach()`."""
        if self._scheduler is not None:
            raise RuntimeError("this UniCGuidance is already attached; detach it first")
        scheduler = getattr(pipeline_or_scheduler, "scheduler", pipeline_or_scheduler)
        check_scheduler(scheduler)
        if hasattr(scheduler.step, "_unic_guidance"):
            raise RuntimeError(f"{type(scheduler).__name__} is already guided by another UniCGuidance")
        own = "step" in vars(scheduler)
        self._saved = (own, vars(scheduler).get("step"))
        scheduler.step = self._wrap(scheduler, scheduler.step)
        self._scheduler = scheduler
        return self

    def detach(self) -> None:
        """Restore the scheduler's own step (a no-op when not attached)."""
        scheduler, saved = self._scheduler, self._saved
        if scheduler is None or saved is None:
            return
        own, previous = saved
        if own:
            scheduler.step = previous
        else:
            del scheduler.step  # the instance attribute; the class's method shows again
        self._scheduler = self._saved = None

    @contextmanager
    def attached(self, pipeline_or_scheduler: Any) -> Iterator[UniCGuidance]:
        self.attach(pipeline_or_scheduler)
        try:
            yield self
        finally:
            self.detach()


@contextmanager
def guided(
    pipeline: Any,
    classifier: UniCClassifier,
    lambda_: float,
    text_condition: torch.Tensor,
    *,
    start: float = 0.0,
    end: float = 1.0,
    chunk_size: int | None = None,
) -> Iterator[UniCGuidance]:
    """`with guided(pipe, classifier, lambda_, cond): pipe(...)` runs `pipe` with Uni-C guidance (Eq. 3)."""
    guidance = UniCGuidance(classifier, lambda_, text_condition, start=start, end=end, chunk_size=chunk_size)
    with guidance.attached(pipeline):
        yield guidance
