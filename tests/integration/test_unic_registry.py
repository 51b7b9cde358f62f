"""The registered Uni-C pyfunc: logged with lineage, aliased `challenger`, loaded and run in a fresh process.

Everything is tiny (random SD 1.5 of the real classes, 32x32, 2 steps) and goes to a sqlite store in tmp_path.
"""

from __future__ import annotations

import base64
import io
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
from PIL import Image

from vidprior.config import params_from_dict
from vidprior.models.sd15 import build_sd15
from vidprior.models.spec import ModelSpec, TinySpec
from vidprior.registry.tracking import git_commit
from vidprior.registry.unic_model import (
    CHALLENGER,
    MODEL_NAME,
    dvc_out_hash,
    log_unic_model,
    resolve_lambda,
)
from vidprior.unic.classifier import HEAD_FILE, build_classifier
from vidprior.unic.workflows import sample_sd

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SIZE, STEPS = 32, 2
PROMPTS = ["a dog runs across a field", "waves crash on the rocks"]
SEEDS = [11, 12345]
LINEAGE_TAGS = ("git_commit", "dvc_data_hash", "params_digest", "base_model")

CHILD = textwrap.dedent(
    """
    import json, sys

    import torch

    torch.set_num_threads(1)

    import mlflow
    import pandas as pd

    model = mlflow.pyfunc.load_model("models:/unic@challenger")
    frame = pd.DataFrame({"prompt": json.loads(sys.argv[2]), "seed": json.loads(sys.argv[3])})
    calls = {
        "default": {},
        "again": {},
        "explicit_sd_svd": {"lambda_": 8.0},
        "lambda0": {"lambda_": 0.0},
        "lambda0_task": {"lambda_": 0, "task": "animatediff"},
        "task": {"task": "animatediff"},
        "explicit_animatediff": {"lambda_": 2.0},
    }
    out = {name: model.predict(frame, params=p).to_dict(orient="list") for name, p in calls.items()}
    out["noseed"] = model.predict(pd.DataFrame({"prompt": [frame.prompt[0]] * 2})).to_dict(orient="list")
    out["bigger"] = model.predict(frame.head(1), params={"height": 48, "width": 40}).to_dict(orient="list")
    schema = model.metadata.get_params_schema()
    out["param_defaults"] = {spec.name: spec.default for spec in schema.params}
    out["inputs"] = model.metadata.get_input_schema().to_dict()
    with open(sys.argv[1], "w") as f:
        json.dump(out, f)
    """
)


@pytest.fixture
def params():
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    data["unic"]["images"].update(height=SIZE, width=SIZE, steps=STEPS)
    return params_from_dict(data)


@pytest.fixture
def single_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the child: same kernels, so the same floats
    yield
    torch.set_num_threads(before)


def png(data: str) -> np.ndarray:
    image = Image.open(io.BytesIO(base64.b64decode(data)))
    assert image.format == "PNG"
    return np.asarray(image.convert("RGB"))


def run_child(tmp_path: Path) -> dict:
    out = tmp_path / "child.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(out), json.dumps(PROMPTS), json.dumps(SEEDS)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(out.read_text())


def test_dvc_out_hash(tmp_path):
    lock = tmp_path / "dvc.lock"
    lock.write_text(
        yaml.safe_dump(
            {
                "schema": "2.0",
                "stages": {
                    "unic_labels": {
                        "cmd": "x",
                        "outs": [
                            {"path": "data/unic/labels", "hash": "md5", "md5": "abc.dir", "nfiles": 2},
                            {"path": "metrics/unic/labels.json", "hash": "md5", "md5": "def"},
                        ],
                    }
                },
            }
        )
    )
    assert dvc_out_hash(lock, "data/unic/labels") == "abc.dir"
    assert dvc_out_hash(lock, "data/unic/labels/") == "abc.dir"
    assert dvc_out_hash(lock, "metrics/unic/labels.json") == "def"
    assert dvc_out_hash(lock, "data/unic/images") == ""
    assert dvc_out_hash(tmp_path / "missing.lock", "data/unic/labels") == ""


def test_lambda_precedence():
    table = {"sd_svd": 8.0, "animatediff": 2.0}
    assert resolve_lambda(table, None, None) == 8.0
    assert resolve_lambda(table, None, "animatediff") == 2.0
    assert resolve_lambda(table, 0.0, "animatediff") == 0.0  # an explicit lambda_ wins
    assert resolve_lambda(table, None, "sd-svd") == 8.0
    with pytest.raises(ValueError, match="unknown task"):
        resolve_lambda(table, None, "nope")


def test_register_load_generate(registry_tracking, params, tmp_path, single_thread):
    parts = build_sd15(ModelSpec(tiny=TinySpec(seed=0)))
    classifier = build_classifier(parts.unet)
    with torch.no_grad():
        gen = torch.Generator().manual_seed(7)
        classifier.head.weight.copy_(torch.randn(classifier.head.weight.shape, generator=gen))
        classifier.head.bias.fill_(0.25)
    head_dir = tmp_path / "head"
    head_dir.mkdir()
    assert classifier.save_head(head_dir) == head_dir / HEAD_FILE

    data_hash = dvc_out_hash(ROOT / "dvc.lock", "data/unic/labels")
    lineage = {"git_commit": git_commit(ROOT), "dvc_data_hash": data_hash}
    first = log_unic_model(head_dir, params, lineage=lineage)
    assert (first.name, first.version, first.model_uri) == (MODEL_NAME, "1", "models:/unic/1")

    client = mlflow.MlflowClient(tracking_uri=registry_tracking)
    version = client.get_model_version_by_alias(MODEL_NAME, CHALLENGER)
    assert str(version.version) == "1" and version.run_id == first.run_id  # an int from sqlite
    assert set(LINEAGE_TAGS) <= set(version.tags)
    assert version.tags["git_commit"] == git_commit(ROOT) and version.tags["git_commit"] != ""
    assert version.tags["dvc_data_hash"] == data_hash
    assert version.tags["params_digest"] == params.digest()
    assert version.tags["base_model"] == params.models.sd15.model_id == "tiny-random(seed=0)"
    run = client.get_run(first.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["vidprior.stage"] == "unic_register"
    experiment = client.get_experiment_by_name(params.tracking.experiment)
    assert run.info.experiment_id == experiment.experiment_id
    assert client.get_logged_model(first.model_id).experiment_id == experiment.experiment_id
    requirements = Path(mlflow.pyfunc.get_model_dependencies(first.model_uri)).read_text().split()
    assert "vidprior==0.1.0" in requirements and all("+" not in r for r in requirements)
    info = mlflow.models.get_model_info(f"models:/{MODEL_NAME}@{CHALLENGER}")
    assert info.flavors["python_function"].get("model_code_path")  # models from code, nothing pickled
    assert {p.name for p in info.signature.params.params} >= {"lambda_", "task", "steps", "start", "end"}

    # In this process, from the same tiny SD and head: the plain and the guided images.
    kwargs = dict(steps=STEPS, guidance_scale=7.5, height=SIZE, width=SIZE, start=0.0, end=1.0)
    plain = sample_sd(parts, classifier, PROMPTS, SEEDS, lambda_=0.0, **kwargs)
    guided = sample_sd(parts, classifier, PROMPTS, SEEDS, lambda_=params.unic.lambdas.sd_svd, **kwargs)
    assert any(not np.array_equal(a, b) for a, b in zip(plain, guided, strict=True))

    out = run_child(tmp_path)

    def images(name: str) -> list[np.ndarray]:
        return [png(cell) for cell in out[name]["image"]]

    default = out["default"]
    assert default["prompt"] == PROMPTS and default["seed"] == SEEDS
    assert default["width"] == [SIZE, SIZE] and default["height"] == [SIZE, SIZE]
    for image in images("default"):
        assert image.shape == (SIZE, SIZE, 3) and image.dtype == np.uint8
    assert out["again"]["image"] == default["image"]  # same seeds, same images
    for a, b in zip(images("lambda0"), plain, strict=True):  # lambda 0 is plain SD
        np.testing.assert_array_equal(a, b)
    for a, b in zip(images("default"), guided, strict=True):  # default: the sd_svd lambda
        np.testing.assert_array_equal(a, b)
    assert out["explicit_sd_svd"]["image"] == default["image"]
    assert out["lambda0_task"]["image"] == out["lambda0"]["image"]  # explicit lambda_ beats task
    assert out["task"]["image"] == out["explicit_animatediff"]["image"]  # task picks its lambda
    assert out["task"]["image"] != default["image"]
    noseed = out["noseed"]
    assert noseed["seed"][0] == noseed["seed"][1] and noseed["image"][0] == noseed["image"][1]
    (bigger,) = images("bigger")
    assert bigger.shape == (48, 40, 3) and out["bigger"]["width"] == [40]
    assert out["param_defaults"]["lambda_"] is None and out["param_defaults"]["task"] == "sd_svd"
    assert out["param_defaults"]["steps"] == STEPS and out["param_defaults"]["height"] == SIZE
    assert [c["name"] for c in out["inputs"]] == ["prompt", "seed"]

    # A second registration (default lineage, into a caller's open run) is version 2 and takes the alias.
    outer = client.create_run(experiment.experiment_id, run_name="caller").info.run_id
    second = log_unic_model(head_dir, params, run_id=outer)
    assert second.version == "2" and second.run_id == outer
    assert client.get_run(outer).info.status == "RUNNING"  # the caller's run is left as it was
    assert str(client.get_model_version_by_alias(MODEL_NAME, CHALLENGER).version) == "2"
    assert CHALLENGER not in client.get_model_version(MODEL_NAME, "1").aliases
    v2 = client.get_model_version(MODEL_NAME, "2")
    assert set(LINEAGE_TAGS) <= set(v2.tags) and v2.tags["params_digest"] == params.digest()
