"""`unic.evaluate` through `vidprior.stages.execute`: Table I's rows, paired seeds, tags on the version."""

from __future__ import annotations

import json
import os
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from mlflow_store import fresh_store

from vidprior.config import params_from_dict
from vidprior.io.manifest import read_manifest, read_rejects, write_manifest
from vidprior.models import ModelSpec, TinySpec, build_sd15
from vidprior.registry.pyfunc import REGISTERED_FILE
from vidprior.stages import execute
from vidprior.unic import evaluate
from vidprior.unic.classifier import build_classifier

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROOT = Path(__file__).resolve().parents[2]
PROMPTS = {"p0": "a dog running on grass", "p1": "", "p2": "a bird flying over the sea"}
METRICS = ["dynamic_degree", "aesthetic_quality", "imaging_quality"]


def make_params(**evaluate_update):
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    data["unic"]["images"].update({"height": 32, "width": 32, "steps": 2})
    data["unic"]["videos"].update({"height": 32, "width": 32, "frames": 4, "steps": 2})
    data["unic"]["classifier"] = {"text_condition": "empty"}
    data["unic"]["evaluate"] = {"max_prompts": 3, "batch_size": 4, **evaluate_update}
    return params_from_dict(data)


def register_version(tmp: Path, name: str) -> Path:
    """A version of `name` in the current store and the register stage's model.json naming it."""
    client = client_of()
    client.create_registered_model(name)
    run = client.create_run(client.create_experiment(f"{name}-register"))
    version = client.create_model_version(name, f"runs:/{run.info.run_id}/model", run_id=run.info.run_id)
    out = tmp / "registered"
    out.mkdir()
    (out / REGISTERED_FILE).write_text(json.dumps({"name": name, "version": version.version}))
    return out


def client_of():
    return mlflow.MlflowClient(tracking_uri=os.environ["MLFLOW_TRACKING_URI"])


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A sqlite MLflow store of the test module's own, runs' artifacts beside it."""
    root = tmp_path_factory.mktemp("mlflow")
    uri = fresh_store(root)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        patch.setenv("VIDPRIOR_HOME", str(root))
        patch.delenv("VIDPRIOR_PARENT_RUN_ID", raising=False)
        patch.delenv("MLFLOW_REGISTRY_URI", raising=False)
        # mlflow.set_tracking_uri (which stages call) outlives a test module: start from this store.
        mlflow.set_tracking_uri(uri)
        yield root


@pytest.fixture(scope="module")
def inputs(store, tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("unic-evaluate-inputs")
    sd = build_sd15(ModelSpec(tiny=TinySpec(seed=0)))
    classifier = build_classifier(sd.unet)
    with torch.no_grad():  # a trained head's stand-in: the zero-initialised one has no gradient to guide by
        classifier.head.weight.normal_(std=2.0, generator=torch.Generator().manual_seed(0))
    classifier.save_head(root / "train")
    write_manifest(pd.DataFrame({"id": list(PROMPTS), "prompt": list(PROMPTS.values())}), root / "prompts")
    return [root / "train", root / "prompts", register_version(root, "unic")]


@pytest.fixture(scope="module")
def evaluated(inputs, tmp_path_factory):
    out = tmp_path_factory.mktemp("unic-evaluation")
    metrics = execute("unic.evaluate", make_params(), inputs, out, metrics_path=out.parent / "m.json")
    return out, metrics


def test_table_has_table_i_rows_with_the_paper_numbers(evaluated):
    out, _ = evaluated
    table = pd.read_csv(out / "table.csv")
    assert table["method"].tolist() == ["SD->SVD", "+ Uni-C", "SD->PIA", "+ Uni-C"]
    assert table["group"].tolist() == ["sd_svd", "sd_svd", "sd_pia", "sd_pia"]
    assert table["variant"].tolist() == ["baseline", "candidate"] * 2
    paper = table.set_index(["group", "variant"])
    assert paper.loc[("sd_svd", "baseline"), "dynamic_degree_paper"] == 0.0250
    assert paper.loc[("sd_svd", "candidate"), "aesthetic_quality_paper"] == 0.6113
    assert paper.loc[("sd_pia", "baseline"), "imaging_quality_paper"] == 0.7110
    assert paper.loc[("sd_pia", "candidate"), "dynamic_degree_paper"] == 0.1250
    # Measured values are the means of the manifest's per-video scores.
    manifest = read_manifest(out)
    guided_svd = manifest[(manifest["workflow"] == "sd-svd") & (manifest["variant"] == "guided")]
    assert paper.loc[("sd_svd", "candidate"), "videos"] == len(guided_svd) == 2
    for metric in METRICS:
        assert paper.loc[("sd_svd", "candidate"), metric] == pytest.approx(guided_svd[metric].mean())
    text = (out / "table.md").read_text()
    assert "| method | videos | Dynamic Degree | Dynamic Degree (paper) | Aesthetic |" in text
    assert "| SD->PIA | 2 |" in text and "0.7191" in text
    assert sorted(p.name for p in (out / "plots").iterdir()) == sorted(f"{m}.png" for m in METRICS)


def test_guided_and_unguided_share_prompts_and_seeds(evaluated):
    out, _ = evaluated
    manifest = read_manifest(out)
    assert len(manifest) == 8 and set(manifest["workflow"]) == {"sd-svd", "sd-pia"}
    for (_, _), pair in manifest.groupby(["workflow", "prompt_id"]):
        assert sorted(pair["variant"]) == ["baseline", "guided"]
        assert pair["seed"].nunique() == 1 and pair["video_seed"].nunique() == 1
        assert pair["prompt"].nunique() == 1
    assert set(manifest.loc[manifest["variant"] == "guided", "lambda_"]) == {8.0}
    assert set(manifest.loc[manifest["variant"] == "baseline", "lambda_"]) == {0.0}
    assert np.isfinite(manifest[METRICS].to_numpy()).all()
    assert set(manifest["dynamic_degree"]) <= {0.0, 1.0}
    assert all((out / p).is_file() for p in manifest["video_path"])
    # Guidance changed the videos the same seeds give.
    by_id = manifest.set_index("id")
    assert by_id.loc["sd-svd.p0.guided", "video_sha256"] != by_id.loc["sd-svd.p0.baseline", "video_sha256"]


def test_empty_prompts_are_rejected_in_every_workflow_and_variant(evaluated):
    out, metrics = evaluated
    rejects = read_rejects(out)
    assert sorted(rejects["id"]) == sorted(
        f"{w}.p1.{v}" for w in ("sd-svd", "sd-pia") for v in ("baseline", "guided")
    )
    assert set(rejects["reason"]) == {"empty_prompt"} and set(rejects["stage"]) == {evaluate.STAGE}
    assert metrics["videos_in"] == 12 and metrics["kept"] == 8 and metrics["rejected_empty_prompt"] == 4


def test_evaluation_json_metrics_and_version_tags(evaluated, inputs):
    out, metrics = evaluated
    record = json.loads((out / "evaluation.json").read_text())
    assert (record["model"], record["version"]) == ("unic", "1")
    keys = {f"{g}.{m}" for g in ("sd_svd", "sd_pia") for m in METRICS}
    assert set(record["candidate"]) == set(record["baseline"]) == keys
    assert record["paper"]["baseline"]["sd_pia.aesthetic_quality"] == 0.6344
    assert len(record["table"]) == 4
    for key in keys:
        assert metrics[f"candidate.{key}"] == pytest.approx(record["candidate"][key])
        assert metrics[f"baseline.{key}"] == pytest.approx(record["baseline"][key])
    dvc_metrics = json.loads((out.parent / "m.json").read_text())
    assert "candidate.sd_svd.dynamic_degree" in dvc_metrics and "stage_seconds" not in dvc_metrics

    client = client_of()
    tags = client.get_model_version("unic", "1").tags
    for key in keys:
        assert float(tags[f"eval.{key}"]) == record["candidate"][key]
        assert float(tags[f"eval_baseline.{key}"]) == record["baseline"][key]
    run = client.get_run(tags["eval.run_id"])
    assert run.data.tags["vidprior.stage"] == evaluate.STAGE
    assert run.data.metrics["candidate.sd_pia.imaging_quality"] == pytest.approx(
        record["candidate"]["sd_pia.imaging_quality"]
    )
    logged = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"plots", "table", "table_csv", "evaluation", "manifest"} <= logged
    assert {a.path for a in client.list_artifacts(run.info.run_id, "plots")} == {
        f"plots/{m}.png" for m in METRICS
    }


def test_a_narrower_rerun_replaces_stale_tags(evaluated, inputs, tmp_path):
    out, _ = evaluated
    client = client_of()
    client.set_model_version_tag("unic", "1", "eval.animatediff.dynamic_degree", "0.9")
    # One workflow, one metric: only its keys remain on the version; no run id without a tracked run.
    params = make_params(workflows=["sd-pia"], metrics=["aesthetic_quality"])
    metrics = evaluate.run(params, inputs, tmp_path)
    tags = client.get_model_version("unic", "1").tags
    assert sorted(k for k in tags if k.startswith("eval")) == [
        "eval.sd_pia.aesthetic_quality",
        "eval_baseline.sd_pia.aesthetic_quality",
    ]
    assert pd.read_csv(tmp_path / "table.csv")["method"].tolist() == ["SD->PIA", "+ Uni-C"]
    # The same prompts, seeds and params give the same videos as the first evaluation.
    first = read_manifest(out).set_index("id")
    again = read_manifest(tmp_path).set_index("id")
    assert (again["video_sha256"] == first.loc[again.index, "video_sha256"]).all()
    np.testing.assert_allclose(again["aesthetic_quality"], first.loc[again.index, "aesthetic_quality"])
    assert metrics["kept"] == 4


def test_missing_or_unknown_inputs_are_explained(inputs, tmp_path):
    with pytest.raises(ValueError, match=r"missing input #3: the unic.register stage's output directory"):
        evaluate.run(make_params(), inputs[:2], tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(
        ValueError, match=r"model.json: not found \(expected the register stage's model.json\)"
    ):
        evaluate.run(make_params(), [*inputs[:2], tmp_path / "empty"], tmp_path / "out")
    (tmp_path / "gone").mkdir()
    (tmp_path / "gone" / REGISTERED_FILE).write_text(json.dumps({"name": "unic", "version": "42"}))
    with pytest.raises(ValueError, match=r"model 'unic' version 42 is not in the registry"):
        evaluate.run(make_params(), [*inputs[:2], tmp_path / "gone"], tmp_path / "out")
    assert not (tmp_path / "out" / "manifest.parquet").exists()


def test_params_reject_repeats_and_unknown_metrics():
    with pytest.raises(ValueError, match="lists a value twice"):
        make_params(workflows=["sd-svd", "sd-svd"])
    with pytest.raises(ValueError, match="unic.evaluate.metrics.0"):
        make_params(metrics=["fvd"])
