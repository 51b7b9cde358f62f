"""`make run`'s path on a fresh copy of the repository: dvc repro under an MLflow parent run."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
OUT = "data/unic/prompts"
LABELS = "data/unic/labels"
STAGES = [
    "unic.prompts",
    "unic.images",
    "unic.videos",
    "unic.flow",
    "unic.judge",
    "unic.labels",
    "unic.validate",
    "unic.review",
    "unic.train",
    "unic.sample",
    "unic.register",
    "unic.evaluate",
    "unic.promote",
    "udpdiff.synthetic",
    "udpdiff.clips",
    "udpdiff.captions",
    "udpdiff.segment",
    "udpdiff.depth",
    "udpdiff.dataset",
    "udpdiff.encode",
    "udpdiff.train",
    "udpdiff.sample",
    "udpdiff.register",
    "udpdiff.evaluate",
    "udpdiff.promote",
]
# The registries log each model in a run of their own, nested under the pipeline run too.
MODEL_RUNS = ["udpdiff_register", "unic_register"]
# Outputs computed with plain numpy/hashing are reproduced bit for bit on any machine. The diffusion
# outputs are compared by content, not bytes: float kernels differ across CPU instruction sets.
BIT_EXACT_STAGES = ["unic_prompts"]


def _sh(cmd, cwd, env):
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{cmd} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


def _out_hashes(lock: Path) -> dict:
    stages = yaml.safe_load(lock.read_text())["stages"]
    return {name: [o["md5"] for o in stage.get("outs", [])] for name, stage in stages.items()}


@pytest.fixture(scope="module")
def fresh_clone(tmp_path_factory):
    """The files a clone would have (tracked + untracked-not-ignored), as a new git repository."""
    dest = tmp_path_factory.mktemp("clone")
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\0")
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file() and not name.startswith(("data/", "dvcstore/")):
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "VIDPRIOR_"))}
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"]):
        _sh(cmd, dest, env)
    _sh(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "clone"], dest, env)
    return dest, env


def test_local_repro_writes_outputs_and_nested_mlflow_runs(fresh_clone):
    clone, env = fresh_clone
    committed = _out_hashes(clone / "dvc.lock") if (clone / "dvc.lock").exists() else None

    _sh(["vidprior", "local", "repro"], clone, env)

    manifest = pd.read_parquet(clone / OUT / "manifest.parquet")
    rejects = pd.read_parquet(clone / OUT / "rejects.parquet")
    max_prompts = yaml.safe_load((clone / "params.yaml").read_text())["unic"]["prompts"]["max_prompts"]
    assert len(manifest) == max_prompts and set(manifest["id"]).isdisjoint(rejects["id"])
    if committed is not None:  # the committed lock's outputs are reproduced bit for bit
        reproduced = _out_hashes(clone / "dvc.lock")
        assert set(reproduced) == set(committed)
        assert {s: reproduced[s] for s in BIT_EXACT_STAGES} == {s: committed[s] for s in BIT_EXACT_STAGES}

    images = pd.read_parquet(clone / "data/unic/images/manifest.parquet")
    labels = pd.read_parquet(clone / LABELS / "manifest.parquet")
    unlabelled = pd.read_parquet(clone / LABELS / "rejects.parquet")
    assert len(images) == 2 * max_prompts  # max_prompts x per_prompt of params.yaml
    assert sorted(labels["id"].tolist() + unlabelled["id"].tolist()) == sorted(images["id"])
    assert (clone / "data/unic/validation/report/labels.json").exists()
    assert (clone / "data/unic/review/report/index.html").exists()

    mlflow.set_tracking_uri(f"sqlite:///{clone / 'mlflow.db'}")
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    parents = [r for r in runs if r.data.tags.get("vidprior.pipeline") == "local-dvc"]
    stages = [r for r in runs if r.data.tags.get("vidprior.stage") == "unic.prompts"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(stages) == 1 and stages[0].data.tags["mlflow.parentRunId"] == parents[0].info.run_id
    assert stages[0].data.metrics["prompts_kept"] == len(manifest)
    nested = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    model_runs = [r for r in nested if r.info.run_name in MODEL_RUNS]
    assert sorted(r.info.run_name for r in model_runs) == MODEL_RUNS
    assert sorted(r.data.tags["vidprior.stage"] for r in nested if r not in model_runs) == sorted(STAGES)
    client = mlflow.MlflowClient()
    for name in ("unic", "udpdiff"):
        registered = json.loads((clone / f"data/{name}/registered/model.json").read_text())
        assert registered["alias"] == "challenger" and registered["name"] == name
        # make run ends evaluated (the paper's table, measured next to published) and, with no champion
        # in a fresh registry, the policy promotes the first version.
        table = (clone / f"data/{name}/evaluate/table.md").read_text()
        assert "paper" in table.lower() and table.count("\n|") >= 3
        promotion = json.loads((clone / f"data/{name}/promotion/promotion.json").read_text())
        assert promotion["decision"] == "promoted", promotion
        champion = client.get_model_version_by_alias(name, "champion")
        assert str(champion.version) == str(registered["version"])
        assert champion.tags["promotion.decision"] == "promoted"

    # UDPDiff: every synthetic clip is in Panda-Dense or rejected with a reason; samples of both tasks.
    synthetic = yaml.safe_load((clone / "params.yaml").read_text())["udpdiff"]["synthetic"]
    dense = pd.read_parquet(clone / "data/udpdiff/dataset/manifest.parquet")
    dense_rejects = pd.read_parquet(clone / "data/udpdiff/dataset/rejects.parquet")
    assert len(dense) + len(dense_rejects) == synthetic["videos"] * synthetic["clips_per_video"]
    assert len(dense) > 0
    assert json.loads((clone / "data/udpdiff/dataset/report/dense.json").read_text())["success"] is True
    samples = pd.read_parquet(clone / "data/udpdiff/samples/manifest.parquet")
    assert set(samples["task"]) == {"segmentation", "depth"}
    assert (clone / "data/udpdiff/train/transformer/config.json").is_file()
    assert stages[0].data.params["unic.prompts.dedup.threshold"] == "0.8"
    assert (clone / "mlartifacts").is_dir() and not (clone / "mlruns").exists()


def test_second_repro_has_nothing_to_do_and_push_reaches_default_remote(fresh_clone):
    clone, env = fresh_clone
    if not (clone / OUT / "manifest.parquet").exists():
        _sh(["dvc", "repro"], clone, env)
    output = _sh(["dvc", "repro"], clone, env)
    assert "Data and pipelines are up to date" in output
    assert "Running stage" not in output
    assert "up to date" in _sh(["dvc", "status"], clone, env)
    _sh(["dvc", "push"], clone, env)
    assert any((clone / "dvcstore").rglob("*")), "nothing reached the default local remote"
