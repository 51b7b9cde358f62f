"""vidprior.unic.guidance + workflows: Uni-C guided sampling (Eq. 3) on tiny SD 1.5 and AnimateDiff."""

from __future__ import annotations

import copy
import dataclasses
import inspect

import numpy as np
import pytest
import torch
from diffusers import (
    AnimateDiffPipeline,
    DDIMScheduler,
    EulerDiscreteScheduler,
    MotionAdapter,
    PNDMScheduler,
    UNet2DConditionModel,
    UNetMotionModel,
)

from vidprior.models import (
    ANIMATEDIFF_ADAPTER_ID,
    ModelSpec,
    TinySpec,
    build_animatediff,
    build_pia,
    build_sd15,
    build_svd,
)
from vidprior.seeding import generators
from vidprior.unic.classifier import build_classifier, text_condition
from vidprior.unic.guidance import UniCGuidance, check_scheduler, guidance_term, guided
from vidprior.unic.workflows import (
    sample_animatediff,
    sample_sd,
    sd_then_pia,
    sd_then_svd,
    to_uint8,
)

TINY = ModelSpec(tiny=TinySpec(seed=0))
H = W = 32  # the tiny VAE downsamples by 2: 16 x 16 latents
STEPS = 4
PROMPTS = ["a dog runs on the beach", "fireworks over a city", "a cat on a sofa", "waves on rocks"]
SEEDS = [11, 12, 13, 14]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Tiny models gain nothing from intra-op threads, and on a busy 2-core machine OpenMP's spinning threads
    # make every kernel tens of times slower (a tiny U-Net forward: 0.07 s on one thread, 1-4 s on two).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def sd():
    return build_sd15(TINY)


@pytest.fixture(scope="module")
def empty(sd):
    return text_condition(sd.tokenizer, sd.text_encoder, [""])


@pytest.fixture(scope="module")
def classifier(sd, empty):
    """The head trained (seconds) to tell noisy latents of positive-mean images (y = 1) from negative-mean
    ones, at every timestep, with the empty-prompt condition. The encoder is the tiny SD U-Net."""
    clf = build_classifier(sd.unet)
    g = torch.Generator().manual_seed(0)
    n = 384
    y = (torch.rand(n, generator=g) < 0.5).float()
    x0 = (2 * y - 1)[:, None, None, None] * 0.8 + 0.5 * torch.randn(n, 4, 16, 16, generator=g)
    t = torch.randint(0, 1000, (n,), generator=g)
    z_t = sd.scheduler.add_noise(x0, torch.randn(x0.shape, generator=g), t)
    with torch.no_grad():
        features = clf.features(z_t, t, empty.expand(n, -1, -1))
    optimizer = torch.optim.Adam(clf.head.parameters(), lr=1e-2)
    for _ in range(300):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(clf.head(features).squeeze(-1), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    clf.head.requires_grad_(False)
    assert loss.item() < 0.3
    return clf


@pytest.fixture(scope="module")
def animatediff(sd):
    return build_animatediff(TINY, sd)


def _pipe(parts):
    pipe = parts.pipeline()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _sd_latents(pipe, seeds=SEEDS, prompts=PROMPTS, trace=None):
    """Final latents of the SD pipeline (output_type="latent"); `trace` collects the latents of each step."""
    callback = None
    if trace is not None:

        def callback(p, i, t, kwargs):
            trace.append(kwargs["latents"].clone())
            return kwargs

    return pipe(
        prompts,
        num_inference_steps=STEPS,
        guidance_scale=7.5,
        height=H,
        width=W,
        generator=generators(seeds),
        output_type="latent",
        callback_on_step_end=callback,
    ).images


def _prob(classifier, latents, cond, t=1):
    with torch.no_grad():
        return classifier.log_prob(latents, t, cond.expand(latents.shape[0], -1, -1)).exp()


class _Spy:
    """Counts the classifier's log_prob calls and the batch shapes they see."""

    def __init__(self, classifier, monkeypatch):
        self.shapes = []
        original = classifier.log_prob

        def log_prob(z, t, cond, y=1):
            self.shapes.append(tuple(z.shape))
            return original(z, t, cond, y)

        monkeypatch.setattr(classifier, "log_prob", log_prob)


# --- (a) the guidance term ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def classifier64(sd):
    """A float64 copy (its own U-Net) with a random head, for finite differences."""
    clf = build_classifier(copy.deepcopy(sd.unet).double()).double()
    with torch.no_grad():
        clf.head.weight.copy_(torch.randn(clf.head.weight.shape, generator=torch.Generator().manual_seed(1)))
    return clf


def test_guidance_term_matches_finite_differences(classifier64, sd):
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2, 4, 8, 8, generator=g, dtype=torch.float64)
    cond = torch.randn(2, 77, 32, generator=g, dtype=torch.float64)
    t, lam = 500, 3.0
    abar = sd.scheduler.alphas_cumprod[t].double()
    term = guidance_term(classifier64, z, torch.tensor(t), cond, sd.scheduler.alphas_cumprod, lam)
    assert term.shape == z.shape and term.dtype == z.dtype and term.abs().sum() > 0

    def log_p(x):
        with torch.no_grad():
            return classifier64.log_prob(x, t, cond).sum()

    h = 1e-5
    for k in range(3):  # directional derivatives along random directions: <grad, v>
        v = torch.randn(z.shape, generator=g, dtype=torch.float64)
        fd = (log_p(z + h * v) - log_p(z - h * v)) / (2 * h)
        expected = lam * torch.sqrt(1 - abar) * fd
        torch.testing.assert_close((term * v).sum(), expected, rtol=1e-5, atol=1e-8, msg=f"direction {k}")
    # The gradient of one image does not depend on the other images of the batch.
    alone = guidance_term(classifier64, z[1:], t, cond[1:], sd.scheduler.alphas_cumprod, lam)
    torch.testing.assert_close(alone, term[1:])
    chunked = guidance_term(classifier64, z, t, cond, sd.scheduler.alphas_cumprod, lam, chunk_size=1)
    torch.testing.assert_close(chunked, term)


def test_video_latents_are_guided_frame_by_frame(classifier64, sd):
    g = torch.Generator().manual_seed(2)
    video = torch.randn(2, 4, 3, 8, 8, generator=g, dtype=torch.float64)  # (B, C, F, H, W)
    cond = torch.randn(2, 77, 32, generator=g, dtype=torch.float64)
    ac = sd.scheduler.alphas_cumprod
    term = guidance_term(classifier64, video, 300, cond, ac, 2.0)
    assert term.shape == video.shape
    for b in range(2):
        for f in range(3):
            frame = guidance_term(classifier64, video[b : b + 1, :, f], 300, cond[b : b + 1], ac, 2.0)
            torch.testing.assert_close(term[b : b + 1, :, f], frame)
    # One condition row is broadcast to the batch.
    one = guidance_term(classifier64, video, 300, cond[:1], ac, 2.0)
    torch.testing.assert_close(
        one, guidance_term(classifier64, video, 300, cond[:1].expand(2, -1, -1), ac, 2.0)
    )


def test_wrapped_step_is_eq3(classifier, sd, empty):
    scheduler = DDIMScheduler.from_config(sd.scheduler.config)
    scheduler.set_timesteps(STEPS)
    g = torch.Generator().manual_seed(3)
    z, eps = torch.randn(2, 4, 16, 16, generator=g), torch.randn(2, 4, 16, 16, generator=g)
    t = scheduler.timesteps[1]
    expected = scheduler.step(
        eps - guidance_term(classifier, z, t, empty, scheduler.alphas_cumprod, 5.0), t, z
    ).prev_sample
    plain = scheduler.step(eps, t, z).prev_sample
    guidance = UniCGuidance(classifier, 5.0, empty)
    with guidance.attached(scheduler):
        # Pipelines inspect the step's signature for `eta` / `generator`: the wrapper keeps it.
        assert {"eta", "generator"} <= set(inspect.signature(scheduler.step).parameters)
        got = scheduler.step(eps, t, z).prev_sample
    assert torch.equal(got, expected) and not torch.equal(got, plain)
    assert [(s.index, s.timestep) for s in guidance.steps] == [(1, int(t))]
    assert 0 < guidance.steps[0].mean_prob < 1


# --- (b) lambda = 0 is the plain pipeline -------------------------------------------------------------------


def test_lambda_zero_is_bit_identical(classifier, sd, empty, monkeypatch):
    pipe = _pipe(sd)
    plain = _sd_latents(pipe)
    spy = _Spy(classifier, monkeypatch)
    with guided(pipe, classifier, 0.0, empty) as guidance:
        zero = _sd_latents(pipe)
    assert torch.equal(zero, plain)
    assert spy.shapes == [] and guidance.steps == []
    images = sample_sd(
        sd,
        classifier,
        PROMPTS[:2],
        SEEDS[:2],
        lambda_=0.0,
        steps=STEPS,
        guidance_scale=7.5,
        height=H,
        width=W,
    )
    expected = pipe(
        PROMPTS[:2],
        num_inference_steps=STEPS,
        guidance_scale=7.5,
        height=H,
        width=W,
        generator=generators(SEEDS[:2]),
        output_type="np",
    ).images
    assert all(np.array_equal(a, to_uint8(b)) for a, b in zip(images, expected, strict=True))


# --- (c) guidance raises the classifier's probability -------------------------------------------------------


def test_guidance_raises_classifier_probability(classifier, sd, empty):
    pipe = _pipe(sd)
    plain = _sd_latents(pipe)
    with guided(pipe, classifier, 8.0, empty) as guidance:
        steered = _sd_latents(pipe)
    # Every step was guided, with the probability rising along the trajectory.
    assert [s.index for s in guidance.steps] == list(range(STEPS))
    probs = [s.mean_prob for s in guidance.steps]
    assert probs[-1] > probs[0]
    p_plain, p_steered = _prob(classifier, plain, empty), _prob(classifier, steered, empty)
    assert p_steered.mean() > p_plain.mean() + 0.05, (p_plain, p_steered)
    assert (p_steered > p_plain).all(), (p_plain, p_steered)
    # A stronger lambda steers further; the steered latents stay finite.
    with guided(pipe, classifier, 30.0, empty):
        stronger = _sd_latents(pipe)
    assert _prob(classifier, stronger, empty).mean() > p_steered.mean()
    assert torch.isfinite(stronger).all()


def test_sample_sd_outputs_and_batching(classifier, sd):
    kwargs = dict(
        lambda_=8.0, steps=STEPS, guidance_scale=7.5, height=H, width=W, text_condition_mode="empty"
    )
    images = sample_sd(sd, classifier, PROMPTS, SEEDS, batch_size=3, **kwargs)
    assert len(images) == 4 and all(im.shape == (H, W, 3) and im.dtype == np.uint8 for im in images)
    (single,) = sample_sd(sd, classifier, PROMPTS[3:], SEEDS[3:], **kwargs)
    assert np.abs(single.astype(int) - images[3]).max() <= 2  # per-item seeds: batching does not matter
    unguided = sample_sd(sd, classifier, PROMPTS[:1], SEEDS[:1], **{**kwargs, "lambda_": 0.0})
    assert not np.array_equal(unguided[0], images[0])
    with pytest.raises(ValueError, match="one seed per prompt"):
        sample_sd(sd, classifier, PROMPTS, SEEDS[:2], **kwargs)
    assert sample_sd(sd, classifier, [], [], **kwargs) == []


# --- (d) AnimateDiff, frame by frame ------------------------------------------------------------------------

FRAMES = 3
VIDEO = dict(frames=FRAMES, steps=3, guidance_scale=7.5, height=H, width=W, text_condition_mode="empty")


def test_animatediff_guided_frame_by_frame(classifier, animatediff, monkeypatch):
    plain = sample_animatediff(animatediff, classifier, PROMPTS[:2], SEEDS[:2], lambda_=0.0, **VIDEO)
    spy = _Spy(classifier, monkeypatch)
    steered = sample_animatediff(animatediff, classifier, PROMPTS[:2], SEEDS[:2], lambda_=8.0, **VIDEO)
    assert len(steered) == 2
    for video in steered:
        assert video.shape == (FRAMES, H, W, 3) and video.dtype == np.uint8
    # One classifier pass per step over all B * F frames, each frame an image of the SD U-Net.
    assert spy.shapes == [(2 * FRAMES, 4, H // 2, W // 2)] * 3
    assert any(not np.array_equal(a, b) for a, b in zip(plain, steered, strict=True))
    # lambda = 0 is the plain AnimateDiff pipeline, bit for bit.
    frames = _pipe(animatediff)(
        PROMPTS[:2],
        num_frames=FRAMES,
        num_inference_steps=3,
        guidance_scale=7.5,
        height=H,
        width=W,
        generator=generators(SEEDS[:2]),
        output_type="np",
    ).frames
    assert frames.shape == (2, FRAMES, H, W, 3)
    assert all(np.array_equal(a, to_uint8(b)) for a, b in zip(plain, frames, strict=True))


def test_animatediff_scheduler_is_the_docs_ddim(animatediff, sd):
    config = animatediff.scheduler.config
    assert isinstance(animatediff.scheduler, DDIMScheduler)
    assert (config.beta_schedule, config.clip_sample, config.timestep_spacing, config.steps_offset) == (
        "linear",
        False,
        "linspace",
        1,
    )
    assert (config.beta_start, config.beta_end) == (
        sd.scheduler.config.beta_start,
        sd.scheduler.config.beta_end,
    )
    assert animatediff.model_id == "animatediff:tiny-random(seed=0)+sd15:tiny-random(seed=0)"
    check_scheduler(animatediff.scheduler)


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_animatediff_parts(animatediff, sd, tmp_path):
    assert ANIMATEDIFF_ADAPTER_ID == "guoyww/animatediff-motion-adapter-v1-5-2"
    assert type(animatediff.unet) is UNetMotionModel and type(animatediff.motion_adapter) is MotionAdapter
    assert type(animatediff.pipeline()) is AnimateDiffPipeline
    assert animatediff.vae is sd.vae and animatediff.text_encoder is sd.text_encoder
    assert not animatediff.unet.training
    # The SD U-Net is copied, not converted in place: the classifier keeps a plain 2D U-Net.
    assert type(sd.unet) is UNet2DConditionModel
    assert torch.equal(animatediff.unet.conv_in.weight, sd.unet.conv_in.weight)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    again = build_animatediff(TINY, sd)
    assert torch.equal(torch.rand(3), expected)  # the caller's RNG is left alone
    assert _same_weights(again.unet, animatediff.unet)
    other = build_animatediff(ModelSpec(tiny=TinySpec(seed=1)), sd)
    assert not _same_weights(other.motion_adapter, animatediff.motion_adapter)
    animatediff.motion_adapter.save_pretrained(tmp_path)
    loaded = build_animatediff(ModelSpec(pretrained=str(tmp_path)), sd)
    assert _same_weights(loaded.unet, animatediff.unet)
    assert loaded.model_id == f"animatediff:{tmp_path}@main+sd15:tiny-random(seed=0)"


def test_animatediff_adapter_must_fit_the_base(sd, tmp_path):
    build_pia(TINY, sd).motion_adapter.save_pretrained(tmp_path)  # PIA's adapter has its own conv_in
    with pytest.raises(ValueError, match="not an AnimateDiff motion adapter"):
        build_animatediff(ModelSpec(pretrained=str(tmp_path)), sd)
    other_unet = type(sd.unet).from_config({**sd.unet.config, "layers_per_block": 2})
    with pytest.raises(ValueError, match="does not fit"):
        build_animatediff(TINY, dataclasses.replace(sd, unet=other_unet))


# --- (e) step range -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("start", "end", "expected"), [(0.5, 1.0, [2, 3]), (0.0, 0.5, [0, 1]), (0.25, 0.75, [1, 2])]
)
def test_step_range(classifier, sd, empty, monkeypatch, start, end, expected):
    pipe = _pipe(sd)
    plain_trace: list[torch.Tensor] = []
    _sd_latents(pipe, trace=plain_trace)
    spy = _Spy(classifier, monkeypatch)
    trace: list[torch.Tensor] = []
    with guided(pipe, classifier, 8.0, empty, start=start, end=end) as guidance:
        _sd_latents(pipe, trace=trace)
    assert [s.index for s in guidance.steps] == expected
    assert len(spy.shapes) == len(expected)  # the classifier runs on the guided steps only
    first = expected[0]
    for i in range(first):  # before the range: the unguided trajectory, bit for bit
        assert torch.equal(trace[i], plain_trace[i]), i
    assert not torch.equal(trace[first], plain_trace[first])


# --- (f) attaching and restoring ----------------------------------------------------------------------------


def test_scheduler_restored_after_context_and_exceptions(classifier, sd, empty):
    pipe = _pipe(sd)
    scheduler = pipe.scheduler
    assert "step" not in vars(scheduler)
    with guided(pipe, classifier, 8.0, empty):
        assert "step" in vars(scheduler) and scheduler.step.__wrapped__.__func__ is DDIMScheduler.step
    assert "step" not in vars(scheduler)
    assert scheduler.step.__func__ is DDIMScheduler.step

    with pytest.raises(RuntimeError, match="boom"), guided(pipe, classifier, 8.0, empty):
        raise RuntimeError("boom")
    assert "step" not in vars(scheduler)

    # An error inside the guided step (a text condition of the wrong batch) leaves no wrapper behind either.
    with (
        pytest.raises(ValueError, match="text_condition has 3 rows"),
        guided(pipe, classifier, 8.0, empty.expand(3, -1, -1)),
    ):
        _sd_latents(pipe, seeds=SEEDS[:2], prompts=PROMPTS[:2])
    assert "step" not in vars(scheduler)

    # A step the scheduler already had as an instance attribute is put back as it was.
    sentinel = scheduler.step
    scheduler.step = sentinel
    guidance = UniCGuidance(classifier, 8.0, empty).attach(pipe)
    with pytest.raises(RuntimeError, match="already"):
        UniCGuidance(classifier, 8.0, empty).attach(pipe)
    with pytest.raises(RuntimeError, match="already attached"):
        guidance.attach(pipe)
    guidance.detach()
    guidance.detach()  # idempotent
    assert vars(scheduler)["step"] is sentinel
    del scheduler.step


def test_unsupported_schedulers_and_arguments(classifier, sd, empty):
    config = sd.scheduler.config
    with pytest.raises(ValueError, match="v_prediction"):
        check_scheduler(DDIMScheduler.from_config(config, prediction_type="v_prediction"))
    with pytest.raises(TypeError, match="sigma"):
        check_scheduler(EulerDiscreteScheduler.from_config(config))
    with pytest.raises(TypeError, match="alphas_cumprod"):
        check_scheduler(type("NoAlphas", (), {"step": lambda self: None, "config": config})())
    check_scheduler(PNDMScheduler.from_config(config))  # VP latents, epsilon: accepted
    for kwargs, match in [
        ({"start": 0.5, "end": 0.5}, "start < end"),
        ({"lambda_": -1.0}, "lambda_"),
        ({"text_condition": empty[0]}, r"\(B, L, D\)"),
        ({"chunk_size": 0}, "chunk_size"),
    ]:
        with pytest.raises(ValueError, match=match):
            UniCGuidance(**{"classifier": classifier, "lambda_": 1.0, "text_condition": empty, **kwargs})
    with pytest.raises(ValueError, match="channels"):
        guidance_term(classifier, torch.randn(1, 3, 8, 8), 10, empty, sd.scheduler.alphas_cumprod, 1.0)


# --- the image-to-video tasks -------------------------------------------------------------------------------


def test_sd_then_pia_and_svd(classifier, sd):
    image_kwargs = dict(steps=2, guidance_scale=7.5, height=H, width=W, text_condition_mode="empty")
    pia = build_pia(TINY, sd)
    pia_kwargs = dict(frames=2, steps=2, guidance_scale=7.5, motion_scale=0, height=H, width=W)
    images, videos = sd_then_pia(
        sd, pia, classifier, PROMPTS[:2], SEEDS[:2], [1, 2], lambda_=8.0, sd=image_kwargs, pia=pia_kwargs
    )
    expected = sample_sd(sd, classifier, PROMPTS[:2], SEEDS[:2], lambda_=8.0, **image_kwargs)
    assert all(np.array_equal(a, b) for a, b in zip(images, expected, strict=True))
    assert [v.shape for v in videos] == [(2, H, W, 3)] * 2 and videos[0].dtype == np.uint8
    svd = build_svd(TINY)
    images, videos = sd_then_svd(
        sd,
        svd,
        classifier,
        PROMPTS[:1],
        SEEDS[:1],
        [1],
        lambda_=8.0,
        sd=image_kwargs,
        svd=dict(frames=2, steps=2, height=16, width=16),
    )
    assert np.array_equal(images[0], expected[0])
    assert videos[0].shape == (2, 16, 16, 3) and videos[0].dtype == np.uint8
