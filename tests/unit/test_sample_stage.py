"""`unic.sample`: every workflow writes its media and manifest; guidance raises the classifier's p."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from vidprior.config import params_from_dict
from vidprior.io.manifest import read_manifest, write_manifest
from vidprior.io.media import read_image, read_video
from vidprior.models import ModelSpec, TinySpec, build_sd15
from vidprior.unic import sample
from vidprior.unic.classifier import build_classifier, text_condition

ROOT = Path(__file__).resolve().parents[2]
PROMPTS = ["a dog running on grass", "a cat jumping on a sofa", "a bird flying over the sea"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Tiny models on a shared 2-core machine run many times faster on one thread.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> list[Path]:
    """A head trained (seconds) to call latents with a positive mean y = 1, and a prompts manifest."""
    root = tmp_path_factory.mktemp("sample-inputs")
    sd = build_sd15(ModelSpec(tiny=TinySpec(seed=0)))
    clf = build_classifier(sd.unet)
    empty = text_condition(sd.tokenizer, sd.text_encoder, [""])
    g = torch.Generator().manual_seed(0)
    n = 256
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
    clf.save_head(root / "train")
    write_manifest(
        pd.DataFrame({"id": [f"p{i}" for i in range(len(PROMPTS))], "prompt": PROMPTS}), root / "prompts"
    )
    return [root / "train", root / "prompts"]


def make_params(workflow: str, lambda_: float | None = None, **sample_update):
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    data["unic"]["images"].update({"height": 32, "width": 32, "steps": 4})
    data["unic"]["videos"].update({"height": 32, "width": 32, "frames": 4, "steps": 2})
    data["unic"]["classifier"] = {"text_condition": "empty"}
    data["unic"]["sample"] = {"workflow": workflow, "max_prompts": 3, "lambda_": lambda_, **sample_update}
    return params_from_dict(data)


def test_guided_sd_scores_higher_than_the_same_seeds_unguided(inputs, tmp_path):
    metrics = sample.run(make_params("sd", 30.0), inputs, tmp_path)
    manifest = read_manifest(tmp_path)
    guided = manifest[manifest["variant"] == "guided"].set_index("prompt_id")
    baseline = manifest[manifest["variant"] == "baseline"].set_index("prompt_id")
    assert (guided["seed"] == baseline["seed"]).all() and (guided["lambda_"] == 30.0).all()
    # The score re-encodes the decoded images; the tiny random VAE keeps little of what guidance moved in
    # latent space, so the gain is small here, but strictly positive for every prompt (0 with lambda 0).
    assert metrics["guidance_gain"] > 0
    assert (guided["classifier_p"] > baseline["classifier_p"]).all()
    assert metrics["mean_classifier_p_guided"] == pytest.approx(guided["classifier_p"].mean())
    image = read_image(tmp_path / guided.iloc[0]["image_path"])
    assert image.shape == (32, 32, 3)


def test_lambda_defaults_to_the_workflow_row_of_the_table(inputs, tmp_path):
    assert sample.lambda_for(make_params("sd-pia")) == 8.0
    assert sample.lambda_for(make_params("animatediff")) == 2.0
    metrics = sample.run(make_params("sd", None, with_baseline=False), inputs, tmp_path)
    assert metrics["lambda"] == 8.0 and "guidance_gain" not in metrics
    assert set(read_manifest(tmp_path)["variant"]) == {"guided"}


@pytest.mark.parametrize("workflow", ["sd-svd", "sd-pia", "animatediff"])
def test_video_workflows_write_videos(inputs, tmp_path, workflow):
    sample.run(make_params(workflow, 4.0), inputs, tmp_path)
    manifest = read_manifest(tmp_path)
    assert len(manifest) == 2 * len(PROMPTS) and (manifest["workflow"] == workflow).all()
    frames, _ = read_video(tmp_path / manifest.iloc[0]["video_path"])
    assert frames.shape == (4, 32, 32, 3)
    assert np.isfinite(manifest["classifier_p"]).all()


def test_missing_head_says_what_was_expected(inputs, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="head.safetensors from `unic train`"):
        sample.run(make_params("sd", 1.0), [tmp_path / "empty", inputs[1]], tmp_path / "out")


def test_cli_takes_prompts_seeds_workflow_and_lambda(inputs, tmp_path):
    from typer.testing import CliRunner

    from vidprior.cli import app

    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(make_params("sd-svd").model_dump(mode="json")))
    common = ["unic", "sample", "--classifier", str(inputs[0]), "-p", str(params_file), "--no-track"]
    result = CliRunner().invoke(
        app,
        [
            *common,
            "-o",
            str(tmp_path / "out"),
            "--prompt",
            "a fox",
            "--prompt",
            "a horse",
            "--seed",
            "5",
            "--seed",
            "6",
        ]
        + ["--workflow", "sd", "--lambda", "2.5"],
    )
    assert result.exit_code == 0, result.output
    manifest = read_manifest(tmp_path / "out")
    guided = manifest[manifest["variant"] == "guided"]
    assert guided["seed"].tolist() == [5, 6] and guided["prompt"].tolist() == ["a fox", "a horse"]
    assert (guided["lambda_"] == 2.5).all() and (manifest["workflow"] == "sd").all()

    mismatch = CliRunner().invoke(
        app, [*common, "-o", str(tmp_path / "bad"), "--prompt", "a fox", "--seed", "1", "--seed", "2"]
    )
    assert mismatch.exit_code == 2 and "one per prompt" in mismatch.output
