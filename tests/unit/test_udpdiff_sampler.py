"""Joint sampling with the UDPDiff transformer: shapes, seeds, task ids, schedulers, decoding, base model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import CogVideoXDDIMScheduler, CogVideoXDPMScheduler, CogVideoXTransformer3DModel

from vidprior.models import ModelSpec, TinySpec, build_cogvideox
from vidprior.udpdiff import sampler
from vidprior.udpdiff.model import TASKS, split_latent, widen_from_base
from vidprior.unic.images import to_uint8

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SIZE = dict(steps=2, frames=9, height=32, width=48)
SPEC = ModelSpec(tiny=TinySpec(seed=0))
PROMPTS = ["a red ball rolls across a table", "a dog runs on the beach"]


def _model(task_scale: float = 0.0, with_base: bool = False) -> sampler.UDPDiffModel:
    parts = build_cogvideox(SPEC)
    transformer = widen_from_base(parts.transformer).eval()
    if task_scale:
        with torch.no_grad():
            weight = torch.randn(
                transformer.task_embedding.weight.shape, generator=torch.Generator().manual_seed(0)
            )
            transformer.task_embedding.weight.copy_(task_scale * weight)
    return sampler.from_parts(transformer, parts, base_spec=SPEC, with_base=with_base)


@pytest.fixture(scope="module")
def model():
    return _model(task_scale=1.0, with_base=True)


def test_shapes_and_provenance(model):
    out = sampler.generate(model, PROMPTS, ["segmentation", "depth"], [1, 2], **SIZE)
    assert len(out.videos) == len(out.dense) == 2
    for frames in (*out.videos, *out.dense):
        assert frames.shape == (9, 32, 48, 3) and frames.dtype == np.uint8
    assert out.tasks == ["segmentation", "depth"] and out.seeds == [1, 2]
    assert out.finite == [True, True]
    assert out.scheduler == "dpm++"
    assert out.denoise_seconds > 0 and out.decode_seconds > 0
    assert out.seconds == pytest.approx(out.encode_seconds + out.denoise_seconds + out.decode_seconds)


def test_same_seed_same_sample_and_independent_of_the_batch(model):
    first = sampler.generate(model, PROMPTS, "depth", [1, 2], **SIZE)
    again = sampler.generate(model, PROMPTS, "depth", [1, 2], **SIZE)
    for a, b in zip(first.videos + first.dense, again.videos + again.dense, strict=True):
        np.testing.assert_array_equal(a, b)
    alone = sampler.generate(model, PROMPTS[1:], "depth", [2], **SIZE)
    assert np.abs(alone.videos[0].astype(int) - first.videos[1]).max() <= 1
    assert np.abs(alone.dense[0].astype(int) - first.dense[1]).max() <= 1
    other = sampler.generate(model, PROMPTS[1:], "depth", [3], **SIZE)
    assert np.abs(other.dense[0].astype(int) - first.dense[1]).mean() > 1


def test_task_id_reaches_every_transformer_call_in_both_cfg_branches(model):
    seen = []

    # The task embedding sees the ids the transformer's forward resolved for its batch.
    def spy(_module, args):
        seen.append((len(args[0]), args[0].tolist()))

    handle = model.transformer.task_embedding.register_forward_pre_hook(spy)
    try:
        sampler.generate(model, PROMPTS, ["depth", "segmentation"], [1, 2], **SIZE)
        guided = list(seen)
        seen.clear()
        sampler.generate(model, PROMPTS, ["depth", "segmentation"], [1, 2], **SIZE, guidance_scale=1.0)
    finally:
        handle.remove()
    depth, seg = TASKS["depth"], TASKS["segmentation"]
    # CFG: [unconditional, conditional] halves of one batch, each with the samples' task ids.
    assert guided == [(4, [depth, seg, depth, seg])] * SIZE["steps"]
    assert seen == [(2, [depth, seg])] * SIZE["steps"]


def test_task_changes_the_dense_half_only_through_the_task_embedding(model):
    seg = sampler.generate(model, PROMPTS[:1], "segmentation", [7], **SIZE)
    depth = sampler.generate(model, PROMPTS[:1], "depth", [7], **SIZE)
    assert np.abs(seg.dense[0].astype(int) - depth.dense[0]).mean() > 1
    zero = _model(task_scale=0.0)
    seg0 = sampler.generate(zero, PROMPTS[:1], "segmentation", [7], **SIZE)
    depth0 = sampler.generate(zero, PROMPTS[:1], "depth", [7], **SIZE)
    np.testing.assert_array_equal(seg0.dense[0], depth0.dense[0])
    np.testing.assert_array_equal(seg0.videos[0], depth0.videos[0])


def test_both_halves_go_through_one_call_of_the_same_vae(model, monkeypatch):
    calls = []
    decode = model.vae.decode

    def spy(latents, *args, **kwargs):
        calls.append(latents.clone())
        return decode(latents, *args, **kwargs)

    monkeypatch.setattr(model.vae, "decode", spy)
    pipe = model.pipeline("dpm++")
    out = pipe(
        PROMPTS[:1], [TASKS["depth"]], seeds=[5], num_frames=9, height=32, width=48, num_inference_steps=2
    )
    assert len(calls) == 1
    video_latent, dense_latent = split_latent(out.latents)
    assert out.latents.shape == (1, 3, 8, 8, 12)  # 2 x the tiny VAE's 4 channels
    scale = pipe.vae_scaling_factor_image
    expected = torch.cat([video_latent, dense_latent]).permute(0, 2, 1, 3, 4) / scale
    torch.testing.assert_close(calls[0], expected)
    monkeypatch.undo()
    # Decoding each half on its own gives the same frames: the dense half is an ordinary video latent.
    for half, frames in ((video_latent, out.frames[0]), (dense_latent, out.dense[0])):
        with torch.no_grad():
            decoded = pipe.decode_latents(half)
        alone = to_uint8(pipe.video_processor.postprocess_video(decoded, output_type="np"))
        assert np.abs(alone[0].astype(int) - frames).max() <= 1


def test_base_sampling_equals_cogvideox_pipeline(model):
    base = sampler.sample_base(model, PROMPTS, [1, 2], **SIZE)
    assert base.dense is None and base.scheduler == "dpm++"
    parts = build_cogvideox(SPEC)
    pipe = parts.pipeline()
    pipe.set_progress_bar_config(disable=True)
    reference = pipe(
        PROMPTS,
        num_frames=9,
        height=32,
        width=48,
        num_inference_steps=2,
        generator=[torch.Generator().manual_seed(s) for s in (1, 2)],
        output_type="np",
    ).frames
    for ours, theirs in zip(base.videos, reference, strict=True):
        np.testing.assert_array_equal(ours, to_uint8(theirs))


def _config(**overrides) -> dict:
    return dict(build_cogvideox(SPEC).transformer.config, **overrides)


@pytest.mark.parametrize(
    ("choice", "pretrained", "rotary", "expected"),
    [
        ("auto", None, True, "dpm++"),  # the tiny model: 5B layout
        ("auto", None, False, "ddim"),  # 2B architecture: sin-cos positions, no rotary
        ("auto", "zai-org/CogVideoX-2b", True, "ddim"),
        ("auto", "THUDM/CogVideoX-5b", True, "dpm++"),
        ("ddim", "zai-org/CogVideoX-5b", True, "ddim"),
        ("dpm++", "zai-org/CogVideoX-2b", False, "dpm++"),
    ],
)
def test_scheduler_choice(choice, pretrained, rotary, expected):
    spec = ModelSpec(pretrained=pretrained) if pretrained else SPEC
    config = _config(use_rotary_positional_embeddings=rotary)
    assert sampler.resolve_scheduler(choice, spec, config) == expected


def test_scheduler_is_built_from_the_base_config_and_used(model, monkeypatch):
    with pytest.raises(ValueError, match="'auto', 'dpm\\+\\+' or 'ddim'"):
        sampler.resolve_scheduler("euler", SPEC, _config())
    ddim = sampler.make_scheduler("ddim", model.scheduler)
    assert isinstance(ddim, CogVideoXDDIMScheduler)
    assert ddim.config.prediction_type == model.scheduler.config.prediction_type == "v_prediction"
    assert ddim.config.snr_shift_scale == model.scheduler.config.snr_shift_scale
    steps = {"ddim": 0, "dpm": 0}
    for cls, key in ((CogVideoXDDIMScheduler, "ddim"), (CogVideoXDPMScheduler, "dpm")):
        original = cls.step

        def counted(self, *args, _original=original, _key=key, **kwargs):
            steps[_key] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(cls, "step", counted)
    forced = sampler.generate(model, PROMPTS[:1], "depth", [1], **SIZE, scheduler="ddim")
    assert forced.scheduler == "ddim" and steps == {"ddim": 2, "dpm": 0}
    auto = sampler.generate(model, PROMPTS[:1], "depth", [1], **SIZE)
    assert auto.scheduler == "dpm++" and steps == {"ddim": 2, "dpm": 2}
    assert np.abs(forced.videos[0].astype(int) - auto.videos[0]).mean() > 0.5


def test_a_2b_like_model_samples_with_ddim_end_to_end():
    parts = build_cogvideox(SPEC)
    torch.manual_seed(0)
    base = CogVideoXTransformer3DModel(
        **{
            k: v
            for k, v in parts.transformer.config.items()
            if not k.startswith("_") and k != "use_rotary_positional_embeddings"
        },
        use_rotary_positional_embeddings=False,
    ).eval()
    model = sampler.from_parts(widen_from_base(base), parts, base_spec=SPEC)
    out = sampler.generate(model, PROMPTS[:1], "segmentation", [1], **SIZE)
    assert out.scheduler == "ddim"
    assert out.dense[0].shape == (9, 32, 48, 3)


def test_bad_requests_are_explained(model):
    with pytest.raises(ValueError, match="frames must be 1 \\+ a multiple of 4"):
        sampler.generate(model, PROMPTS[:1], "depth", [1], **{**SIZE, "frames": 10})
    with pytest.raises(ValueError, match="multiples of 8"):
        sampler.generate(model, PROMPTS[:1], "depth", [1], **{**SIZE, "height": 36})
    with pytest.raises(ValueError, match="unknown task"):
        sampler.generate(model, PROMPTS[:1], "normals", [1], **SIZE)
    with pytest.raises(ValueError, match="1 seeds for 2 prompts"):
        sampler.generate(model, PROMPTS, "depth", [1], **SIZE)
    with pytest.raises(ValueError, match="needs one task id per prompt"):
        model.pipeline("dpm++")(
            PROMPTS[:1], seeds=[1], num_frames=9, height=32, width=48, num_inference_steps=1
        )


def _train_dir(tmp_path, transformer, **overrides):
    transformer.save_pretrained(tmp_path / "transformer")
    config = {
        "format": 1,
        "transformer_dir": "transformer",
        "base_model": SPEC.model_dump(mode="json"),
        "base_model_id": SPEC.model_id,
        "dense_init": "duplicate",
        "tasks": dict(TASKS),
        "latent_channels": 4,
        "train": {},
        "final_loss": 0.5,
        "steps": 2,
        **overrides,
    }
    (tmp_path / "udpdiff.json").write_text(json.dumps(config))
    return tmp_path


def test_load_from_a_train_dir_samples_as_the_model_in_memory(tmp_path, model):
    loaded = sampler.load_udpdiff(_train_dir(tmp_path, model.transformer), device="cpu")
    assert loaded.base_model_id == SPEC.model_id and loaded.base_transformer is None
    assert loaded.tasks == dict(TASKS)
    ours = sampler.generate(loaded, PROMPTS[:1], "segmentation", [3], **SIZE)
    theirs = sampler.generate(model, PROMPTS[:1], "segmentation", [3], **SIZE)
    np.testing.assert_array_equal(ours.dense[0], theirs.dense[0])
    np.testing.assert_array_equal(ours.videos[0], theirs.videos[0])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"format": 2}, "field 'format' is 2, expected 1"),
        ({"base_model": {"pretrained": "x", "tiny": {"seed": 0}}}, "field 'base_model' is not a ModelSpec"),
        ({"tasks": {"depth": "one"}}, "field 'tasks' must map task names to int ids"),
        ({"latent_channels": 16}, "field 'latent_channels' is 16"),
        ({"tasks": {"depth": 5}}, "outside the transformer's 2 tasks"),
    ],
)
def test_bad_train_config_names_the_field(tmp_path, model, overrides, message):
    with pytest.raises(ValueError, match=message):
        sampler.load_udpdiff(_train_dir(tmp_path, model.transformer, **overrides), device="cpu")


def test_missing_train_config(tmp_path):
    with pytest.raises(ValueError, match="udpdiff.json: not found"):
        sampler.load_udpdiff(tmp_path)


def test_prompts_are_padded_to_the_t5_length_of_training(tmp_path, model, monkeypatch):
    train_dir = _train_dir(tmp_path, model.transformer, latents={"text_tokens": 24})
    loaded = sampler.load_udpdiff(train_dir, device="cpu")
    assert loaded.text_tokens == 24
    seen = []
    original = sampler.UDPDiffPipeline.encode_prompt

    def spy(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        seen.append(out[0].shape[1])
        return out

    monkeypatch.setattr(sampler.UDPDiffPipeline, "encode_prompt", spy)
    sampler.generate(loaded, PROMPTS[:1], "depth", [3], **SIZE)
    assert seen and set(seen) == {24}  # (the parent pipeline passes the embeddings through once more)
    # Without a recorded length the transformer config's (CogVideoX: 226) applies.
    assert sampler.load_udpdiff(_train_dir(tmp_path, model.transformer), device="cpu").text_tokens is None
