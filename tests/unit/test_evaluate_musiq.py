"""The torch MUSIQ (pyiqa's architecture and names): patch pyramid, hashing, masking, weight loading."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from vidprior.models.musiq import (
    MUSIQ,
    TINY_MUSIQ_CONFIG,
    MusiqConfig,
    build_musiq,
    hashed_spatial_positions,
    multiscale_patches,
)
from vidprior.models.spec import ModelSpec, TinySpec

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def images(n: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, height, width, generator=torch.Generator().manual_seed(seed))


def test_hashed_positions_map_any_patch_grid_onto_the_table():
    # 2 x 2 patches on a 4 x 4 table: rows and columns 0 and 2.
    assert hashed_spatial_positions(4, 2, 2).tolist() == [0, 2, 8, 10]
    # 1 x 3 patches: one row (0), columns 0, 1, 2 of 4 (nearest: floor(i * 4 / 3)).
    assert hashed_spatial_positions(4, 1, 3).tolist() == [0, 1, 2]
    assert hashed_spatial_positions(10, 7, 5).max() < 100


def test_patch_pyramid_layout_for_a_portrait_image():
    config = TINY_MUSIQ_CONFIG  # patches of 8; long sides 32 and 48; plus the original
    tokens = multiscale_patches(images(2, 48, 32) * 2 - 1, config)
    # 32-long scale: 32 x 21 -> 4 x 3 = 12 patches padded to 16; 48: 48 x 32 -> 6 x 4 = 24 padded to 36;
    # the original 48 x 32: 24 patches, unpadded.
    assert tokens.shape == (2, 16 + 36 + 24, 3 * 8 * 8 + 3)
    scale, mask = tokens[0, :, -2], tokens[0, :, -1]
    assert mask.tolist() == [1] * 12 + [0] * 4 + [1] * 24 + [0] * 12 + [1] * 24
    assert scale[mask == 1].tolist() == [0] * 12 + [1] * 24 + [2] * 24
    assert (tokens[0, mask == 0] == 0).all()  # padding is zeros: position 0, scale 0


def test_output_is_one_score_per_image_and_deterministic_for_a_seed():
    a = build_musiq(ModelSpec(tiny=TinySpec(seed=0)))
    b = build_musiq(ModelSpec(tiny=TinySpec(seed=0)))
    c = build_musiq(ModelSpec(tiny=TinySpec(seed=1)))
    x = images(3, 40, 56)
    with torch.inference_mode():
        out = a(x)
        assert out.shape == (3,)
        assert torch.equal(out, b(x))
        assert not torch.allclose(out, c(x))
        # Each image is scored on its own: a batch equals one image at a time.
        assert torch.allclose(out, torch.cat([a(x[i : i + 1]) for i in range(3)]), atol=1e-5)


@pytest.mark.parametrize(("height", "width"), [(17, 90), (64, 64), (90, 30), (8, 8)])
def test_any_size_and_aspect_ratio_scores(height, width):
    model = build_musiq(ModelSpec(tiny=TinySpec(seed=0)))
    with torch.inference_mode():
        assert torch.isfinite(model(images(1, height, width))).all()


def test_padding_is_masked_out():
    # More padding, or padding with other content, must not move the score: attention never reads it.
    model = build_musiq(ModelSpec(tiny=TinySpec(seed=0)))
    tokens = multiscale_patches(images(1, 48, 16) * 2 - 1, TINY_MUSIQ_CONFIG)
    assert (tokens[..., -1] == 0).any()
    noise = torch.randn(1, 7, tokens.shape[-1], generator=torch.Generator().manual_seed(1))
    noise[..., -3:-1] = noise[..., -3:-1].abs().floor().clamp(max=2)  # valid position and scale ids
    noise[..., -1] = 0  # masked
    with torch.inference_mode():
        reference = model.score_tokens(tokens)
        assert torch.allclose(model.score_tokens(torch.cat([tokens, noise], dim=1)), reference, atol=1e-5)
        padded = tokens.clone()
        pad = padded[..., -1] == 0
        padded[..., :-3][pad] = 1.0
        assert torch.allclose(model.score_tokens(padded), reference, atol=1e-5)
        assert torch.allclose(model(images(1, 48, 16)), reference)


def test_pyiqa_checkpoints_load_by_name(tmp_path):
    # pyiqa's layout: Linear MOS head for KonIQ/SPAQ, softmax over 10 bins for AVA; weights may sit
    # under "params" and carry a DataParallel prefix.
    source = MUSIQ(MusiqConfig(num_class=10))
    names = set(source.state_dict())
    for expected in (
        "conv_root.weight",
        "block1.conv_proj.weight",
        "block1.gn3.bias",
        "embedding.weight",
        "transformer_encoder.posembed_input.position_emb",
        "transformer_encoder.scaleembed_input.scale_emb",
        "transformer_encoder.cls",
        "transformer_encoder.transformer.encoderblock_13.attention.query.weight",
        "transformer_encoder.transformer.encoderblock_13.mlp.fc2.bias",
        "transformer_encoder.encoder_norm.weight",
        "head.0.weight",
    ):
        assert expected in names
    assert source.state_dict()["embedding.weight"].shape == (384, 64 * 4 * 8 * 8)
    assert source.state_dict()["transformer_encoder.posembed_input.position_emb"].shape == (1, 100, 384)
    assert source.state_dict()["transformer_encoder.scaleembed_input.scale_emb"].shape == (3, 384)
    path = tmp_path / "musiq_ava.pth"
    torch.save({"params": {f"module.{k}": v for k, v in source.state_dict().items()}}, path)
    loaded = build_musiq(ModelSpec(pretrained=str(path)))
    x = images(1, 48, 64)
    with torch.inference_mode():
        score = loaded(x)
        assert torch.allclose(score, source.eval()(x))
    assert 1.0 <= float(score) <= 10.0  # the mean of a distribution over 1..10


def test_safetensors_and_wrong_files(tmp_path):
    tiny = build_musiq(ModelSpec(tiny=TinySpec(seed=0)))
    path = tmp_path / "tiny.safetensors"
    save_file(tiny.state_dict(), str(path))
    with pytest.raises(ValueError, match="not a MUSIQ checkpoint in pyiqa's layout"):
        build_musiq(ModelSpec(pretrained=str(path)))  # tiny shapes are not the real config's
