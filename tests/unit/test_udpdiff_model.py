"""UDPDiff's widened CogVideoX transformer: initialisation, task embedding, save/load."""

from __future__ import annotations

import pytest
import torch
from diffusers import CogVideoXTransformer3DModel

from vidprior.models import ModelSpec, TinySpec, build_cogvideox
from vidprior.udpdiff.model import (
    TASKS,
    UDPDiffTransformer3DModel,
    join_latent,
    split_latent,
    task_id,
    widen_from_base,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# fp32 on CPU: a zero half adds exact zeros, so the halves match to rounding of identical kernels.
ATOL = 1e-5


def _small_config(**overrides) -> dict:
    config = dict(
        num_attention_heads=2,
        attention_head_dim=16,
        in_channels=4,
        out_channels=4,
        time_embed_dim=16,
        text_embed_dim=32,
        num_layers=1,
        sample_width=12,
        sample_height=8,
        sample_frames=9,
        patch_size=2,
        temporal_compression_ratio=4,
        # The sin-cos table covers the text positions too; CogVideoX pads text to this length.
        max_text_seq_length=7,
    )
    return {**config, **overrides}


def _variants() -> dict[str, CogVideoXTransformer3DModel]:
    torch.manual_seed(0)
    return {
        # The project's tiny CogVideoX (1.0 layout, rotary positions, as 5B).
        "tiny-5b-like": build_cogvideox(ModelSpec(tiny=TinySpec(seed=0))).transformer,
        # 2B: sin-cos positional table (a non-persistent buffer), no rotary embeddings.
        "2b-like": CogVideoXTransformer3DModel(**_small_config()).eval(),
        # 1.5: Linear patch embedding over a temporal patch, no patch bias.
        "1.5-like": CogVideoXTransformer3DModel(
            **_small_config(patch_size_t=2, patch_bias=False, use_rotary_positional_embeddings=True)
        ).eval(),
    }


VARIANTS = _variants()


def _inputs(channels: int, frames: int = 4):
    generator = torch.Generator().manual_seed(1)
    latent = torch.randn(2, frames, channels, 8, 12, generator=generator)
    text = torch.randn(2, 7, 32, generator=generator)
    timestep = torch.tensor([10, 700])
    return latent, text, timestep


def _run(model, latent, text, timestep, **kwargs) -> torch.Tensor:
    with torch.no_grad():
        return model(latent, text, timestep, return_dict=False, **kwargs)[0]


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_duplicated_model_reproduces_the_base_on_each_half(name):
    base = VARIANTS[name]
    model = widen_from_base(base)
    assert model.config.in_channels == 2 * base.config.in_channels
    assert model.config.out_channels == 2 * base.config.out_channels
    latent, text, timestep = _inputs(base.config.in_channels)
    expected = _run(base, latent, text, timestep)
    for task in TASKS.values():
        video, dense = split_latent(
            _run(model, join_latent(latent, torch.zeros_like(latent)), text, timestep, task_id=task)
        )
        torch.testing.assert_close(video, expected, atol=ATOL, rtol=0)
        torch.testing.assert_close(dense, expected, atol=ATOL, rtol=0)


def test_duplicate_init_is_not_an_identity_once_the_dense_half_is_nonzero():
    base = VARIANTS["tiny-5b-like"]
    model = widen_from_base(base)
    latent, text, timestep = _inputs(base.config.in_channels)
    video, _ = split_latent(_run(model, join_latent(latent, latent), text, timestep, task_id=0))
    assert (video - _run(base, latent, text, timestep)).abs().max() > 1e-3


def test_widening_copies_weights_channel_major_and_leaves_the_base_untouched():
    base = VARIANTS["1.5-like"]
    before = {k: v.clone() for k, v in base.state_dict().items()}
    model = widen_from_base(base)
    for key, value in base.state_dict().items():
        torch.testing.assert_close(value, before[key], atol=0, rtol=0)
    channels = base.config.in_channels
    w_in = model.patch_embed.proj.weight.reshape(model.patch_embed.proj.weight.shape[0], 2 * channels, -1)
    base_in = base.patch_embed.proj.weight.reshape(w_in.shape[0], channels, -1)
    torch.testing.assert_close(w_in[:, :channels], base_in, atol=0, rtol=0)
    torch.testing.assert_close(w_in[:, channels:], base_in, atol=0, rtol=0)
    torch.testing.assert_close(model.proj_out.bias.reshape(2, -1)[1], base.proj_out.bias, atol=0, rtol=0)
    shared = set(before) - {"patch_embed.proj.weight", "proj_out.weight", "proj_out.bias"}
    for key in shared:
        torch.testing.assert_close(model.state_dict()[key], before[key], atol=0, rtol=0)


def test_random_init_keeps_the_video_half_pretrained_and_draws_the_dense_half():
    base = VARIANTS["tiny-5b-like"]
    model = widen_from_base(base, dense_init="random", seed=3)
    channels = base.config.in_channels
    w_in = model.patch_embed.proj.weight
    torch.testing.assert_close(w_in[:, :channels], base.patch_embed.proj.weight, atol=0, rtol=0)
    assert not torch.allclose(w_in[:, channels:], base.patch_embed.proj.weight)
    fan_in = w_in[0].numel()
    assert w_in[:, channels:].abs().max() <= 1 / fan_in**0.5
    again = widen_from_base(base, dense_init="random", seed=3)
    torch.testing.assert_close(again.proj_out.weight, model.proj_out.weight, atol=0, rtol=0)


def test_task_embedding_starts_at_zero_and_then_separates_the_tasks():
    model = widen_from_base(VARIANTS["tiny-5b-like"])
    assert model.task_embedding.weight.abs().max() == 0
    latent, text, timestep = _inputs(model.config.in_channels)
    torch.testing.assert_close(
        _run(model, latent, text, timestep, task_id=0), _run(model, latent, text, timestep, task_id=1)
    )
    with torch.no_grad():
        model.task_embedding.weight[1].normal_(generator=torch.Generator().manual_seed(0))
    seg = _run(model, latent, text, timestep, task_id=0)
    depth = _run(model, latent, text, timestep, task_id=1)
    assert (seg - depth).abs().max() > 1e-3
    mixed = _run(model, latent, text, timestep, task_id=torch.tensor([0, 1]))
    torch.testing.assert_close(mixed[0], seg[0])
    torch.testing.assert_close(mixed[1], depth[1])


def test_task_embedding_receives_gradients():
    model = widen_from_base(VARIANTS["tiny-5b-like"]).train()
    latent, text, timestep = _inputs(model.config.in_channels)
    model(latent, text, timestep, task_id=1, return_dict=False)[0].square().mean().backward()
    assert model.task_embedding.weight.grad[1].abs().sum() > 0
    assert model.task_embedding.weight.grad[0].abs().sum() == 0


def test_save_and_load_round_trip(tmp_path):
    model = widen_from_base(VARIANTS["1.5-like"])
    with torch.no_grad():
        model.task_embedding.weight.uniform_(-1, 1)
    model.save_pretrained(tmp_path)
    loaded = UDPDiffTransformer3DModel.from_pretrained(tmp_path)
    assert (tmp_path / "diffusion_pytorch_model.safetensors").exists()
    assert loaded.config.num_tasks == len(TASKS)
    assert loaded.config.patch_size_t == 2 and loaded.config.in_channels == 8
    latent, text, timestep = _inputs(8)
    torch.testing.assert_close(
        _run(loaded, latent, text, timestep, task_id=1), _run(model, latent, text, timestep, task_id=1)
    )


def test_bad_task_ids_and_bases_are_refused():
    model = widen_from_base(VARIANTS["tiny-5b-like"])
    latent, text, timestep = _inputs(model.config.in_channels)
    with pytest.raises(ValueError, match=r"task_id must be in \[0, 2\)"):
        _run(model, latent, text, timestep, task_id=2)
    with pytest.raises(ValueError, match="3 entries for a batch of 2"):
        _run(model, latent, text, timestep, task_id=torch.tensor([0, 1, 0]))
    with pytest.raises(ValueError, match="already a UDPDiff transformer"):
        widen_from_base(model)
    with pytest.raises(ValueError, match="dense_init"):
        widen_from_base(VARIANTS["2b-like"], dense_init="zeros")
    with pytest.raises(ValueError, match="unknown task 'normals'"):
        task_id("normals")
    assert task_id("depth") == 1
