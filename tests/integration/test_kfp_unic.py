"""The `vidprior-unic` Kubeflow pipeline: compiled IR, a kfp.local run end to end, the components.

kfp.local runs every task as a subprocess of this interpreter (`SubprocessRunner(use_venv=False)`),
so the components import the editable `vidprior` exactly as they would in the image.
"""

import json
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml
from kfp import compiler, components
from kfp.dsl import Dataset, Metrics, PipelineTaskFinalStatus
from kfp_local import ROOT, assert_evaluated_and_promoted, executor_metrics, run_local, runs

from components.data.prompts import collect_prompts
from components.register.mlflow_run import close_mlflow_run, open_mlflow_run
from pipelines import params_yaml_default
from pipelines.compile import compile_all
from pipelines.unic import PIPELINE_NAME, build_unic_pipeline
from vidprior.config import load_params, params_from_dict
from vidprior.io.manifest import read_manifest, read_rejects
from vidprior.unic.prompt_sources import builtin_path

pytestmark = pytest.mark.integration

IMAGE = "registry.example/vidprior/base:test"
LABEL_IMAGE = "registry.example/vidprior/label:test"
TRAIN_IMAGE = "registry.example/vidprior/train:test"
IMAGE_OF = {"exec-judge-videos": LABEL_IMAGE, "exec-train-classifier": TRAIN_IMAGE}
STAGE_TASKS = {
    "collect-prompts",
    "merge-shards",
    "merge-shards-2",
    "measure-flow",
    "judge-videos",
    "join-labels",
    "validate-unic-data",
    "export-review",
    "train-classifier",
    "sample-guided",
    "register-unic-model",
    "evaluate-unic",
    "promote-model",
}
STAGE_PARAM = "unic.prompts.dedup.threshold"


@pytest.fixture
def params():
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    data.setdefault("images", {})["base"] = IMAGE  # prove the images come from params
    data["images"]["label"] = LABEL_IMAGE
    data["images"]["train"] = TRAIN_IMAGE
    data["unic"]["prompts"]["max_prompts"] = 4  # 8 images and videos over 2 shards: a quick local run
    return params_from_dict(data)


def shipped_prompt_rows() -> int:
    return len(pd.read_csv(builtin_path(), dtype=str, keep_default_na=False))


def assert_prompt_outputs(out_dir: Path, metrics: dict) -> None:
    manifest, rejects = read_manifest(out_dir), read_rejects(out_dir)
    assert len(manifest) > 0 and len(rejects) > 0
    assert len(manifest) + len(rejects) == shipped_prompt_rows()
    assert metrics["prompts_read"] == shipped_prompt_rows()
    assert metrics["prompts_kept"] == len(manifest)
    assert metrics["prompts_rejected"] == len(rejects)


# --------------------------------------------------------------------------- compiled IR


def test_compiled_pipeline_structure(params, tmp_path):
    written = compile_all(params, tmp_path / "compiled")
    assert written == [tmp_path / "compiled" / "unic.yaml", tmp_path / "compiled" / "udpdiff.yaml"]
    path = written[0]

    spec = yaml.safe_load(path.read_text())
    assert spec["pipelineInfo"]["name"] == PIPELINE_NAME
    root_tasks = spec["root"]["dag"]["tasks"]
    assert set(root_tasks) == {"open-mlflow-run", "vidprior-unic-stages"}
    stages_ref = root_tasks["vidprior-unic-stages"]["inputs"]["parameters"]["parent_run_id"]
    assert stages_ref["taskOutputParameter"]["producerTask"] == "open-mlflow-run"

    comps = spec["components"]
    stage_tasks = comps["comp-vidprior-unic-stages"]["dag"]["tasks"]
    assert set(stage_tasks) == {"exit-handler-1", "close-mlflow-run"}
    close = stage_tasks["close-mlflow-run"]
    assert close["triggerPolicy"]["strategy"] == "ALL_UPSTREAM_TASKS_COMPLETED"
    assert close["inputs"]["parameters"]["status"]["taskFinalStatus"]["producerTask"] == "exit-handler-1"
    assert close["inputs"]["parameters"]["run_id"]["componentInputParameter"] == "parent_run_id"
    handler_tasks = comps["comp-exit-handler-1"]["dag"]["tasks"]
    loops = {name for name in handler_tasks if name.startswith("for-loop-")}
    assert set(handler_tasks) == STAGE_TASKS | loops and len(loops) == 2
    for loop in loops:  # the generation stages fan out over the params' shards
        assert handler_tasks[loop]["parameterIterator"]["items"]["raw"] == json.dumps(["0/2", "1/2"])
        (inner,) = comps[handler_tasks[loop]["componentRef"]["name"]]["dag"]["tasks"].values()
        assert inner["componentRef"]["name"] in {"comp-generate-images", "comp-generate-videos"}
    merge_input = handler_tasks["merge-shards"]["inputs"]["artifacts"]["shards"]["taskOutputArtifact"]
    assert merge_input["producerTask"] in loops
    # Tracking tasks must never be answered from the KFP cache.
    assert not root_tasks["open-mlflow-run"]["cachingOptions"].get("enableCache", False)
    assert not close["cachingOptions"].get("enableCache", False)

    executors = spec["deploymentSpec"]["executors"]
    assert "exec-generate-images" in executors and "exec-judge-videos" in executors
    for name, executor in executors.items():
        assert executor["container"]["image"] == IMAGE_OF.get(name, IMAGE)
        assert "pip install" not in " ".join(executor["container"]["command"])  # the image ships kfp
        assert "resources" not in executor["container"]  # the tiny profile asks for no GPU

    default = spec["root"]["inputDefinitions"]["parameters"]["params_yaml"]["defaultValue"]
    assert "\n" not in default  # kfp copies defaults into the header comment; see pipelines/__init__.py
    assert params_from_dict(yaml.safe_load(default)) == params

    # kfp's own loader reads the compiled pipeline back as a component ...
    loaded = components.load_component_from_file(str(path))
    assert loaded.name == PIPELINE_NAME
    assert set(loaded.component_spec.inputs) == {"params_yaml", "mlflow_tracking_uri"}
    assert params_from_dict(yaml.safe_load(loaded.component_spec.inputs["params_yaml"].default)) == params
    # ... that compiles again to the same IR.
    again = tmp_path / "again.yaml"
    compiler.Compiler().compile(loaded, str(again))
    respec = yaml.safe_load(again.read_text())
    assert respec["root"] == spec["root"] and respec["deploymentSpec"] == spec["deploymentSpec"]


def test_cli_compiles_with_the_repository_params(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from vidprior.cli import app

    monkeypatch.setenv("VIDPRIOR_HOME", str(ROOT))
    result = CliRunner().invoke(
        app, ["pipelines", "compile", "--output-dir", str(tmp_path), "--params", str(ROOT / "params.yaml")]
    )
    assert result.exit_code == 0, result.output
    spec = yaml.safe_load((tmp_path / "unic.yaml").read_text())
    images = load_params([ROOT / "params.yaml"]).images
    assert {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()} == {
        images.base,
        images.label,
        images.train,
    }


def test_paper_profile_puts_generation_on_gpus(tmp_path):
    paper = load_params([ROOT / "params.yaml", ROOT / "params" / "paper.yaml"])
    compile_all(paper, tmp_path)
    spec = next(yaml.safe_load_all((tmp_path / "unic.yaml").read_text()))  # then the platform spec
    executors = spec["deploymentSpec"]["executors"]
    for name in (
        "exec-generate-images",
        "exec-generate-videos",
        "exec-train-classifier",
        "exec-sample-guided",
    ):
        assert executors[name]["container"]["resources"]["accelerator"]["resourceCount"] == "1"
    assert "resources" not in executors["exec-measure-flow"]["container"]
    loops = [
        t
        for t in spec["components"]["comp-exit-handler-1"]["dag"]["tasks"].values()
        if "parameterIterator" in t
    ]
    assert all(len(json.loads(t["parameterIterator"]["items"]["raw"])) == paper.unic.shards for t in loops)


# --------------------------------------------------------------------------- kfp.local


@pytest.mark.filterwarnings("ignore:You may be attemping:RuntimeWarning")  # kfp.local: image name
@pytest.mark.filterwarnings("ignore:Task .* have no effect:UserWarning")  # kfp.local: display names
def test_local_run_end_to_end(params, tracking, tmp_path):
    run_dir = run_local(build_unic_pipeline(params), tmp_path / "root", mlflow_tracking_uri=tracking)

    task_dir = run_dir / "collect-prompts"
    out_dir = task_dir / "output"
    assert {p.name for p in out_dir.iterdir()} == {"manifest.parquet", "rejects.parquet"}
    metrics = executor_metrics(task_dir)
    assert_prompt_outputs(out_dir, metrics)
    assert (run_dir / "open-mlflow-run" / "executor_output.json").exists()
    assert (run_dir / "close-mlflow-run" / "executor_output.json").exists()

    # Shards fanned out and merged: every image and video once, media included.
    images, videos = run_dir / "merge-shards" / "output", run_dir / "merge-shards-2" / "output"
    image_ids = read_manifest(images)["id"]
    assert len(image_ids) == 4 * params.unic.images.per_prompt and image_ids.is_unique
    assert list(read_manifest(videos)["id"]) == list(image_ids)
    assert all((videos / p).is_file() for p in read_manifest(videos)["path"])
    shard_runs = sorted(run_dir.glob("for-loop-*-iteration-*"))
    assert len(shard_runs) == 4  # 2 image shards + 2 video shards

    labels = run_dir / "join-labels" / "output"
    assert len(read_manifest(labels)) + len(read_rejects(labels)) == len(image_ids)
    summary = json.loads((run_dir / "validate-unic-data" / "output" / "summary.json").read_text())
    assert summary == {name: {"failed": [], "success": True} for name in ("flow_statistics", "labels")}
    assert (run_dir / "export-review" / "page").read_text().lower().startswith("<!doctype html>")
    assert executor_metrics(run_dir / "join-labels")["labelled"] + executor_metrics(run_dir / "join-labels")[
        "unlabelled"
    ] == len(image_ids)

    registered = json.loads((run_dir / "register-unic-model" / "output" / "model.json").read_text())
    assert_evaluated_and_promoted(run_dir, tracking, "unic", "evaluate-unic", registered["version"])

    all_runs = runs(tracking, params.tracking.experiment)
    parents = [r for r in all_runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in all_runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["vidprior.pipeline"] == PIPELINE_NAME
    assert parent.data.tags["vidprior.orchestrator"] == "kfp"
    assert sorted(r.info.run_name for r in children) == sorted(
        [
            "unic.prompts",
            "unic.images[0/2]",
            "unic.images[1/2]",
            "unic.videos[0/2]",
            "unic.videos[1/2]",
            "unic.flow",
            "unic.judge",
            "unic.labels",
            "unic.validate",
            "unic.review",
            "unic.train",
            "unic.sample",
            "unic.register",
            "unic_register",
            "unic.evaluate",
            "unic.promote",
        ]
    )
    assert all(r.info.status == "FINISHED" for r in children)
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in children)
    child = next(r for r in children if r.info.run_name == "unic.prompts")
    assert child.data.params[STAGE_PARAM] == str(params.unic.prompts.dedup.threshold)
    assert child.data.params["profile"] == "tiny"
    assert child.data.metrics["prompts_read"] == shipped_prompt_rows()
    assert child.data.metrics["prompts_kept"] == metrics["prompts_kept"]
    flow_run = next(r for r in children if r.info.run_name == "unic.flow")
    artifacts = mlflow.MlflowClient(tracking_uri=tracking).list_artifacts(flow_run.info.run_id, "report")
    assert [a.path for a in artifacts] == ["report/flow_statistics.png"]  # the histogram plot
    assert not (tmp_path / "home").exists()  # every task used the tracking URI argument


@pytest.mark.filterwarnings("ignore:You may be attemping:RuntimeWarning")
def test_local_run_closes_the_parent_run_as_failed_when_a_stage_fails(params, tracking, tmp_path):
    data = params.model_dump(mode="json")
    data["unic"]["prompts"]["sources"] = [str(tmp_path / "missing.csv")]
    broken = yaml.safe_dump(data)

    with pytest.raises(RuntimeError, match="collect-prompts"):
        run_local(
            build_unic_pipeline(params), tmp_path / "root", params_yaml=broken, mlflow_tracking_uri=tracking
        )

    logged = runs(tracking, params.tracking.experiment)
    (parent,) = [r for r in logged if "mlflow.parentRunId" not in r.data.tags]
    assert parent.info.status == "FAILED"
    assert parent.data.tags["vidprior.pipeline"] == PIPELINE_NAME
    # The failing stage is on record too, with the error, and nothing after it ran.
    (stage,) = [r for r in logged if "mlflow.parentRunId" in r.data.tags]
    assert stage.info.run_name == "unic.prompts" and stage.info.status == "FAILED"
    assert "missing.csv: prompt file not found" in stage.data.tags["vidprior.error"]


# --------------------------------------------------------------------------- components in-process


def test_components_called_directly(params, tracking, tmp_path):
    experiment = params.tracking.experiment
    parent_id = open_mlflow_run.python_func(
        pipeline_name="direct", params_yaml=params_yaml_default(params), mlflow_tracking_uri=tracking
    )
    output = Dataset(name="output", uri=str(tmp_path / "output"))
    metrics = Metrics(name="metrics", uri=str(tmp_path / "metrics"))
    collect_prompts.python_func(
        params_yaml=yaml.safe_dump(params.model_dump(mode="json")),
        output=output,
        metrics=metrics,
        parent_run_id=parent_id,
        mlflow_tracking_uri=tracking,
    )
    status = PipelineTaskFinalStatus(
        state="SUCCEEDED",
        pipeline_job_resource_name="local",
        pipeline_task_name="exit-handler-1",
        error_code=None,
        error_message=None,
    )
    close_mlflow_run.python_func(run_id=parent_id, status=status, mlflow_tracking_uri=tracking)

    assert {p.name for p in Path(output.path).iterdir()} == {"manifest.parquet", "rejects.parquet"}
    assert_prompt_outputs(Path(output.path), metrics.metadata)
    assert all(isinstance(v, float) for v in metrics.metadata.values())

    by_parent = {r.data.tags.get("mlflow.parentRunId"): r for r in runs(tracking, experiment)}
    assert by_parent[None].info.run_id == parent_id and by_parent[None].info.status == "FINISHED"
    assert by_parent[parent_id].data.metrics["prompts_kept"] == metrics.metadata["prompts_kept"]
