"""The `vidprior-udpdiff` Kubeflow pipeline: compiled IR (tiny and paper profiles) and a kfp.local run."""

import json

import pytest
import yaml
from kfp import compiler, components
from kfp_local import ROOT, assert_evaluated_and_promoted, executor_metrics, parent_and_children, run_local

from pipelines.compile import compile_all
from pipelines.udpdiff import PIPELINE_NAME, build_udpdiff_pipeline
from vidprior.config import load_params, params_from_dict
from vidprior.io.manifest import read_manifest, read_rejects

pytestmark = pytest.mark.integration

IMAGES = {
    "base": "registry.example/vidprior/base:test",
    "label": "registry.example/vidprior/label:test",
    "train": "registry.example/vidprior/train:test",
}
LABELLERS = ("caption-clips", "segment-entities", "estimate-depth")
MODEL_TASKS = ("encode-latents", "train-udpdiff", "sample-udpdiff")
STAGE_TASKS = {
    "make-synthetic-panda",
    "select-panda-clips",
    *LABELLERS,
    "build-dense-dataset",
    *MODEL_TASKS,
    "register-udpdiff-model",
    "evaluate-udpdiff",
    "promote-model",
}
STAGE_RUNS = [
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
    "udpdiff_register",  # the registry's model-logging run
    "udpdiff.evaluate",
    "udpdiff.promote",
]


def _with_images(data: dict) -> dict:
    data.setdefault("images", {}).update(IMAGES)
    return data


@pytest.fixture
def params():
    return params_from_dict(_with_images(yaml.safe_load((ROOT / "params.yaml").read_text())))


def _executor_of(spec: dict, component_name: str) -> dict:
    label = spec["components"][component_name]["executorLabel"]
    return spec["deploymentSpec"]["executors"][label]["container"]


def test_compiled_pipeline_wires_every_stage_under_the_parent_run(params, tmp_path):
    compile_all(params, tmp_path)
    path = tmp_path / "udpdiff.yaml"
    spec = yaml.safe_load(path.read_text())
    assert spec["pipelineInfo"]["name"] == PIPELINE_NAME
    assert set(spec["root"]["dag"]["tasks"]) == {"open-mlflow-run", f"{PIPELINE_NAME}-stages"}
    stage_dag = spec["components"][f"comp-{PIPELINE_NAME}-stages"]["dag"]["tasks"]
    assert set(stage_dag) == {"exit-handler-1", "close-mlflow-run"}
    assert stage_dag["close-mlflow-run"]["triggerPolicy"]["strategy"] == "ALL_UPSTREAM_TASKS_COMPLETED"

    tasks = spec["components"]["comp-exit-handler-1"]["dag"]["tasks"]
    assert set(tasks) == STAGE_TASKS
    # The three labellers read the same clips and run side by side; the dataset joins all of them.
    for name in LABELLERS:
        (producer,) = {
            a["taskOutputArtifact"]["producerTask"] for a in tasks[name]["inputs"]["artifacts"].values()
        }
        assert producer == "select-panda-clips"
    joined = {
        a["taskOutputArtifact"]["producerTask"]
        for a in tasks["build-dense-dataset"]["inputs"]["artifacts"].values()
    }
    assert joined == {"select-panda-clips", *LABELLERS}
    sample_inputs = tasks["sample-udpdiff"]["inputs"]["artifacts"]
    assert sample_inputs["model"]["taskOutputArtifact"]["producerTask"] == "train-udpdiff"
    assert sample_inputs["dataset"]["taskOutputArtifact"]["producerTask"] == "build-dense-dataset"

    images = {name: _executor_of(spec, tasks[name]["componentRef"]["name"])["image"] for name in tasks}
    assert {images[n] for n in LABELLERS} == {IMAGES["label"]}
    assert images["train-udpdiff"] == IMAGES["train"]
    assert {images[n] for n in STAGE_TASKS - set(LABELLERS) - {"train-udpdiff"}} == {IMAGES["base"]}
    for name in tasks:  # the tiny profile asks for no GPU
        assert "resources" not in _executor_of(spec, tasks[name]["componentRef"]["name"])

    default = spec["root"]["inputDefinitions"]["parameters"]["params_yaml"]["defaultValue"]
    assert params_from_dict(yaml.safe_load(default)) == params
    loaded = components.load_component_from_file(str(path))
    again = tmp_path / "again.yaml"
    compiler.Compiler().compile(loaded, str(again))
    assert yaml.safe_load(again.read_text())["root"] == spec["root"]


def test_paper_profile_imports_panda_and_puts_models_on_gpus(tmp_path):
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    paper = load_params([ROOT / "params.yaml", ROOT / "params" / "paper.yaml"])
    paper = params_from_dict(
        _with_images({**paper.model_dump(mode="json"), "images": data.get("images", {})})
    )
    compile_all(paper, tmp_path)
    spec = next(yaml.safe_load_all((tmp_path / "udpdiff.yaml").read_text()))  # then the platform spec
    tasks = spec["components"]["comp-exit-handler-1"]["dag"]["tasks"]
    assert "make-synthetic-panda" not in tasks
    (importer,) = [t for name, t in tasks.items() if name.startswith("importer")]
    importer_spec = spec["deploymentSpec"]["executors"][
        spec["components"][importer["componentRef"]["name"]]["executorLabel"]
    ]["importer"]
    assert importer_spec["artifactUri"]["constant"] == paper.udpdiff.panda.source_uri
    clips_source = tasks["select-panda-clips"]["inputs"]["artifacts"]["source"]["taskOutputArtifact"]
    assert clips_source["producerTask"] == next(name for name in tasks if name.startswith("importer"))
    for name in (*LABELLERS, "encode-latents", "sample-udpdiff", "evaluate-udpdiff"):
        resources = _executor_of(spec, tasks[name]["componentRef"]["name"])["resources"]
        assert resources["accelerator"]["resourceCount"] == "1"
        assert resources["accelerator"]["resourceType"] == "nvidia.com/gpu"
    # Training is a PyTorchJob of 1 x 8 GPUs on the paper profile: its pods hold the GPUs, the step
    # that launches and follows it holds none, but mounts the checkpoints PVC it hands the job data on.
    assert paper.udpdiff.train.launcher.kind == "pytorchjob"
    train_executor = _executor_of(spec, tasks["train-udpdiff"]["componentRef"]["name"])
    assert "resources" not in train_executor and train_executor["image"] == IMAGES["train"]
    platform = list(yaml.safe_load_all((tmp_path / "udpdiff.yaml").read_text()))[1]
    train_platform = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"][
        spec["components"][tasks["train-udpdiff"]["componentRef"]["name"]]["executorLabel"]
    ]
    assert {m["mountPath"] for m in train_platform["pvcMount"]} == {
        paper.kubernetes.datasets_pvc.mount_path,
        paper.kubernetes.checkpoints_pvc.mount_path,
    }
    assert "nodeSelector" not in train_platform and "tolerations" not in train_platform
    for name in ("select-panda-clips", "build-dense-dataset", "register-udpdiff-model", "promote-model"):
        assert "resources" not in _executor_of(spec, tasks[name]["componentRef"]["name"])


@pytest.mark.filterwarnings("ignore:You may be attemping:RuntimeWarning")  # kfp.local: image name
@pytest.mark.filterwarnings("ignore:Task .* have no effect:UserWarning")  # kfp.local: display names
def test_local_run_end_to_end(params, tracking, tmp_path):
    run_dir = run_local(build_udpdiff_pipeline(params), tmp_path / "root", mlflow_tracking_uri=tracking)

    clips = run_dir / "select-panda-clips" / "output"
    clip_ids = set(read_manifest(clips)["id"]) | set(read_rejects(clips)["id"])
    synthetic = params.udpdiff.synthetic
    assert len(clip_ids) == synthetic.videos * synthetic.clips_per_video

    dataset = run_dir / "build-dense-dataset" / "output"
    items = read_manifest(dataset)
    assert len(items) > 0
    assert set(items["id"]) | set(read_rejects(dataset)["id"]) == clip_ids
    for column in ("clip_path", "seg_path", "depth_path"):
        assert all((dataset / p).is_file() for p in items[column])
    assert json.loads((dataset / "report" / "dense.json").read_text())["success"] is True

    train = run_dir / "train-udpdiff" / "model"
    assert (train / "transformer" / "config.json").is_file()
    assert executor_metrics(run_dir / "train-udpdiff")["steps"] == params.udpdiff.train.steps

    samples = read_manifest(run_dir / "sample-udpdiff" / "output")
    assert set(samples["task"]) == set(params.udpdiff.sample.tasks)
    registered = json.loads((run_dir / "register-udpdiff-model" / "output" / "model.json").read_text())
    assert (registered["name"], registered["alias"]) == ("udpdiff", "challenger")

    assert_evaluated_and_promoted(run_dir, tracking, "udpdiff", "evaluate-udpdiff", registered["version"])

    parent, children = parent_and_children(tracking, params.tracking.experiment)
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["vidprior.pipeline"] == PIPELINE_NAME
    assert sorted(r.info.run_name for r in children) == sorted(STAGE_RUNS)
    assert all(r.info.status == "FINISHED" for r in children)
    train_run = next(r for r in children if r.info.run_name == "udpdiff.train")
    assert train_run.data.params["udpdiff.train.zero_stage"] == str(params.udpdiff.train.zero_stage)
    assert not (tmp_path / "home").exists()  # every task used the tracking URI argument
