"""The registered UDPDiff pyfunc: logged with lineage, aliased `challenger`, loaded in a fresh process.

Tiny CogVideoX of the real classes, widened to UDPDiff with a non-zero task embedding (so the two tasks
really differ), 9 frames at 32x48, 2 steps; a sqlite store in tmp_path.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
import yaml

from vidprior.config import params_from_dict
from vidprior.models.cogvideox import build_cogvideox
from vidprior.models.spec import ModelSpec, TinySpec
from vidprior.registry.tracking import git_commit
from vidprior.registry.udpdiff_model import (
    CHALLENGER,
    MODEL_NAME,
    UDPDiffModel,
    decode_values,
    decode_video,
    log_udpdiff_model,
)
from vidprior.udpdiff.model import TASKS, widen_from_base
from vidprior.udpdiff.pixelplanes import decode_depth
from vidprior.udpdiff.sampler import CONFIG_FILE as TRAIN_CONFIG
from vidprior.udpdiff.sampler import generate, load_udpdiff_parts, read_train_config

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PROMPTS = ["a red circle moves left", "a blue square and a green triangle move right"]
TASK_OF_ROW = ["segmentation", "depth"]
SEEDS = [3, 44]
SETTINGS = dict(steps=2, frames=9, height=32, width=48)

CHILD = textwrap.dedent(
    """
    import json, sys

    import torch

    torch.set_num_threads(1)

    import mlflow
    import pandas as pd

    model = mlflow.pyfunc.load_model("models:/udpdiff@challenger")
    rows = pd.DataFrame({"prompt": json.loads(sys.argv[2]), "task": json.loads(sys.argv[3]),
                         "seed": json.loads(sys.argv[4])})
    out = {"rows": model.predict(rows, params={"steps": 2}).to_dict(orient="list")}
    out["default_task"] = model.predict(rows[["prompt"]].head(1), params={"steps": 2}).to_dict(orient="list")
    out["param_defaults"] = {s.name: s.default for s in model.metadata.get_params_schema().params}
    with open(sys.argv[1], "w") as f:
        json.dump(out, f)
    """
)


@pytest.fixture
def params():
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    # One prompt per pipeline call, as the in-process comparison below: batching changes float rounding.
    data["udpdiff"]["sample"].update(SETTINGS, tasks=["depth", "segmentation"], batch_size=1)
    return params_from_dict(data)


@pytest.fixture
def train_dir(tmp_path) -> Path:
    """What udpdiff.train leaves: transformer/ (save_pretrained) and udpdiff.json."""
    spec = ModelSpec(tiny=TinySpec(seed=0))
    model = widen_from_base(build_cogvideox(spec).transformer)
    with torch.no_grad():  # a trained task embedding: segmentation and depth now differ
        model.task_embedding.weight.copy_(torch.randn(model.task_embedding.weight.shape) * 0.5)
    out = tmp_path / "train"
    model.save_pretrained(out / "transformer")
    summary = {
        "format": 1,
        "transformer_dir": "transformer",
        "base_model": spec.model_dump(mode="json"),
        "base_model_id": spec.model_id,
        "dense_init": "duplicate",
        "tasks": dict(TASKS),
        "latent_channels": model.config.in_channels // 2,
        "steps": 3,
        "final_loss": 0.5,
    }
    (out / TRAIN_CONFIG).write_text(json.dumps(summary))
    return out


def run_child(tmp_path: Path) -> dict:
    out = tmp_path / "child.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    args = [json.dumps(PROMPTS), json.dumps(TASK_OF_ROW), json.dumps(SEEDS)]
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(out), *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(out.read_text())


@pytest.mark.usefixtures("one_torch_thread")  # the child runs on one thread: the same float kernels
def test_register_load_in_a_fresh_process_and_generate(registry_tracking, params, train_dir, tmp_path):
    registered = log_udpdiff_model(train_dir, params, lineage={"dvc_data_hash": "abc.dir"})
    assert (registered.name, registered.version, registered.alias) == (MODEL_NAME, "1", CHALLENGER)

    client = mlflow.MlflowClient()
    version = client.get_model_version_by_alias(MODEL_NAME, CHALLENGER)
    assert str(version.version) == "1"
    assert version.tags["git_commit"] == git_commit()
    assert version.tags["dvc_data_hash"] == "abc.dir"
    assert version.tags["params_digest"] == params.digest()
    assert version.tags["base_model"] == "tiny-random(seed=0)"
    run = client.get_run(registered.run_id)
    assert run.info.run_name == "udpdiff_register" and run.info.status == "FINISHED"
    # The base model's weights stay out of the registry: only the fine-tuned transformer is stored.
    stored = {a.path for a in client.list_artifacts(registered.run_id)} or set()
    local = Path(mlflow.artifacts.download_artifacts(registered.model_uri))
    assert (local / "artifacts" / "transformer" / "config.json").is_file()
    assert not list(local.rglob("*vae*")) and not list(local.rglob("*text_encoder*")), stored

    out = run_child(tmp_path)
    rows = out["rows"]
    assert rows["task"] == TASK_OF_ROW and rows["seed"] == SEEDS
    assert out["param_defaults"]["task"] == "depth"  # the first of udpdiff.sample.tasks
    assert out["default_task"]["task"] == ["depth"]
    assert out["param_defaults"]["frames"] == 9

    # The same seeds in this process give the same dense maps (lossless) and decoded values.
    model = load_udpdiff_parts(train_dir / "transformer", ModelSpec(tiny=TinySpec(seed=0)), device="cpu")
    guidance = params.udpdiff.sample.guidance_scale
    local_dense = [
        generate(model, [p], [t], [s], guidance_scale=guidance, **SETTINGS).dense[0]
        for p, t, s in zip(PROMPTS, TASK_OF_ROW, SEEDS, strict=True)
    ]
    for row, task in enumerate(TASK_OF_ROW):
        video, dense = decode_video(rows["video"][row]), decode_video(rows["dense"][row])
        assert video.shape == dense.shape == (9, 32, 48, 3)
        assert (rows["frames"][row], rows["height"][row], rows["width"][row]) == (9, 32, 48)
        np.testing.assert_array_equal(dense, local_dense[row])
        values = decode_values(rows["values"][row])
        if task == "depth":
            assert set(values) == {"depth"}
            np.testing.assert_array_equal(values["depth"], decode_depth(dense))
        else:
            assert set(values) == {"ids"} and values["ids"].shape == (9, 32, 48)


def test_settings_reject_unknown_params_and_tasks(params, train_dir, tmp_path):
    from vidprior.registry.udpdiff_model import CONFIG_FILE, udpdiff_config

    config_file = tmp_path / CONFIG_FILE
    config_file.write_text(json.dumps(udpdiff_config(params, read_train_config(train_dir))))
    model = UDPDiffModel().load(train_dir / "transformer", config_file, device="cpu")
    assert model.settings(None)["task"] == "depth"
    assert model.settings({"task": "segmentation", "steps": 3})["steps"] == 3
    with pytest.raises(ValueError, match="unknown params"):
        model.settings({"lambda_": 1.0})
    with pytest.raises(ValueError, match="unknown task 'normals'"):
        model.settings({"task": "normals"})
    with pytest.raises(ValueError, match="'scheduler' must be one of"):
        model.settings({"scheduler": "euler"})
    with pytest.raises(ValueError, match="'depth_denoise' must be one of"):
        model.settings({"depth_denoise": "bilateral"})
    import pandas as pd

    with pytest.raises(ValueError, match="input row 1: unknown task"):
        model.rows(pd.DataFrame({"prompt": ["a", "b"], "task": ["depth", "nope"]}), "depth")
    with pytest.raises(ValueError, match="needs a 'prompt' column"):
        model.rows(pd.DataFrame({"text": ["a"]}), "depth")


def test_registering_a_directory_without_training_outputs_fails_clearly(registry_tracking, params, tmp_path):
    with pytest.raises(ValueError, match="udpdiff.json: not found"):
        log_udpdiff_model(tmp_path, params)
