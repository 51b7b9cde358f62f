"""vidprior.models.pia: tiny PIA (same classes as the real one), image -> video, loading, `animate`."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest
import torch
from diffusers import EulerDiscreteScheduler, MotionAdapter, PIAPipeline, UNetMotionModel
from PIL import Image

from vidprior.models import (
    PIA_ADAPTER_ID,
    ModelSpec,
    ModelUnavailableError,
    PIAParts,
    TinySpec,
    build_pia,
    build_sd15,
)
from vidprior.models import loading as loading_mod
from vidprior.models.pia import PIA_CONV_IN_CHANNELS, TINY_ADAPTER, animate

TINY = ModelSpec(tiny=TinySpec(seed=0))
H = W = 64
ANIMATE = dict(frames=4, steps=2, guidance_scale=7.5, motion_scale=1, height=H, width=W)


@pytest.fixture(scope="module")
def base():
    return build_sd15(TINY)


@pytest.fixture(scope="module")
def parts(base):
    return build_pia(TINY, base)


def _image(seed: int, size: tuple[int, int] = (H, W)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _run(parts: PIAParts, seed: int, num_frames: int = 4, image=None):
    pipe = parts.pipeline()
    pipe.set_progress_bar_config(disable=True)
    return pipe(
        image=Image.fromarray(_image(0)) if image is None else image,
        prompt="a dog runs on the beach",
        num_frames=num_frames,
        height=H,
        width=W,
        num_inference_steps=2,
        generator=torch.Generator().manual_seed(seed),
        output_type="np",
    ).frames


# --- structure -------------------------------------------------------------------------------------------


def test_tiny_parts_are_the_real_classes(parts, base):
    assert PIA_ADAPTER_ID == "openmmlab/PIA-condition-adapter"
    assert type(parts.unet) is UNetMotionModel and type(parts.motion_adapter) is MotionAdapter
    assert isinstance(parts.scheduler, EulerDiscreteScheduler)
    assert parts.scheduler.config.beta_schedule == "linear"  # the PIA docs' advice
    assert (
        parts.vae is base.vae
        and parts.text_encoder is base.text_encoder
        and parts.tokenizer is base.tokenizer
    )
    assert parts.model_id == "pia:tiny-random(seed=0)+sd15:tiny-random(seed=0)"
    assert not parts.unet.training and not parts.motion_adapter.training
    # The tiny adapter mirrors the tiny SD 1.5 U-Net, block for block.
    assert tuple(TINY_ADAPTER["block_out_channels"]) == tuple(base.unet.config.block_out_channels)
    assert TINY_ADAPTER["motion_layers_per_block"] == base.unet.config.layers_per_block
    assert type(parts.pipeline()) is PIAPipeline


def test_nine_channel_conv_in(parts, base):
    conv = parts.unet.conv_in
    assert parts.unet.config.in_channels == conv.in_channels == PIA_CONV_IN_CHANNELS == 9
    # diffusers: channels 0-3 and the bias are the SD U-Net's, 4-8 (mask + image latent) the adapter's.
    assert torch.equal(conv.weight[:, :4], base.unet.conv_in.weight)
    assert torch.equal(conv.bias, base.unet.conv_in.bias)
    assert conv is parts.motion_adapter.conv_in  # shared, not copied


@torch.no_grad()
def test_motion_unet_forward_shape(parts):
    b, f, h, w = 2, 4, 8, 8
    sample = torch.randn(b, PIA_CONV_IN_CHANNELS, f, h, w)  # [B, C, F, H, W]
    text = torch.randn(b * f, 77, parts.unet.config.cross_attention_dim)  # one text embedding per frame
    out = parts.unet(sample, torch.tensor(500), encoder_hidden_states=text).sample
    assert out.shape == (b, 4, f, h, w)
    assert torch.isfinite(out).all()


def test_same_seed_same_adapter_other_seed_differs(parts, base):
    again = build_pia(TINY, base)
    other = build_pia(ModelSpec(tiny=TinySpec(seed=1)), base)
    assert _same_weights(parts.motion_adapter, again.motion_adapter)
    assert _same_weights(parts.unet, again.unet)
    assert not _same_weights(parts.motion_adapter, other.motion_adapter)


def test_tiny_build_leaves_global_rng_alone(base):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_pia(ModelSpec(tiny=TinySpec(seed=5)), base)
    assert torch.equal(torch.rand(3), expected)


def test_adapter_must_fit_the_base(base):
    other_unet = type(base.unet).from_config({**base.unet.config, "layers_per_block": 2})
    other_base = dataclasses.replace(base, unet=other_unet)
    with pytest.raises(ValueError, match="does not fit"):
        build_pia(TINY, other_base)


# --- image -> video --------------------------------------------------------------------------------------


def test_pipeline_image_to_video(parts):
    frames = _run(parts, seed=0)
    assert isinstance(frames, np.ndarray) and frames.dtype == np.float32
    assert frames.shape == (1, 4, H, W, 3)  # [B, T, H, W, C]
    assert np.isfinite(frames).all() and frames.min() >= 0.0 and frames.max() <= 1.0
    assert frames.std() > 0.01
    np.testing.assert_array_equal(_run(parts, seed=0), frames)
    assert np.abs(_run(parts, seed=1) - frames).max() > 0.05


def test_pipeline_accepts_float_numpy_image(parts):
    # A NumPy image is taken as floats in [0, 1] (uint8 is not rescaled): the same picture as PIL.
    pil = _run(parts, seed=0)
    arr = _run(parts, seed=0, image=_image(0).astype(np.float32) / 255.0)
    np.testing.assert_allclose(arr, pil, atol=1e-5)


def test_eight_frames(parts):
    assert _run(parts, seed=0, num_frames=8).shape == (1, 8, H, W, 3)


# --- animate ---------------------------------------------------------------------------------------------

IMAGES = [_image(1), _image(2), _image(3)]
PROMPTS = ["a dog runs on the beach", "fireworks over a city", "a cat sleeping on a sofa"]
SEEDS = [11, 12, 13]


@pytest.fixture(scope="module")
def batched(parts):
    return animate(parts, IMAGES, PROMPTS, SEEDS, **ANIMATE)


def test_animate_shapes_and_dtype(batched):
    assert len(batched) == len(IMAGES)
    for video in batched:
        assert video.shape == (4, H, W, 3) and video.dtype == np.uint8
        assert video.std() > 1


def test_animate_batch_equals_single(parts, batched):
    for i in range(len(IMAGES)):
        (single,) = animate(parts, [IMAGES[i]], [PROMPTS[i]], [SEEDS[i]], **ANIMATE)
        assert np.abs(single.astype(int) - batched[i]).max() <= 2, i
    chunked = animate(parts, IMAGES, PROMPTS, SEEDS, batch_size=2, **ANIMATE)
    for a, b in zip(chunked, batched, strict=True):
        assert np.abs(a.astype(int) - b).max() <= 2


def test_animate_seed_controls_the_video(parts, batched):
    again = animate(parts, IMAGES[:1], PROMPTS[:1], SEEDS[:1], **ANIMATE)[0]
    other = animate(parts, IMAGES[:1], PROMPTS[:1], [SEEDS[0] + 100], **ANIMATE)[0]
    assert np.abs(again.astype(int) - batched[0]).max() <= 2
    np.testing.assert_array_equal(animate(parts, IMAGES[:1], PROMPTS[:1], SEEDS[:1], **ANIMATE)[0], again)
    assert np.abs(other.astype(int) - again).mean() > 1


def test_animate_resizes_other_sizes(parts):
    (video,) = animate(parts, [_image(4, (40, 72))], ["a dog"], [0], **{**ANIMATE, "frames": 2})
    assert video.shape == (2, H, W, 3)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"seeds": [1, 2]}, "one of each"),
        ({"frames": 33}, "frames"),
        ({"motion_scale": 9}, "motion_scale"),
        ({"height": 60}, "multiples of 8"),
        ({"batch_size": 0}, "batch_size"),
        ({"images": [_image(0).astype(np.float32)]}, "uint8"),
    ],
)
def test_animate_rejects_bad_arguments(parts, kwargs, match):
    args = {"images": IMAGES[:1], "prompts": PROMPTS[:1], "seeds": SEEDS[:1], **ANIMATE, **kwargs}
    with pytest.raises(ValueError, match=match):
        animate(parts, **args)


def test_animate_nothing(parts):
    assert animate(parts, [], [], [], **ANIMATE) == []


# --- local directories and the HF cache ------------------------------------------------------------------


def test_adapter_save_pretrained_roundtrip(parts, base, tmp_path):
    parts.motion_adapter.save_pretrained(tmp_path)
    loaded = build_pia(ModelSpec(pretrained=str(tmp_path)), base)
    assert loaded.model_id == f"pia:{tmp_path}@main+sd15:tiny-random(seed=0)"
    assert type(loaded.motion_adapter) is MotionAdapter
    assert _same_weights(loaded.motion_adapter, parts.motion_adapter)
    assert _same_weights(loaded.unet, parts.unet)
    np.testing.assert_array_equal(_run(loaded, seed=0), _run(parts, seed=0))


@pytest.fixture
def empty_hf_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    return tmp_path / "hf"


def test_hub_cache_hit_loads_offline(parts, base, empty_hf_home, monkeypatch):
    commit = "0" * 40
    repo = empty_hf_home / "hub" / "models--some-org--tiny-pia"
    parts.motion_adapter.save_pretrained(repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(loading_mod, "hub_reachable", lambda *a, **k: pytest.fail("probed the hub"))
    loaded = build_pia(ModelSpec(pretrained="some-org/tiny-pia"), base)
    assert _same_weights(loaded.motion_adapter, parts.motion_adapter)


def test_offline_missing_adapter_fails_at_once(base, empty_hf_home, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(loading_mod, "hub_reachable", lambda *a, **k: pytest.fail("probed the hub"))
    start = time.monotonic()
    with pytest.raises(ModelUnavailableError) as err:
        build_pia(ModelSpec(pretrained=PIA_ADAPTER_ID, revision="v1"), base)
    assert time.monotonic() - start < 5
    for expected in (PIA_ADAPTER_ID, "'v1'", "<repository root>", "HF_HUB_OFFLINE", "HF_HOME"):
        assert expected in str(err.value)


def test_unreachable_hub_fails_within_seconds(base, empty_hf_home, monkeypatch):
    endpoint = "http://127.0.0.1:9"
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.setattr(loading_mod.hf_constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(loading_mod.hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(loading_mod, "CONNECT_TIMEOUT_S", 1.0)
    start = time.monotonic()
    with pytest.raises(ModelUnavailableError, match="some-org/does-not-exist") as err:
        build_pia(ModelSpec(pretrained="some-org/does-not-exist"), base)
    assert time.monotonic() - start < 5
    assert "unreachable" in str(err.value)


def test_local_directory_without_adapter_fails(base, tmp_path):
    with pytest.raises(ModelUnavailableError, match="config.json"):
        build_pia(ModelSpec(pretrained=str(tmp_path)), base)
