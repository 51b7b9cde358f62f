"""Stage `unic.train` in one process: tiny SD, a small synthetic labelled set, a few dozen steps.

The tiny SD's random VAE and U-Net barely see image content under noise (GroupNorm removes
brightness), but its text path is strong, so the synthetic set is separable through the prompts:
positives are "a dog runs ..." prompts with bright images, negatives "a still life ..." with dark
ones. Held-out prompts are new prompts of the same two kinds, so the head has to generalise.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from vidprior.config import Params, params_from_dict
from vidprior.io.checkpoint import PARTIAL_DIR
from vidprior.io.manifest import write_manifest
from vidprior.io.media import file_sha256, write_image
from vidprior.training import engine as ds
from vidprior.unic import train
from vidprior.unic.train import split_by_prompt

ROOT = Path(__file__).resolve().parents[2]
SEED = 0
EVAL_FRACTION = 0.5


def make_dataset(
    root: Path,
    n_prompts: int = 8,
    per_prompt: int = 2,
    *,
    all_negative: bool = False,
    seed: int = SEED,
    eval_fraction: float = EVAL_FRACTION,
    size: int = 16,
) -> tuple[Path, Path]:
    """images/ (the images stage's layout) and labels/ (the labels stage's manifest) under `root`.

    Labels alternate within each side of the split the stage will make, so both the training and
    the held-out prompts have both classes.
    """
    prompt_ids = [f"p{p:02d}" for p in range(n_prompts)]
    held = split_by_prompt(prompt_ids, eval_fraction, seed)
    label_of = {}
    for side in (False, True):
        for k, prompt_id in enumerate(p for p, h in zip(prompt_ids, held, strict=True) if h == side):
            label_of[prompt_id] = 0 if all_negative else k % 2
    rng = np.random.default_rng(seed)
    images_dir, labels_dir = root / "images", root / "labels"
    rows = []
    for p, prompt_id in enumerate(prompt_ids):
        label = label_of[prompt_id]
        prompt = (
            f"a dog runs fast across the field, take {p}"
            if label
            else f"a still life photo of a vase, take {p}"
        )
        for k in range(per_prompt):
            image_id = f"{prompt_id}-{k}"
            pixels = (200 if label else 40) + rng.normal(0, 10, (size, size, 3))
            relative = f"images/{image_id}.png"
            path = write_image(images_dir / relative, np.clip(pixels, 0, 255).astype(np.uint8))
            rows.append(
                dict(
                    id=image_id,
                    prompt_id=prompt_id,
                    prompt=prompt,
                    path=relative,
                    seed=k,
                    sha256=file_sha256(path),
                    label=label,
                )
            )
    frame = pd.DataFrame(rows)
    write_manifest(frame.drop(columns=["label"]), images_dir)
    labels = frame.rename(columns={"path": "image_path", "seed": "image_seed"})
    labels = labels.assign(video_path="", decided_by="judge", reasons="")[
        [
            "id",
            "prompt_id",
            "prompt",
            "image_path",
            "video_path",
            "image_seed",
            "label",
            "decided_by",
            "reasons",
        ]
    ]
    write_manifest(labels, labels_dir)
    return labels_dir, images_dir


def params_with(seed: int = SEED, text_condition: str = "prompt", **train_update) -> Params:
    data = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    data["seed"] = seed
    data["unic"].setdefault("classifier", {})["text_condition"] = text_condition
    data["unic"]["train"] = {
        "steps": 8,
        "lr": 1e-2,
        "micro_batch": 4,
        "grad_accum": 1,
        "checkpoint_every": 4,
        "eval_every": 4,
        "eval_fraction": EVAL_FRACTION,
        "timestep_buckets": 4,
        **train_update,
    }
    return params_from_dict(data)


def history(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / train.HISTORY)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[Path, Path]:
    return make_dataset(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def trained(dataset, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("trained") / "out"
    params = params_with(steps=30, eval_every=10, checkpoint_every=10, grad_accum=2, micro_batch=2)
    return out, train.run(params, list(dataset), out)


# --------------------------------------------------------------------------- pure helpers


def test_split_keeps_each_prompt_on_one_side_and_is_seeded():
    prompt_ids = [f"p{p}" for p in range(20) for _ in range(3)]
    held = split_by_prompt(prompt_ids, 0.25, seed=0)
    by_prompt = pd.Series(held).groupby(pd.Series(prompt_ids)).nunique()
    assert (by_prompt == 1).all()
    assert held.sum() == 5 * 3
    np.testing.assert_array_equal(held, split_by_prompt(prompt_ids, 0.25, seed=0))
    assert not np.array_equal(held, split_by_prompt(prompt_ids, 0.25, seed=1))
    assert split_by_prompt(["only"] * 4, 0.5, seed=0).sum() == 0  # one prompt: nothing to hold out
    assert split_by_prompt(["a", "b"], 0.9, seed=0).sum() == 1  # always one prompt left to train on


def test_deepspeed_config_cpu_and_gpu():
    tiny = params_with().unic.train
    cpu = ds.config_from_params(tiny, device="cpu")
    assert cpu["train_micro_batch_size_per_gpu"] == 4
    assert cpu["gradient_accumulation_steps"] == 1
    assert cpu["zero_optimization"] == {"stage": 0}
    assert cpu["bf16"] == {"enabled": False}
    assert cpu["optimizer"]["type"] == "AdamW"
    assert cpu["optimizer"]["params"]["torch_adam"] is True
    assert cpu["optimizer"]["params"]["lr"] == 1e-2
    assert cpu["gradient_clipping"] == 1.0
    gpu = ds.config_from_params(params_with(lr=1e-5, steps=20_000, zero_stage=2).unic.train, device="cuda")
    assert gpu["bf16"] == {"enabled": True}
    assert gpu["zero_optimization"] == {"stage": 2}
    assert gpu["optimizer"]["params"]["lr"] == 1e-5
    forced = ds.config_from_params(params_with(precision="fp32").unic.train, device="cuda")
    assert forced["bf16"] == {"enabled": False}
    assert ds.resolve_precision("bf16", "cpu") == "bf16"


def test_checkpoint_pointer_survives_an_interrupted_save(tmp_path):
    """A save killed after its files but before `latest` moved: the pointer still names the old
    complete checkpoint, and preparing the folder removes the abandoned one."""
    ckpt = tmp_path / "checkpoints"
    ds.init_distributed()
    ds.prepare_checkpoint_dir(ckpt, {"k": 1})  # first use: records the fingerprint
    (ckpt / ds.tag_for(4)).mkdir()
    (ckpt / ds.tag_for(4) / "mp_rank_00_model_states.pt").write_bytes(b"complete")
    ds._write_latest(ckpt, ds.tag_for(4))
    (ckpt / ds.tag_for(8)).mkdir()
    (ckpt / ds.tag_for(8) / "mp_rank_00_model_states.pt").write_bytes(b"torn")
    ds.prepare_checkpoint_dir(ckpt, {"k": 1})  # the rerun: same configuration
    assert ds.latest_step(ckpt) == 4
    assert not (ckpt / ds.tag_for(8)).exists()
    ds.prepare_checkpoint_dir(ckpt, {"k": 2})  # another configuration: nothing is reused
    assert ds.latest_step(ckpt) is None
    (ckpt / ds.LATEST).write_text("global_step12")  # names a folder that is not there
    assert ds.latest_step(ckpt) is None


# --------------------------------------------------------------------------- the stage


def test_outputs_are_written(trained):
    out, metrics = trained
    from vidprior.models import build_sd15
    from vidprior.unic.classifier import build_classifier

    classifier = build_classifier(build_sd15(params_with().models.sd15).unet).load_head(out)
    assert float(classifier.head.weight.detach().abs().sum()) > 0  # trained, not the zero init
    summary = json.loads((out / train.CLASSIFIER_JSON).read_text())
    assert summary["base_model"]["sd15"] == params_with().models.sd15.model_id
    assert summary["text_condition"] == "prompt"
    assert summary["timesteps"]["num_train_timesteps"] == 1000
    assert summary["timesteps"]["eval_bucket_edges"] == [0, 250, 500, 750, 1000]
    assert summary["train"]["deepspeed"]["bf16"] == {"enabled": False}
    assert summary["train"]["global_batch"] == 4
    assert summary["data"]["examples"] == 16
    frame = history(out)
    assert frame["step"].tolist() == list(range(1, 31))
    assert frame["eval_auc"].notna().sum() == 3  # steps 10, 20, 30
    assert (out / train.REPORT_DIR / train.PLOT).stat().st_size > 1000
    assert (out / train.REPORT_DIR / train.HISTORY).exists()
    assert ds.latest_step(out / train.CHECKPOINTS) == 30
    assert sorted(p.name for p in (out / train.CHECKPOINTS).glob("global_step*")) == [
        "global_step20",
        "global_step30",
    ]
    assert not (out / PARTIAL_DIR).exists()
    assert metrics["steps"] == 30 and metrics["examples"] == 16
    assert metrics["positives"] == 8 and metrics["negatives"] == 8
    assert metrics["eval_examples"] == 8 and metrics["eval_positives"] == 2 * 2
    assert metrics["resumed_from_step"] == 0
    assert metrics["train_seconds"] > 0


def test_loss_decreases_and_held_out_auc_beats_chance(trained):
    out, metrics = trained
    loss = history(out)["loss"]
    assert loss.iloc[:5].mean() > loss.iloc[-5:].mean() + 0.05
    assert loss.iloc[0] == pytest.approx(math.log(2), abs=1e-6)  # zero-initialised head: p = 0.5
    assert metrics["eval_auc"] > 0.5
    assert metrics["eval_accuracy"] > 0.5


def test_per_bucket_metrics(trained):
    out, metrics = trained
    frame = history(out)
    for b in range(4):
        for name in ("loss", "accuracy", "auc"):
            assert f"eval_{name}_b{b}" in metrics
            assert f"eval_{name}_b{b}" in frame.columns
        assert 0.0 <= metrics[f"eval_accuracy_b{b}"] <= 1.0
        assert not math.isnan(metrics[f"eval_auc_b{b}"])


def test_same_seed_same_history_and_resume_continues_it(dataset, tmp_path):
    params = params_with(steps=8)
    first = train.run(params, list(dataset), tmp_path / "a")
    second = train.run(params, list(dataset), tmp_path / "b")
    pd.testing.assert_frame_equal(history(tmp_path / "a"), history(tmp_path / "b"), check_exact=True)
    assert first["final_loss"] == second["final_loss"]

    # Four steps, then eight in the same folder: resumes at the step-4 checkpoint, same curve.
    resumed_dir = tmp_path / "c"
    train.run(params_with(steps=4), list(dataset), resumed_dir)
    resumed = train.run(params, list(dataset), resumed_dir)
    assert resumed["resumed_from_step"] == 4
    pd.testing.assert_frame_equal(history(tmp_path / "a"), history(resumed_dir), check_exact=True)
    assert (tmp_path / "a" / "head.safetensors").read_bytes() == (
        resumed_dir / "head.safetensors"
    ).read_bytes()

    # Changed training params: the old checkpoints are not reused.
    changed = train.run(params_with(steps=4, lr=5e-3), list(dataset), resumed_dir)
    assert changed["resumed_from_step"] == 0

    other_seed = train.run(params_with(steps=8, seed=1), list(dataset), tmp_path / "d")
    assert other_seed["final_loss"] != first["final_loss"]


def test_all_negative_labels_train_with_nan_auc(tmp_path):
    labels_dir, images_dir = make_dataset(tmp_path / "data", n_prompts=4, all_negative=True)
    out = tmp_path / "out"
    local_rank = os.environ.get("LOCAL_RANK")
    metrics = train.run(params_with(steps=3, text_condition="empty"), [labels_dir, images_dir], out)
    assert os.environ.get("LOCAL_RANK") == local_rank  # DeepSpeed's variable does not outlive the run
    assert metrics["positives"] == 0
    assert math.isnan(metrics["eval_auc"])
    assert all(math.isnan(metrics[f"eval_auc_b{b}"]) for b in range(4))
    assert metrics["eval_accuracy"] == 1.0  # the head predicts negative from the first update on
    summary = json.loads((out / train.CLASSIFIER_JSON).read_text())
    assert summary["eval"]["eval_auc"] is None
    assert any("AUC is NaN" in note for note in summary["notes"])
    assert summary["text_condition"] == "empty"
    assert (out / "head.safetensors").exists() and (out / train.REPORT_DIR / train.PLOT).exists()


def test_single_prompt_has_no_held_out_split(tmp_path):
    labels_dir, images_dir = make_dataset(tmp_path / "data", n_prompts=1, per_prompt=3)
    metrics = train.run(params_with(steps=2), [labels_dir, images_dir], tmp_path / "out")
    assert metrics["eval_examples"] == 0
    assert math.isnan(metrics["eval_accuracy"]) and math.isnan(metrics["eval_auc"])
    assert metrics["train_examples"] == 3


def test_missing_input_is_reported(tmp_path, dataset):
    with pytest.raises(ValueError, match="images"):
        train.run(params_with(), [dataset[0]], tmp_path / "out")
