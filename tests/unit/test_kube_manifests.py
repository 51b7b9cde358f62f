"""The training jobs' manifests (`vidprior.kube.training_job`) and their strict validation (`validate`)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from vidprior.config import load_params, params_from_dict
from vidprior.kube.training_job import (
    TRAINING_STAGES,
    manifest_for,
    pytorchjob_manifest,
    training_job,
    trainjob_manifest,
    work_key,
)
from vidprior.kube.validate import ManifestError, validate_manifest

ROOT = Path(__file__).resolve().parents[2]
A100 = "NVIDIA-A100-SXM4-80GB"


def params_for(launcher: dict | None = None, kubernetes: dict | None = None, stage: str = "udpdiff"):
    data = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    data[stage]["train"]["launcher"] = {
        "kind": "pytorchjob",
        "nodes": 2,
        "gpus_per_node": 4,
        "namespace": "ml-team",
        "service_account": "vidprior-trainer",
        "cpu_per_node": "32",
        "memory_per_node": "480Gi",
        **(launcher or {}),
    }
    data["kubernetes"] = {"gpu_products": [A100], **(kubernetes or {})}
    return params_from_dict(data)


@pytest.fixture
def latents(tmp_path) -> Path:
    (tmp_path / "latents").mkdir()
    (tmp_path / "latents" / "clip-0.safetensors").write_bytes(b"0" * 10)
    return tmp_path / "latents"


def job_of(latents, **launcher):
    params = params_for(launcher)
    return training_job("udpdiff.train", params, [latents], name="udpdiff-train-test"), params


def pod_of(manifest, replica="Master"):
    return manifest["spec"]["pytorchReplicaSpecs"][replica]["template"]["spec"]


def by_name(items):
    return {item["name"]: item for item in items}


# --------------------------------------------------------------------------- PyTorchJob


def test_pytorchjob_is_valid_and_runs_the_stage_on_n_nodes_by_m_gpus(latents):
    job, params = job_of(latents)
    manifest = pytorchjob_manifest(job)
    validate_manifest(manifest)

    assert manifest["apiVersion"] == "kubeflow.org/v1" and manifest["kind"] == "PyTorchJob"
    assert manifest["metadata"]["namespace"] == "ml-team"
    spec = manifest["spec"]
    assert spec["pytorchReplicaSpecs"]["Master"]["replicas"] == 1
    assert spec["pytorchReplicaSpecs"]["Worker"]["replicas"] == 1  # 2 nodes = master + 1 worker
    assert spec["nprocPerNode"] == "4"
    assert spec["runPolicy"]["backoffLimit"] == 0

    for replica in ("Master", "Worker"):
        pod = pod_of(manifest, replica)
        (container,) = pod["containers"]
        assert container["name"] == "pytorch" and container["image"] == params.images.train
        assert container["resources"]["limits"] == {"nvidia.com/gpu": "4", "cpu": "32", "memory": "480Gi"}
        root = f"/mnt/checkpoints/vidprior-jobs/udpdiff-train-{job.key}"
        assert container["command"] == [
            "torchrun",
            "--nnodes",
            "2",
            "--nproc-per-node",
            "4",
            "-m",
            "vidprior.udpdiff.train",
            f"{root}/inputs/encode",
            "--output",
            f"{root}/output",
            "--params",
            f"{root}/params.yaml",
            "--metrics",
            f"{root}/metrics.json",
        ]
        assert pod["nodeSelector"] == {"nvidia.com/gpu.product": A100}
        assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
        assert pod["serviceAccountName"] == "vidprior-trainer"
        volumes = by_name(pod["volumes"])
        assert volumes["checkpoints"]["persistentVolumeClaim"] == {"claimName": "vidprior-checkpoints"}
        assert volumes["datasets"]["persistentVolumeClaim"] == {"claimName": "vidprior-datasets"}
        assert volumes["dshm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "32Gi"}
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        assert mounts == {"checkpoints": "/mnt/checkpoints", "datasets": "/mnt/datasets", "dshm": "/dev/shm"}
        env = by_name(container["env"])
        assert env["MLFLOW_TRACKING_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
            "name": "vidprior-mlflow",
            "key": "password",
            "optional": False,
        }
        assert env["PYTHONUNBUFFERED"]["value"] == "1"


def test_one_node_has_no_workers_and_cpu_jobs_no_gpu_placement(latents):
    job, _ = job_of(latents, nodes=1, gpus_per_node=0, cpu_per_node=None, memory_per_node=None)
    manifest = pytorchjob_manifest(job)
    validate_manifest(manifest)
    assert set(manifest["spec"]["pytorchReplicaSpecs"]) == {"Master"}
    pod = pod_of(manifest)
    assert "nodeSelector" not in pod and "tolerations" not in pod and "resources" not in pod["containers"][0]
    assert pod["containers"][0]["command"][1:5] == ["--nnodes", "1", "--nproc-per-node", "1"]


def test_several_gpu_products_become_a_node_affinity(latents):
    params = params_for(kubernetes={"gpu_products": [A100, "NVIDIA-H100-80GB-HBM3"]})
    manifest = pytorchjob_manifest(training_job("udpdiff.train", params, [latents]))
    validate_manifest(manifest)
    terms = pod_of(manifest)["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    (expression,) = terms["nodeSelectorTerms"][0]["matchExpressions"]
    assert expression == {
        "key": "nvidia.com/gpu.product",
        "operator": "In",
        "values": [A100, "NVIDIA-H100-80GB-HBM3"],
    }
    assert "nodeSelector" not in pod_of(manifest)


# --------------------------------------------------------------------------- TrainJob


def test_trainjob_is_valid_and_runs_the_same_command(latents):
    job, params = job_of(latents, kind="trainjob", nodes=3, gpus_per_node=8)
    manifest = manifest_for(job)
    validate_manifest(manifest)

    assert manifest["apiVersion"] == "trainer.kubeflow.org/v1alpha1" and manifest["kind"] == "TrainJob"
    spec = manifest["spec"]
    assert spec["runtimeRef"] == {
        "apiGroup": "trainer.kubeflow.org",
        "kind": "ClusterTrainingRuntime",
        "name": "torch-distributed",
    }
    trainer = spec["trainer"]
    assert trainer["numNodes"] == 3 and trainer["numProcPerNode"] == 8
    assert trainer["resourcesPerNode"]["limits"]["nvidia.com/gpu"] == "8"
    assert trainer["image"] == params.images.train
    assert trainer["command"][:7] == [
        "torchrun",
        "--nnodes",
        "3",
        "--nproc-per-node",
        "8",
        "-m",
        "vidprior.udpdiff.train",
    ]
    assert trainer["command"] == job.command  # what the PyTorchJob of the same launch runs
    assert "MLFLOW_TRACKING_USERNAME" in by_name(trainer["env"])

    (patch,) = spec["runtimePatches"]
    (replicated,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    assert replicated["name"] == "node"
    pod = replicated["template"]["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": A100}
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert pod["serviceAccountName"] == "vidprior-trainer"
    assert (
        by_name(pod["volumes"])["checkpoints"]["persistentVolumeClaim"]["claimName"] == "vidprior-checkpoints"
    )
    (container,) = pod["containers"]
    assert container["name"] == "node"
    assert {m["mountPath"] for m in container["volumeMounts"]} == {
        "/mnt/checkpoints",
        "/mnt/datasets",
        "/dev/shm",
    }


def test_unic_job_takes_both_inputs(tmp_path):
    for name in ("labels", "images"):
        (tmp_path / name).mkdir()
    params = params_for(stage="unic", launcher={"nodes": 1, "gpus_per_node": 1})
    job = training_job("unic.train", params, [tmp_path / "labels", tmp_path / "images"])
    manifest = pytorchjob_manifest(job)
    validate_manifest(manifest)
    command = pod_of(manifest)["containers"][0]["command"]
    assert command[6:9] == [
        "vidprior.unic.train",
        f"{job.files.root}/inputs/labels",
        f"{job.files.root}/inputs/images",
    ]


def test_paper_profile_trains_udpdiff_on_one_node_of_eight_gpus(latents):
    params = load_params([ROOT / "params.yaml", ROOT / "params" / "paper.yaml"])
    launcher = params.udpdiff.train.launcher
    assert (launcher.kind, launcher.nodes, launcher.gpus_per_node) == ("pytorchjob", 1, 8)
    assert params.unic.train.launcher.kind == "in_process"  # one A100: the step's own GPU
    manifest = manifest_for(training_job("udpdiff.train", params, [latents]))
    validate_manifest(manifest)
    assert pod_of(manifest)["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "8"
    assert load_params([ROOT / "params.yaml"]).udpdiff.train.launcher.kind == "in_process"


def test_training_stages_match_the_stage_registry():
    import inspect

    from vidprior.stages import STAGES

    for name, stage in TRAINING_STAGES.items():
        # The registry's entry as declared, without importing the (torch-heavy) stage module.
        declared = inspect.getclosurevars(STAGES[name]).nonlocals
        assert (declared["module"], declared["section"], declared["inputs"]) == (
            stage.module,
            stage.section,
            stage.inputs,
        )


def test_work_key_follows_params_and_inputs(latents):
    stage = TRAINING_STAGES["udpdiff.train"]
    params = params_for()
    key = work_key(stage, params, [latents])
    assert work_key(stage, params, [latents]) == key
    assert work_key(stage, params_for({"nodes": 4}), [latents]) != key
    (latents / "clip-1.safetensors").write_bytes(b"1")
    assert work_key(stage, params, [latents]) != key


# --------------------------------------------------------------------------- broken manifests


def problems(manifest) -> dict[str, str]:
    with pytest.raises(ManifestError) as caught:
        validate_manifest(manifest)
    return dict(caught.value.problems)


@pytest.fixture
def pytorchjob(latents):
    return pytorchjob_manifest(job_of(latents)[0])


@pytest.fixture
def trainjob(latents):
    return trainjob_manifest(job_of(latents, kind="trainjob")[0])


def test_pytorchjob_unknown_field_wrong_type_and_missing_field_are_named(pytorchjob):
    broken = copy.deepcopy(pytorchjob)
    master = broken["spec"]["pytorchReplicaSpecs"]["Master"]
    master["replicas"] = "1"
    container = master["template"]["spec"]["containers"][0]
    container["gpus"] = 4
    del container["name"]
    container["resources"]["limits"]["nvidia.com/gpu"] = "four"
    del broken["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]["volumes"][0]["name"]
    found = problems(broken)
    containers = "spec.pytorchReplicaSpecs.Master.template.spec.containers[0]"
    assert found["spec.pytorchReplicaSpecs.Master.replicas"] == "expected an integer, got str '1'"
    assert found[f"{containers}.gpus"].startswith("unknown field (expected one of: args, command, env,")
    assert found[f"{containers}.name"] == "required field of V1Container is missing"
    assert "resource quantity" in found[f"{containers}.resources.limits['nvidia.com/gpu']"]
    assert "spec.pytorchReplicaSpecs.Worker.template.spec.volumes[0].name" in found

    missing = copy.deepcopy(pytorchjob)
    del missing["spec"]["pytorchReplicaSpecs"]
    assert "spec.pytorchReplicaSpecs" in problems(missing)


def test_trainjob_unknown_field_wrong_type_and_missing_field_are_named(trainjob):
    broken = copy.deepcopy(trainjob)
    broken["spec"]["trainer"]["numNodes"] = "2"
    broken["spec"]["trainer"]["gpus"] = 8
    del broken["spec"]["runtimeRef"]["name"]
    pod = broken["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]
    pod["template"]["spec"]["template"]["spec"]["tolerations"][0]["operator"] = "Sometimes"
    found = problems(broken)
    assert found["spec.trainer.numNodes"] == "input should be a valid integer; got str '2'"
    assert found["spec.trainer.gpus"].startswith("unknown field (expected one of: args, command, env, image,")
    assert found["spec.runtimeRef.name"] == "required field of TrainerV1alpha1RuntimeRef is missing"
    toleration = (
        "spec.runtimePatches[0].trainingRuntimeSpec.template.spec.replicatedJobs[0].template.spec.template.spec"
        ".tolerations[0].operator"
    )
    assert "must be one of enum values" in found[toleration]


def test_built_in_kinds_are_checked_against_the_kubernetes_models():
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "mlflow"},
        "spec": {
            "selector": {"matchLabels": {"app": "mlflow"}},
            "template": {
                "metadata": {"labels": {"app": "mlflow"}},
                "spec": {
                    "containers": [{"name": "mlflow", "image": "m", "resources": {"requests": {"cpu": 1}}}]
                },
            },
        },
    }
    validate_manifest(deployment)
    validate_manifest(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "s"},
            "spec": {"ports": [{"port": 80, "targetPort": "http"}]},
        }
    )
    validate_manifest(
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "stringData": {"k": "v"}}
    )
    deployment["spec"]["replicas"] = True
    deployment["spec"]["template"]["spec"]["containers"][0]["port"] = 5000
    found = problems(deployment)
    assert found["spec.replicas"] == "expected an integer, got bool True"
    assert "spec.template.spec.containers[0].port" in found
    assert "metadata.name" in problems({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {}})


def test_unknown_kinds_and_groups_are_refused():
    for api_version, kind in (
        ("apps/v1", "Pod"),
        ("example.com/v1", "Widget"),
        ("kubeflow.org/v1", "Notebook"),
    ):
        assert (
            "no schema for"
            in problems({"apiVersion": api_version, "kind": kind, "metadata": {"name": "x"}})[
                "apiVersion/kind"
            ]
        )
    assert "apiVersion" in problems({"kind": "Service"})


def test_in_process_record_states_it_and_shows_the_job_it_would_be(latents, tmp_path):
    from vidprior.kube.launch import write_in_process_record

    params = params_for({"kind": "in_process", "nodes": 1, "gpus_per_node": 8})
    write_in_process_record("udpdiff.train", params, [latents], tmp_path / "job_manifest")
    text = (tmp_path / "job_manifest").read_text()
    assert text.startswith(
        "# udpdiff.train ran in process, inside this step (udpdiff.train.launcher.kind: in_process)"
    )
    assert "&id" not in text  # no YAML anchors for the reader or kubectl
    preview = yaml.safe_load(text)
    validate_manifest(preview)
    assert preview["kind"] == "PyTorchJob" and preview["metadata"]["name"] == "udpdiff-train-preview"
    assert pod_of(preview)["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "8"


def test_launcher_rbac_grants_what_a_launch_calls():
    from vidprior.kube.rbac import launcher_rbac

    role, binding = launcher_rbac("ml-team", "pipeline-runner")
    for manifest in (role, binding):
        validate_manifest(manifest)
    granted = {
        (group, resource, verb)
        for r in role["rules"]
        for group in r["apiGroups"]
        for resource in r["resources"]
        for verb in r["verbs"]
    }
    for needed in [
        ("kubeflow.org", "pytorchjobs", "create"),
        ("kubeflow.org", "pytorchjobs", "get"),
        ("kubeflow.org", "pytorchjobs", "delete"),
        ("trainer.kubeflow.org", "trainjobs", "create"),
        ("", "pods", "list"),
        ("", "pods/log", "get"),
    ]:
        assert needed in granted
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "pipeline-runner", "namespace": "ml-team"}
    ]
