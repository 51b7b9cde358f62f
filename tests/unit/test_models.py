"""vidprior.models: tiny builders (same classes as the real models), pipelines, loading, offline failures."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from PIL import Image

from vidprior.models import (
    ModelSpec,
    ModelUnavailableError,
    TextEmbedderSpec,
    build_cogvideox,
    build_sd15,
    build_svd,
    build_text_embedder,
)
from vidprior.models import loading as loading_mod

TINY = ModelSpec(tiny={"seed": 0})
BUILDERS = {"sd15": build_sd15, "svd": build_svd, "cogvideox": build_cogvideox}
# The weight-carrying parts of each family.
MODULES = {
    "sd15": ("unet", "vae", "text_encoder"),
    "svd": ("unet", "vae", "image_encoder"),
    "cogvideox": ("transformer", "vae", "text_encoder"),
}


@pytest.fixture(scope="module")
def tiny_parts():
    return {name: build(TINY) for name, build in BUILDERS.items()}


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _quiet(pipe):
    pipe.set_progress_bar_config(disable=True)
    return pipe


# --- forward passes --------------------------------------------------------------------------------------


@torch.no_grad()
def test_sd15_unet_and_vae_shapes(tiny_parts):
    p = tiny_parts["sd15"]
    ids = p.tokenizer(["a dog", "a cat on a mat"], padding="max_length", truncation=True, return_tensors="pt")
    text = p.text_encoder(ids.input_ids).last_hidden_state
    assert text.shape == (2, p.tokenizer.model_max_length, p.unet.config.cross_attention_dim)
    latent = torch.randn(2, 4, 8, 8)
    eps = p.unet(latent, torch.tensor([10, 500]), encoder_hidden_states=text).sample
    assert eps.shape == latent.shape
    image = torch.rand(1, 3, 16, 16) * 2 - 1
    z = p.vae.encode(image).latent_dist.sample()
    assert z.shape == (1, 4, 8, 8)
    assert p.vae.decode(z).sample.shape == image.shape
    assert p.model_id == "tiny-random(seed=0)"


@torch.no_grad()
def test_svd_unet_and_vae_shapes(tiny_parts):
    p = tiny_parts["svd"]
    b, f = 2, 3
    image_embeds = p.image_encoder(torch.randn(b, 3, 224, 224)).image_embeds.unsqueeze(1)
    assert image_embeds.shape == (b, 1, p.unet.config.cross_attention_dim)
    latents = torch.randn(b, f, 8, 8, 8)  # [B, F, C, H, W]: noisy latent + image latent on channels
    added_time_ids = torch.tensor([[6.0, 127.0, 0.02]] * b)  # fps, motion bucket, noise aug strength
    out = p.unet(
        latents, torch.tensor(1.5), encoder_hidden_states=image_embeds, added_time_ids=added_time_ids
    )
    assert out.sample.shape == (b, f, 4, 8, 8)
    frames = torch.rand(f, 3, 16, 16) * 2 - 1
    z = p.vae.encode(frames).latent_dist.mode()
    assert z.shape == (f, 4, 8, 8)
    assert p.vae.decode(z, num_frames=f).sample.shape == frames.shape


@torch.no_grad()
def test_cogvideox_transformer_and_vae_shapes(tiny_parts):
    p = tiny_parts["cogvideox"]
    ids = p.tokenizer(["dance monkey", "a cat"], padding="max_length", max_length=16, return_tensors="pt")
    text = p.text_encoder(ids.input_ids).last_hidden_state
    assert text.shape == (2, 16, p.transformer.config.text_embed_dim)
    latents = torch.randn(2, 3, 4, 4, 4)  # [B, F, C, H, W]
    out = p.transformer(latents, encoder_hidden_states=text, timestep=torch.tensor([10, 900])).sample
    assert out.shape == latents.shape
    video = torch.rand(1, 3, 9, 16, 16) * 2 - 1  # [B, C, F, H, W]: 9 frames -> 3 latent frames
    z = p.vae.encode(video).latent_dist.sample()
    assert z.shape == (1, p.transformer.config.in_channels, 3, 4, 4)
    assert p.vae.decode(z).sample.shape == video.shape


# --- determinism -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", BUILDERS)
def test_same_seed_same_weights_other_seed_differs(family, tiny_parts):
    again = BUILDERS[family](TINY)
    other = BUILDERS[family](ModelSpec(tiny={"seed": 1}))
    for name in MODULES[family]:
        assert _same_weights(getattr(tiny_parts[family], name), getattr(again, name)), name
        assert not _same_weights(getattr(tiny_parts[family], name), getattr(other, name)), name


def test_tiny_build_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_sd15(ModelSpec(tiny={"seed": 5}))
    assert torch.equal(torch.rand(3), expected)


def test_tiny_dtype_is_applied():
    parts = build_cogvideox(ModelSpec(tiny={"seed": 0}, dtype="bfloat16"))
    assert parts.transformer.dtype == parts.text_encoder.dtype == torch.bfloat16


# --- pipelines end to end --------------------------------------------------------------------------------


def test_sd15_pipeline_runs(tiny_parts):
    pipe = _quiet(tiny_parts["sd15"].pipeline())
    out = pipe(
        ["a dog", "a cat"],
        num_inference_steps=2,
        output_type="pt",
        generator=torch.Generator().manual_seed(0),
    )
    assert out.images.shape == (2, 3, 16, 16)
    assert torch.isfinite(out.images).all()


def test_svd_pipeline_runs(tiny_parts):
    pipe = _quiet(tiny_parts["svd"].pipeline())
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (16, 16, 3), dtype=np.uint8))
    out = pipe(
        image,
        height=16,
        width=16,
        num_frames=3,
        num_inference_steps=2,
        output_type="pt",
        generator=torch.Generator().manual_seed(0),
    )
    assert out.frames.shape == (1, 3, 3, 16, 16)  # [B, F, C, H, W]
    assert torch.isfinite(out.frames).all()


def test_cogvideox_pipeline_runs(tiny_parts):
    pipe = _quiet(tiny_parts["cogvideox"].pipeline())
    out = pipe(
        "dance monkey",
        height=16,
        width=16,
        num_frames=9,
        num_inference_steps=2,
        max_sequence_length=16,
        output_type="pt",
        generator=torch.Generator().manual_seed(0),
    )
    assert out.frames.shape == (1, 9, 3, 16, 16)  # [B, F, C, H, W]
    assert torch.isfinite(out.frames).all()


# --- local directories and the HF cache ------------------------------------------------------------------


@pytest.mark.parametrize("family", BUILDERS)
def test_save_pretrained_roundtrip_through_builder(family, tiny_parts, tmp_path):
    parts = tiny_parts[family]
    parts.pipeline().save_pretrained(tmp_path)
    loaded = BUILDERS[family](ModelSpec(pretrained=str(tmp_path)))
    assert loaded.model_id == f"{tmp_path}@main"
    for name in MODULES[family]:
        assert type(getattr(loaded, name)) is type(getattr(parts, name))
        assert _same_weights(getattr(loaded, name), getattr(parts, name)), name
    if hasattr(parts, "tokenizer"):
        assert type(loaded.tokenizer) is type(parts.tokenizer)
        assert loaded.tokenizer("a dog, 42").input_ids == parts.tokenizer("a dog, 42").input_ids
    assert type(loaded.scheduler) is type(parts.scheduler)
    public = lambda config: {k: v for k, v in config.items() if not k.startswith("_")}  # noqa: E731
    assert public(loaded.scheduler.config) == public(parts.scheduler.config)


@pytest.fixture
def empty_hf_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    return tmp_path / "hf"


def test_hub_cache_hit_loads_offline(tiny_parts, empty_hf_home, monkeypatch):
    # Lay the saved pipeline out as huggingface_hub's cache would, as if downloaded earlier.
    commit = "0" * 40
    repo = empty_hf_home / "hub" / "models--some-org--tiny-sd15"
    tiny_parts["sd15"].pipeline().save_pretrained(repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(loading_mod, "hub_reachable", lambda *a, **k: pytest.fail("probed the hub"))
    parts = build_sd15(ModelSpec(pretrained="some-org/tiny-sd15"))
    assert _same_weights(parts.unet, tiny_parts["sd15"].unet)
    assert parts.model_id == "some-org/tiny-sd15@main"


def test_offline_missing_model_fails_at_once(empty_hf_home, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(loading_mod, "hub_reachable", lambda *a, **k: pytest.fail("probed the hub"))
    start = time.monotonic()
    with pytest.raises(ModelUnavailableError) as err:
        build_sd15(ModelSpec(pretrained="some-org/does-not-exist", revision="v1"))
    assert time.monotonic() - start < 5
    message = str(err.value)
    for expected in ("some-org/does-not-exist", "'v1'", "'unet'", "HF_HUB_OFFLINE", "HF_HOME", "local dir"):
        assert expected in message


@pytest.mark.parametrize("endpoint", ["http://127.0.0.1:9", "https://10.255.255.1"])
def test_unreachable_hub_fails_within_seconds(endpoint, empty_hf_home, monkeypatch):
    # huggingface_hub reads HF_ENDPOINT / HF_HUB_OFFLINE once at import; patch the values the loader reads.
    # 10.255.255.1 is a blackhole, or (behind a transparent proxy) accepts TCP but fails TLS.
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.setattr(loading_mod.hf_constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(loading_mod.hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(loading_mod, "CONNECT_TIMEOUT_S", 1.0)
    start = time.monotonic()
    with pytest.raises(ModelUnavailableError, match="some-org/does-not-exist") as err:
        build_svd(ModelSpec(pretrained="some-org/does-not-exist"))
    assert time.monotonic() - start < 5
    assert "unreachable" in str(err.value)


def test_local_directory_without_component_fails(tmp_path):
    with pytest.raises(ModelUnavailableError, match="'transformer'"):
        build_cogvideox(ModelSpec(pretrained=str(tmp_path)))


# --- text embedders --------------------------------------------------------------------------------------

PROMPTS = ["a dog runs on the beach", "A cat sleeping on a sofa", "", "fireworks over a city at night"]


@pytest.mark.parametrize(
    "spec",
    [TextEmbedderSpec(hashing={}), TextEmbedderSpec(tiny={"seed": 0}, batch_size=3)],
    ids=["hashing", "tiny-clip"],
)
def test_text_embedder_rows_are_unit_norm(spec):
    embedder = build_text_embedder(spec)
    x = embedder.embed(PROMPTS)
    assert x.dtype == np.float32 and x.shape == (len(PROMPTS), embedder.dim)
    assert not np.isnan(x).any()
    norms = np.linalg.norm(x, axis=1)
    if spec.hashing is not None:
        assert norms[2] == 0.0  # an empty text has no n-grams: its row stays zero
        norms = np.delete(norms, 2)
    np.testing.assert_allclose(norms, 1.0, atol=1e-5)
    # Stateless / batch-independent: another instance, another batching, the same rows.
    again = build_text_embedder(spec).embed(PROMPTS[::-1])[::-1]
    np.testing.assert_allclose(again, x, atol=1e-5)
    assert embedder.model_id == spec.model_id
    assert embedder.embed([]).shape == (0, embedder.dim)


def test_hashing_embedder_separates_near_duplicates():
    embedder = build_text_embedder(TextEmbedderSpec(hashing={"dim": 512}))
    near = [
        ("a dog runs on the beach", "a dog running on the beach at sunset"),
        ("a cat sleeping on a sofa", "a cat sleeps on the sofa"),
        ("a chef cooking pasta in a kitchen", "a chef cooks pasta in the kitchen"),
        ("a robot dancing in space", "a robot dances in outer space"),
    ]
    far = [
        ("a dog runs on the beach", "a spaceship orbiting jupiter"),
        ("a cat sleeping on a sofa", "fireworks over a city at night"),
        ("a chef cooking pasta in a kitchen", "waves crashing on rocks"),
        ("a robot dancing in space", "close-up of a blooming flower"),
    ]

    def cosine(pairs):
        a, b = (embedder.embed([p[i] for p in pairs]) for i in (0, 1))
        return (a * b).sum(axis=1)

    near_cos, far_cos = cosine(near), cosine(far)
    assert near_cos.min() > far_cos.max() + 0.2
    assert far_cos.max() < 0.4
