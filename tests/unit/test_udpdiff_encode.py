"""Stage `udpdiff.encode`: tiny CogVideoX VAE + T5 over a small hand-built Panda-Dense directory."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from safetensors.torch import load_file

from vidprior.config import SyntheticDenseParams, params_from_dict
from vidprior.io.checkpoint import PARTIAL_DIR
from vidprior.io.manifest import read_manifest, read_rejects, write_manifest
from vidprior.io.media import write_video
from vidprior.models import build_cogvideox
from vidprior.udpdiff import encode
from vidprior.udpdiff.pixelplanes import encode_depth, encode_segmentation, palette_to_json
from vidprior.udpdiff.synthetic import render_clip

ROOT = Path(__file__).resolve().parents[2]
FRAMES, HEIGHT, WIDTH, FPS = 9, 32, 48, 8
TOKENS = 64  # the tiny T5 tokenizer is nearly one token per character

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make_dataset(
    root: Path, clips: int = 3, *, frames: int = FRAMES, height: int = HEIGHT, width: int = WIDTH
) -> Path:
    """A `udpdiff.dataset`-shaped directory: clips/, seg/, depth/ videos and the manifest."""
    cfg = SyntheticDenseParams(
        videos=1, clips_per_video=1, frames=frames, height=height, width=width, fps=FPS, max_entities=3
    )
    rows = []
    for k in range(clips):
        clip_id = f"synth{k:05d}.0"
        clip = render_clip(cfg, seed=100 + k)
        seg, palette = encode_segmentation(clip.masks, seed=k)
        paths = {
            "clip_path": f"clips/{clip_id}.mp4",
            "seg_path": f"seg/{clip_id}.mp4",
            "depth_path": f"depth/{clip_id}.mp4",
        }
        write_video(root / paths["clip_path"], clip.frames, FPS, lossless=True)
        write_video(root / paths["seg_path"], seg, FPS, lossless=True)
        write_video(root / paths["depth_path"], encode_depth(clip.depth), FPS, lossless=True)
        rows.append(
            dict(
                id=clip_id,
                **paths,
                short_caption=clip.caption,
                long_caption=f"take {k}: the camera pans slowly over a textured background as {clip.caption}",
                palette=palette_to_json(palette),
                entities=len(clip.entities),
                frames=frames,
                height=height,
                width=width,
                fps=FPS,
            )
        )
    write_manifest(pd.DataFrame(rows), root)
    return root


def params_with(**encode_update):
    data = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    data["udpdiff"]["encode"] = {"max_text_tokens": TOKENS, "batch_size": 2, **encode_update}
    return params_from_dict(data)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("dataset"))


@pytest.fixture(scope="module")
def encoded(dataset, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("encoded") / "out"
    return out, encode.run(params_with(), [dataset], out)


def test_latents_and_embeddings_have_the_contract_shapes(encoded):
    out, metrics = encoded
    manifest = read_manifest(out)
    assert manifest["id"].tolist() == [f"synth{k:05d}.0" for k in range(3)]
    assert metrics["kept"] == 3 and metrics["rejected"] == 0 and metrics["clips_in"] == 3
    # Tiny CogVideoX: 4 latent channels, 4x temporal (9 -> 1 + 8/4 = 3) and 4x spatial compression.
    row = manifest.iloc[0]
    assert (row.latent_frames, row.latent_channels, row.latent_height, row.latent_width) == (3, 4, 8, 12)
    assert (row.text_tokens, row.text_dim) == (TOKENS, 32)
    assert row.base_model == "tiny-random(seed=0)" and row.latent_statistic == "posterior_mean"
    assert row.vae_scaling_factor == pytest.approx(0.7)
    tensors = load_file(out / row.latent_path)
    assert sorted(tensors) == ["depth", "long_text", "segmentation", "short_text", "video"]
    for key in ("video", "segmentation", "depth"):
        assert tensors[key].shape == (3, 4, 8, 12) and tensors[key].dtype == torch.float32
        assert torch.isfinite(tensors[key]).all()
    for key in ("long_text", "short_text"):
        assert tensors[key].shape == (TOKENS, 32) and tensors[key].dtype == torch.float32
    # Three different videos, two different captions: no slot holds another's content.
    assert not torch.equal(tensors["segmentation"], tensors["depth"])
    assert not torch.equal(tensors["long_text"], tensors["short_text"])
    recorded = encode.read_metadata(out / row.latent_path)
    assert recorded["id"] == row.id and recorded["base_model"] == row.base_model
    assert not (out / PARTIAL_DIR).exists()


def test_latent_is_the_scaled_posterior_mean_frames_first_and_text_the_pipelines(encoded, dataset):
    out, _ = encoded
    parts = build_cogvideox(params_with().models.cogvideox)
    source = read_manifest(dataset).iloc[1]
    from vidprior.io.media import read_video

    frames, _ = read_video(dataset / source.seg_path)
    x = encode.frames_to_tensor(frames)[None]
    with torch.no_grad():
        mean = parts.vae.encode(x).latent_dist.mean * parts.vae.config.scaling_factor
        text, _ = parts.pipeline().encode_prompt(
            source.long_caption, do_classifier_free_guidance=False, max_sequence_length=TOKENS
        )
    stored = load_file(out / encode.latent_path(source.id))
    torch.testing.assert_close(stored["segmentation"], mean[0].permute(1, 0, 2, 3), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(stored["long_text"], text[0], rtol=1e-5, atol=1e-5)


def test_encoding_is_deterministic_and_resumes(encoded, dataset, tmp_path, monkeypatch):
    out, _ = encoded
    again = tmp_path / "again"
    encode.run(params_with(), [dataset], again)
    for path in sorted((out / encode.LATENTS_DIR).glob("*.safetensors")):
        assert (again / encode.LATENTS_DIR / path.name).read_bytes() == path.read_bytes()
    pd.testing.assert_frame_equal(read_manifest(out), read_manifest(again))

    # Killed after both batches were checkpointed, before the manifest: the rerun needs no model.
    resumed = tmp_path / "resumed"

    def killed(*_args, **_kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(encode, "finish_stage", killed)
        with pytest.raises(KeyboardInterrupt):
            encode.run(params_with(), [dataset], resumed)
    assert (resumed / PARTIAL_DIR).is_dir()

    def refuse(*_args, **_kwargs):
        raise AssertionError("a fully checkpointed run must not load the model")

    monkeypatch.setattr(encode, "load_encoder", refuse)
    metrics = encode.run(params_with(), [dataset], resumed)
    assert metrics["resumed_batches"] == 2
    pd.testing.assert_frame_equal(read_manifest(out), read_manifest(resumed))


def test_bfloat16_storage(dataset, tmp_path):
    out = tmp_path / "bf16"
    encode.run(params_with(storage_dtype="bfloat16"), [dataset], out)
    row = read_manifest(out).iloc[0]
    assert row.storage_dtype == "bfloat16"
    tensors = load_file(out / row.latent_path)
    assert all(t.dtype == torch.bfloat16 for t in tensors.values())


def test_unusable_clips_are_rejected_with_reasons(tmp_path):
    good = make_dataset(tmp_path / "good", clips=2)
    ten = make_dataset(tmp_path / "ten", clips=1, frames=10)  # not 1 + 4k frames
    odd = make_dataset(tmp_path / "odd", clips=1, height=36)  # 36 is not a multiple of 4 x 2
    rows = read_manifest(good)
    extra = []
    for name, source in (("ten", ten), ("odd", odd)):
        row = read_manifest(source).iloc[0].to_dict()
        row["id"] = f"{name}00000.0"
        for column in encode.VIDEO_COLUMNS.values():
            target = good / f"{name}_{Path(row[column]).name}"
            target.write_bytes((source / row[column]).read_bytes())
            row[column] = target.name
        extra.append(row)
    broken = rows.iloc[1].to_dict() | {"id": "broken.0", "depth_path": "depth/missing.mp4"}
    mixed = rows.iloc[1].to_dict() | {"id": "mixed.0", "seg_path": extra[0]["seg_path"]}
    empty = rows.iloc[0].to_dict() | {"id": "empty.0", "long_caption": "  "}
    write_manifest(pd.DataFrame([*rows.to_dict("records"), *extra, broken, mixed, empty]), good)

    out = tmp_path / "out"
    metrics = encode.run(params_with(), [good], out)
    rejects = read_rejects(out).set_index("id")
    assert read_manifest(out)["id"].tolist() == rows["id"].tolist()
    assert rejects.loc["ten00000.0", "reason"] == "unsupported_frame_count"
    assert (
        "10 frames" in rejects.loc["ten00000.0", "detail"]
        and "9 or 13" in rejects.loc["ten00000.0", "detail"]
    )
    assert rejects.loc["odd00000.0", "reason"] == "unsupported_size"
    assert rejects.loc["broken.0", "reason"] == "unreadable_video"
    assert "depth_path" in rejects.loc["broken.0", "detail"]
    assert rejects.loc["mixed.0", "reason"] == "mismatched_videos"
    assert rejects.loc["empty.0", "reason"] == "empty_caption"
    assert "long_caption" in rejects.loc["empty.0", "detail"]
    assert (rejects["stage"] == encode.STAGE).all()
    assert metrics["kept"] + metrics["rejected"] == metrics["clips_in"] == 7
    assert metrics["rejected_unsupported_frame_count"] == 1
    assert not (out / encode.LATENTS_DIR / "ten00000.0.safetensors").exists()


def test_truncated_captions_are_counted(encoded):
    out, metrics = encoded
    manifest = read_manifest(out)
    # The long captions are longer than TOKENS tokens, the short ones shorter.
    assert manifest["long_text_truncated"].all() and metrics["long_captions_truncated"] == 3
    assert not manifest["short_text_truncated"].any() and metrics["short_captions_truncated"] == 0


def test_bad_input_is_reported(tmp_path, dataset):
    with pytest.raises(ValueError, match="dataset"):
        encode.run(params_with(), [], tmp_path / "out")
    no_caption = tmp_path / "no_caption"
    no_caption.mkdir()
    write_manifest(read_manifest(dataset).drop(columns=["long_caption"]), no_caption)
    with pytest.raises(ValueError, match="long_caption"):
        encode.run(params_with(), [no_caption], tmp_path / "out")
