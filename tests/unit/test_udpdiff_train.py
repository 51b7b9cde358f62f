"""Stage `udpdiff.train` in one process: the tiny widened CogVideoX overfitting two encoded clips."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from vidprior.config import ParamsError, params_from_dict
from vidprior.io.checkpoint import PARTIAL_DIR
from vidprior.io.manifest import read_manifest, write_manifest
from vidprior.models import ModelSpec, build_cogvideox
from vidprior.training import engine as ds
from vidprior.udpdiff import encode, train
from vidprior.udpdiff.model import TASKS, UDPDiffTransformer3DModel, widen_from_base

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_udpdiff_encode import make_dataset  # noqa: E402
from test_udpdiff_encode import params_with as encode_params  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROOT = Path(__file__).resolve().parents[2]
STEPS, EVERY, PARTIAL = 24, 8, 16


def make_latents(root: Path, clips: int = 2) -> Path:
    """The encode stage's output for `clips` synthetic Panda-Dense clips (tiny CogVideoX)."""
    encode.run(encode_params(), [make_dataset(root / "dataset", clips=clips)], root / "latents")
    return root / "latents"


def params_with(seed: int = 0, **train_update):
    data = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    data["seed"] = seed
    data["udpdiff"]["train"] = {
        "steps": STEPS,
        "lr": 1e-3,  # the paper's 1e-5 is for 40k steps of a pretrained 5B; a tiny overfit needs more
        "micro_batch": 2,
        "grad_accum": 1,
        "zero_stage": 2,
        "gradient_checkpointing": True,
        "checkpoint_every": EVERY,
        **train_update,
    }
    return params_from_dict(data)


def history(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / train.HISTORY)


@pytest.fixture(scope="module")
def latents(tmp_path_factory) -> Path:
    return make_latents(tmp_path_factory.mktemp("latents"))


@pytest.fixture(scope="module")
def trained(latents, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("trained") / "out"
    return out, train.run(params_with(), [latents], out)


# --------------------------------------------------------------------------- pure parts


def test_sampling_frequencies_follow_the_params():
    cfg = params_with(segmentation_probability=0.3, long_caption_probability=0.8).udpdiff.train
    sampler = train.Sampler(5, seed=0, train=cfg, rank=0, world=1, num_timesteps=1000)
    n = 20_000
    choices = [sampler.choice(k) for k in range(n)]
    seg = np.mean([c.task == "segmentation" for c in choices])
    long = np.mean([c.caption == "long" for c in choices])
    ts = np.array([c.timestep for c in choices])
    # Within 4 standard errors of the binomial proportion.
    assert abs(seg - 0.3) < 4 * np.sqrt(0.3 * 0.7 / n)
    assert abs(long - 0.8) < 4 * np.sqrt(0.8 * 0.2 / n)
    assert ts.min() >= 0 and ts.max() <= 999 and abs(ts.mean() - 499.5) < 4 * 288.7 / np.sqrt(n)
    assert {c.task_id for c in choices} == set(TASKS.values())
    # Task and caption are drawn independently of each other.
    both = np.mean([c.task == "segmentation" and c.caption == "long" for c in choices])
    assert abs(both - 0.24) < 4 * np.sqrt(0.24 * 0.76 / n)
    # A pure function of (seed, position): a fresh sampler, or another rank, draws the same sample.
    other = train.Sampler(5, seed=0, train=cfg, rank=1, world=2, num_timesteps=1000)
    assert [other.choice(k) for k in range(50)] == choices[:50]
    assert torch.equal(other.noise(7, (2, 3)), sampler.noise(7, (2, 3)))
    assert [train.Sampler(5, 1, cfg, 0, 1, 1000).choice(k) for k in range(50)] != choices[:50]
    # Every clip once per epoch.
    assert sorted(sampler.clip(k) for k in range(5)) == list(range(5))
    always = params_with(segmentation_probability=1.0, long_caption_probability=0.0).udpdiff.train
    fixed = train.Sampler(5, seed=0, train=always, rank=0, world=1, num_timesteps=1000)
    drawn = {(fixed.choice(k).task, fixed.choice(k).caption) for k in range(200)}
    assert drawn == {("segmentation", "short")}


def test_ranks_and_micro_steps_tile_each_step():
    cfg = params_with(micro_batch=2, grad_accum=3).udpdiff.train
    world = 2
    samplers = [train.Sampler(4, 0, cfg, rank, world, 1000) for rank in range(world)]
    assert samplers[0].global_batch == 12
    for step in (0, 5):
        drawn = sorted(p for s in samplers for a in range(3) for p in s.positions(step, a))
        assert drawn == list(samplers[0].step_positions(step))


def test_rotary_embedding_is_the_pipelines():
    parts = build_cogvideox(params_with().models.cogvideox)
    cos, sin = train.rotary_embedding(parts.transformer.config, 3, 8, 12, torch.device("cpu"))
    ref_cos, ref_sin = parts.pipeline()._prepare_rotary_positional_embeddings(32, 48, 3, torch.device("cpu"))
    assert torch.equal(cos, ref_cos) and torch.equal(sin, ref_sin)
    assert cos.shape == (3 * 4 * 6, 16)  # latent frames x (8/2) x (12/2) patches, head dim


def test_final_model_keeps_the_sin_cos_table_of_a_2b_style_base(tmp_path):
    """The 2B's positional table is a non-persistent buffer: not in the weights, rebuilt on load."""
    from diffusers import CogVideoXTransformer3DModel

    torch.manual_seed(0)
    base = CogVideoXTransformer3DModel(
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
        max_text_seq_length=7,
    )
    model = widen_from_base(base).float()
    buffers = train.non_persistent_buffers(model)
    assert list(buffers) == ["patch_embed.pos_embedding"]
    state = {k: v.detach().clone() + 0.5 for k, v in model.named_parameters()}  # "trained" weights
    state.update({k: v.detach().clone() for k, v in model.named_buffers()})
    final = train.final_model(model.config, state, buffers)
    assert torch.equal(final.patch_embed.pos_embedding, model.patch_embed.pos_embedding)
    train.save_transformer(final, tmp_path / "transformer")
    loaded = UDPDiffTransformer3DModel.from_pretrained(tmp_path / "transformer")
    assert not (tmp_path / ".transformer.partial").exists()
    for name, value in loaded.named_parameters():
        assert torch.equal(value, state[name]), name
    # Rebuilt from the config (in float64, as diffusers computes it): the same table.
    assert torch.equal(loaded.patch_embed.pos_embedding.float(), model.patch_embed.pos_embedding)


def test_deepspeed_config_zero3_and_offload():
    cfg = params_with(zero_stage=3, offload_optimizer=True, offload_params=True).udpdiff.train
    cpu = ds.config_from_params(cfg, device="cpu")
    assert cpu["zero_optimization"] == {
        "stage": 3,
        "offload_optimizer": {"device": "cpu", "pin_memory": False},
        "offload_param": {"device": "cpu", "pin_memory": False},
    }
    gpu = ds.config_from_params(cfg, device="cuda")
    assert gpu["bf16"] == {"enabled": True}
    assert gpu["zero_optimization"]["offload_param"]["pin_memory"] is True
    default = ds.config_from_params(params_with().udpdiff.train, device="cpu")
    assert default["zero_optimization"] == {"stage": 2}
    with pytest.raises(ValueError, match="ZeRO stage 3"):
        ds.deepspeed_config(lr=1e-5, micro_batch=1, zero_stage=2, offload_params=True)
    with pytest.raises(ValueError, match="stage >= 1"):
        ds.deepspeed_config(lr=1e-5, micro_batch=1, zero_stage=0, offload_optimizer=True)
    with pytest.raises(ParamsError, match="offload_params"):
        params_with(zero_stage=2, offload_params=True)


# --------------------------------------------------------------------------- the stage


def test_outputs_are_written(trained, latents):
    out, metrics = trained
    summary = json.loads((out / train.SUMMARY_JSON).read_text())
    assert summary["format"] == 1 and summary["transformer_dir"] == "transformer"
    spec = ModelSpec.model_validate(summary["base_model"])
    assert spec == params_with().models.cogvideox and summary["base_model_id"] == spec.model_id
    assert summary["dense_init"] == "duplicate" and summary["tasks"] == {"segmentation": 0, "depth": 1}
    assert summary["latent_channels"] == 4 and summary["steps"] == STEPS
    assert summary["final_loss"] == metrics["final_loss"]
    assert summary["train"]["world_size"] == 1 and summary["train"]["global_batch"] == 2
    assert summary["train"]["deepspeed"]["zero_optimization"] == {"stage": 2}
    assert summary["train"]["deepspeed"]["optimizer"]["params"]["lr"] == 1e-3
    assert summary["train"]["precision_resolved"] == "fp32"  # "auto" on CPU

    frame = history(out)
    assert frame.columns.tolist() == train.HISTORY_COLUMNS
    assert frame["step"].tolist() == list(range(1, STEPS + 1))
    assert (frame["segmentation"] + frame["depth"] == 2).all()
    assert (frame["long_caption"] + frame["short_caption"] == 2).all()
    # The total is the mean of the two equal-sized halves.
    np.testing.assert_allclose(frame["loss"], (frame["loss_video"] + frame["loss_dense"]) / 2, rtol=1e-6)
    only_seg = frame["depth"] == 0
    np.testing.assert_allclose(frame.loc[only_seg, "loss_segmentation"], frame.loc[only_seg, "loss"])
    assert frame.loc[only_seg, "loss_depth"].isna().all()
    pd.testing.assert_frame_equal(frame, pd.read_csv(out / train.REPORT_DIR / train.HISTORY))
    assert (out / train.REPORT_DIR / train.PLOT).stat().st_size > 1000

    assert ds.latest_step(out / train.CHECKPOINTS) == STEPS
    assert sorted(p.name for p in (out / train.CHECKPOINTS).glob("global_step*")) == [
        "global_step16",
        "global_step24",
    ]
    assert not (out / PARTIAL_DIR).exists()
    assert metrics["steps"] == STEPS and metrics["examples"] == 2 and metrics["global_batch"] == 2
    assert metrics["samples_segmentation"] + metrics["samples_depth"] == 2 * STEPS
    assert metrics["samples_segmentation"] == frame["segmentation"].sum()
    assert metrics["samples_long_caption"] + metrics["samples_short_caption"] == 2 * STEPS
    assert metrics["first_loss"] == frame["loss"].iloc[0]
    assert metrics["final_loss_mean"] == pytest.approx(frame["loss"].iloc[-2:].mean())  # last 10%
    assert metrics["resumed_from_step"] == 0


def test_saved_transformer_loads_and_equals_the_trained_weights(trained):
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    out, _ = trained
    loaded = UDPDiffTransformer3DModel.from_pretrained(out / train.TRANSFORMER_DIR)
    assert loaded.config.in_channels == 8 and loaded.config.out_channels == 8
    assert loaded.config.num_tasks == 2
    # The final checkpoint's fp32 master weights, consolidated by DeepSpeed's own tool.
    masters = get_fp32_state_dict_from_zero_checkpoint(str(out / train.CHECKPOINTS), tag=ds.tag_for(STEPS))
    state = loaded.state_dict()
    assert set(state) == set(masters)
    for name, value in masters.items():
        assert state[name].dtype == torch.float32
        assert torch.equal(state[name], value.float()), name
    # Trained: every layer moved away from the duplicated initialisation, the task embedding from zero.
    init = widen_from_base(build_cogvideox(params_with().models.cogvideox).transformer).state_dict()
    assert float(state["task_embedding.weight"].abs().sum()) > 0
    assert not torch.equal(state["proj_out.weight"], init["proj_out.weight"])


def test_loss_decreases_when_overfitting_two_clips(trained):
    out, metrics = trained
    loss = history(out)["loss"]
    assert loss.iloc[-8:].mean() < 0.85 * loss.iloc[:8].mean()
    assert metrics["final_loss_mean"] < metrics["first_loss"]


def test_resume_after_a_partial_run_gives_the_same_history_and_weights(trained, latents, tmp_path):
    reference, _ = trained
    out = tmp_path / "resumed"
    first = train.run(params_with(steps=PARTIAL), [latents], out)
    assert first["resumed_from_step"] == 0
    assert ds.latest_step(out / train.CHECKPOINTS) == PARTIAL
    resumed = train.run(params_with(), [latents], out)
    assert resumed["resumed_from_step"] == PARTIAL
    pd.testing.assert_frame_equal(history(out), history(reference), check_exact=True)
    weights = Path(train.TRANSFORMER_DIR) / "diffusion_pytorch_model.safetensors"
    assert (out / weights).read_bytes() == (reference / weights).read_bytes()


def test_zero3_with_cpu_offload_follows_the_zero2_curve(trained, latents, tmp_path):
    reference, _ = trained
    out = tmp_path / "zero3"
    params = params_with(steps=4, zero_stage=3, offload_optimizer=True, offload_params=True)
    metrics = train.run(params, [latents], out)
    zero = json.loads((out / train.SUMMARY_JSON).read_text())["train"]["deepspeed"]["zero_optimization"]
    assert zero["stage"] == 3 and zero["offload_param"]["device"] == "cpu"
    # Same samples, same math: the first steps of the ZeRO-2 run, up to float rounding.
    np.testing.assert_allclose(history(out)["loss"], history(reference)["loss"].iloc[:4], rtol=1e-5)
    assert metrics["steps"] == 4
    loaded = UDPDiffTransformer3DModel.from_pretrained(out / train.TRANSFORMER_DIR)
    assert all(p.dtype == torch.float32 and p.numel() > 0 for p in loaded.parameters())


def test_bf16_trains_and_saves_the_fp32_master_weights(trained, latents, tmp_path):
    reference, _ = trained
    out = tmp_path / "bf16"
    train.run(params_with(steps=4, precision="bf16"), [latents], out)
    summary = json.loads((out / train.SUMMARY_JSON).read_text())
    assert summary["train"]["precision_resolved"] == "bf16"
    assert summary["train"]["deepspeed"]["bf16"] == {"enabled": True}
    # bf16 activations: the fp32 curve to within bf16 rounding.
    np.testing.assert_allclose(history(out)["loss"], history(reference)["loss"].iloc[:4], rtol=2e-2)
    state = UDPDiffTransformer3DModel.from_pretrained(out / train.TRANSFORMER_DIR).state_dict()
    assert all(v.dtype == torch.float32 for v in state.values())
    # Not the bf16 working copy DeepSpeed computes with: those values would all survive a bf16 round trip.
    assert any(not torch.equal(v, v.bfloat16().float()) for v in state.values())


def test_bad_inputs_are_reported(latents, tmp_path):
    with pytest.raises(ValueError, match="encode"):
        train.run(params_with(steps=1), [], tmp_path / "out")
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    manifest = read_manifest(latents)
    manifest["latent_path"] = [str((latents / p).resolve()) for p in manifest["latent_path"]]
    write_manifest(manifest.assign(latent_channels=16), wrong)
    with pytest.raises(ValueError, match="latent_channels 16 != the transformer's in_channels 4"):
        train.run(params_with(steps=1), [wrong], tmp_path / "out")
    mixed = manifest.copy()
    mixed.loc[0, "latent_frames"] = 5
    write_manifest(mixed, wrong)
    with pytest.raises(ValueError, match="one latent shape"):
        train.run(params_with(steps=1), [wrong], tmp_path / "out")
    write_manifest(manifest.assign(latent_path="latents/missing.safetensors"), wrong)
    with pytest.raises(ValueError, match="latent_path file"):
        train.run(params_with(steps=1), [wrong], tmp_path / "out")
    write_manifest(manifest.iloc[:0], wrong)
    with pytest.raises(ValueError, match="no encoded clip"):
        train.run(params_with(steps=1), [wrong], tmp_path / "out")
