"""A train step launching its stage as a Kubeflow training job, against a fake API server on 127.0.0.1.

The success path is real end to end: the component's `python_func` stages the latents on the "shared
PVC" (a temporary directory: the same path for the step and the job, as a mounted volume is), creates
the PyTorchJob over HTTP, and the fake operator then runs the manifest's own container command, torchrun
included, with the `PET_*` variables the training operator sets. The step streams that process's log,
sees the job succeed, copies the trained model back and logs the stage run to MLflow. Failure and
timeout are played by a scripted operator.
"""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from fake_kube import FakeKube
from kfp.dsl import Artifact, Dataset, Metrics, Model

from components.train.udpdiff import train_udpdiff
from vidprior.config import params_from_dict, params_to_yaml
from vidprior.kube.launch import TrainingJobFailed, TrainingJobTimeout, run_training_job
from vidprior.kube.validate import validate_manifest
from vidprior.registry import tracking
from vidprior.udpdiff import train

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from test_udpdiff_train import make_latents  # noqa: E402

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
NAMESPACE = "vidprior-test"
STEPS = 4
MASTER_LABELS = ("training.kubeflow.org/job-name", "training.kubeflow.org/replica-type")


@pytest.fixture(scope="module")
def latents(tmp_path_factory) -> Path:
    return make_latents(tmp_path_factory.mktemp("latents"))


def params_data(pvc: Path, **launcher) -> dict:
    data = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    data["udpdiff"]["train"].update(steps=STEPS, lr=1e-3, micro_batch=1, checkpoint_every=2)
    data["udpdiff"]["train"]["launcher"] = {
        "kind": "pytorchjob",
        "nodes": 1,
        "gpus_per_node": 0,  # one CPU process (gloo): the CI machine has no GPU
        "namespace": NAMESPACE,
        "poll_s": 0.05,
        "timeout_s": 120,
        "log_tail_lines": 5,
        **launcher,
    }
    data["kubernetes"] = {"checkpoints_pvc": {"name": "vidprior-checkpoints", "mount_path": str(pvc)}}
    return data


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def master_pod(fake: FakeKube, obj: dict, phase: str = "Pending"):
    name = obj["metadata"]["name"]
    labels = dict(zip(MASTER_LABELS, (name, "master"), strict=True))
    return fake.add_pod(obj["metadata"]["namespace"], f"{name}-master-0", labels, phase)


def training_operator(fake: FakeKube, obj: dict) -> None:
    """What the training operator and the kubelet do with a one-node PyTorchJob: run the master's
    container command with the operator's torchrun environment, its output as the pod log."""
    namespace, name = obj["metadata"]["namespace"], obj["metadata"]["name"]
    pod = master_pod(fake, obj)
    fake.set_condition("pytorchjobs", namespace, name, "Created", "PyTorchJobCreated")
    (container,) = obj["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"]

    def run():
        command = container["command"]
        assert command[0] == "torchrun"
        env = {
            **os.environ,
            **{e["name"]: e["value"] for e in container["env"] if "value" in e},
            "PET_NNODES": "1",
            "PET_NPROC_PER_NODE": obj["spec"]["nprocPerNode"],
            "PET_NODE_RANK": "0",
            "PET_MASTER_ADDR": "127.0.0.1",
            "PET_MASTER_PORT": str(free_port()),
            "OMP_NUM_THREADS": "1",
        }
        proc = subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", *command[1:]],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        pod.phase = "Running"
        fake.set_condition("pytorchjobs", namespace, name, "Running", "PyTorchJobRunning")
        for line in proc.stdout:
            fake.log(pod, line.rstrip("\n"))
        ok = proc.wait() == 0
        pod.phase = "Succeeded" if ok else "Failed"
        fake.set_condition(
            "pytorchjobs",
            namespace,
            name,
            "Succeeded" if ok else "Failed",
            "PyTorchJobSucceeded" if ok else "x",
        )

    fake.in_background(run)


def test_component_runs_the_stage_as_a_pytorchjob(latents, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("VIDPRIOR_PARENT_RUN_ID", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)  # not in a pod: the kubeconfig is used
    tracked = []  # what the stage hands MLflow (a real store costs seconds; tracking has its own tests)
    monkeypatch.setattr(
        tracking, "log_stage", lambda *args, **kwargs: tracked.append((args, kwargs)) or "run"
    )
    pvc = tmp_path / "pvc"
    pvc.mkdir()
    params_yaml = params_to_yaml(params_from_dict(params_data(pvc)))
    model = Model(name="model", uri=str(tmp_path / "model"))
    metrics = Metrics(name="metrics", uri=str(tmp_path / "metrics"))
    manifest = Artifact(name="job_manifest", uri=str(tmp_path / "job_manifest"))

    with FakeKube(training_operator) as fake:
        monkeypatch.setenv("KUBECONFIG", str(fake.kubeconfig(tmp_path / "kubeconfig")))
        train_udpdiff.python_func(
            params_yaml=params_yaml,
            latents=Dataset(name="latents", uri=str(latents)),
            model=model,
            metrics=metrics,
            job_manifest=manifest,
        )

    # The job that was created is the manifest saved as the step's artifact, and it is valid.
    (created,) = fake.calls("POST", f"/apis/kubeflow.org/v1/namespaces/{NAMESPACE}/pytorchjobs$")
    saved = yaml.safe_load(Path(manifest.path).read_text())
    assert saved == created.body
    validate_manifest(saved)
    # The job read the staged latents and wrote to the shared volume; the step copied the model back.
    root = Path(
        saved["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["command"][-1]
    )
    root = root.parent
    assert sorted(p.name for p in (root / "inputs" / "encode").iterdir()) == sorted(
        p.name for p in latents.iterdir()
    )
    out = Path(model.path)
    assert (out / train.SUMMARY_JSON).is_file() and (out / train.TRANSFORMER_DIR).is_dir()
    assert (out / train.SUMMARY_JSON).read_bytes() == (root / "output" / train.SUMMARY_JSON).read_bytes()
    # The metrics are rank 0's, from the master log; the stage is tracked as if it had run here.
    assert metrics.metadata["steps"] == STEPS
    assert json.loads((root / "metrics.json").read_text())["steps"] == STEPS
    logs = fake.calls("GET", r"/pods/[^/]+/log$")
    assert logs and all(r.query["container"] == "pytorch" and r.query["timestamps"] == "True" for r in logs)
    ((name, _, logged, stage_metrics), kwargs) = tracked[0]
    assert len(tracked) == 1 and name == "udpdiff.train" and kwargs["status"] == "FINISHED"
    assert stage_metrics["steps"] == STEPS and logged["udpdiff.train.launcher.kind"] == "pytorchjob"
    assert [step for step, _ in kwargs["history"]] == list(range(1, STEPS + 1))  # the copied-back curve


# --------------------------------------------------------------------------- scripted operator


def scripted(lines: list[str], end: str | None, reason: str = "", message: str = ""):
    def operator(fake: FakeKube, obj: dict) -> None:
        namespace, name = obj["metadata"]["namespace"], obj["metadata"]["name"]
        pod = master_pod(fake, obj, phase="Running")
        fake.set_condition("pytorchjobs", namespace, name, "Running", "PyTorchJobRunning")
        for line in lines:
            fake.log(pod, line)
        if end:
            pod.phase = end
            fake.set_condition("pytorchjobs", namespace, name, end, reason, message)

    return operator


def launch(fake: FakeKube, tmp_path: Path, latents: Path, **launcher):
    from kubernetes import client

    pvc = tmp_path / "pvc"
    pvc.mkdir(exist_ok=True)
    params = params_from_dict(params_data(pvc, **launcher))
    out = io.StringIO()
    api = client.ApiClient(client.Configuration(host=fake.url))
    try:
        return run_training_job(
            "udpdiff.train",
            params,
            [latents],
            tmp_path / "model",
            tmp_path / "manifest.yaml",
            api_client=api,
            out=out,
        )
    finally:
        launch.out = out.getvalue()


def test_failed_job_raises_with_the_reason_and_the_log_tail(latents, tmp_path):
    lines = [f"step {i}" for i in range(10)] + [
        "Traceback (most recent call last):",
        "RuntimeError: NCCL timeout",
    ]
    operator = scripted(
        lines,
        "Failed",
        "PyTorchJobFailed",
        "PyTorchJob udpdiff is failed because 1 Master replica(s) failed.",
    )
    with FakeKube(operator) as fake, pytest.raises(TrainingJobFailed) as caught:
        launch(fake, tmp_path, latents)
    message = str(caught.value)
    assert "PyTorchJobFailed: PyTorchJob udpdiff is failed because 1 Master replica(s) failed." in message
    assert (
        "RuntimeError: NCCL timeout" in message and "step 7" in message and "step 6" not in message
    )  # 5 lines
    assert "[udpdiff-train-" in launch.out and "step 0" in launch.out  # the whole log was streamed
    assert not (tmp_path / "model").exists()
    assert (tmp_path / "manifest.yaml").is_file()  # saved before the job ran
    assert not fake.calls("DELETE")  # kept for `kubectl describe`; its TTL removes it


def test_job_past_its_timeout_is_deleted_and_raises(latents, tmp_path):
    with (
        FakeKube(scripted(["loading the model"], end=None)) as fake,
        pytest.raises(TrainingJobTimeout) as caught,
    ):
        launch(fake, tmp_path, latents, timeout_s=0.5)
    assert "did not finish within 0.5 s; deleted it" in str(caught.value)
    assert "loading the model" in str(caught.value)
    (deleted,) = fake.calls("DELETE", "/pytorchjobs/udpdiff-train-")
    assert deleted.body["propagationPolicy"] == "Background"
    assert launch.out.count("loading the model") == 1  # polled many times, printed once


def test_trainjob_is_followed_through_its_jobset_pods(latents, tmp_path, monkeypatch):
    def operator(fake: FakeKube, obj: dict) -> None:
        namespace, name = obj["metadata"]["namespace"], obj["metadata"]["name"]
        labels = {
            "jobset.sigs.k8s.io/jobset-name": name,
            "jobset.sigs.k8s.io/replicatedjob-name": "node",
            "batch.kubernetes.io/job-completion-index": "0",
        }
        pod = fake.add_pod(namespace, f"{name}-node-0-0", labels, phase="Succeeded")
        output = Path(
            obj["spec"]["trainer"]["command"][obj["spec"]["trainer"]["command"].index("--output") + 1]
        )
        (output / "report").mkdir(parents=True)
        (output / "report" / "history.csv").write_text("step,loss\n1,0.5\n")
        fake.log(pod, 'METRICS {"steps": 1, "final_loss": 0.5}')
        fake.set_condition("trainjobs", namespace, name, "Complete", "JobsCompleted")

    monkeypatch.setenv("HOSTNAME", "unic-run-train-step")
    with FakeKube(operator) as fake:
        # The launching step's own pod: its checkpoints volume is a claim the pipeline created this run.
        step_volume = {
            "name": "pvc-1",
            "persistentVolumeClaim": {"claimName": "run-1a2b-vidprior-checkpoints"},
        }
        mount = {"name": "pvc-1", "mountPath": str(tmp_path / "pvc")}
        step_spec = {"containers": [{"name": "main", "volumeMounts": [mount]}], "volumes": [step_volume]}
        fake.add_pod(NAMESPACE, "unic-run-train-step", {}, "Running", spec=step_spec)
        fake.unavailable_gets = 1
        metrics = launch(fake, tmp_path, latents, kind="trainjob")
    assert "API server answered 503; retrying" in launch.out  # a hiccup costs a poll, not the run
    assert metrics == {"steps": 1, "final_loss": 0.5}
    assert (tmp_path / "model" / "report" / "history.csv").read_text() == "step,loss\n1,0.5\n"
    assert fake.calls("POST", f"/apis/trainer.kubeflow.org/v1alpha1/namespaces/{NAMESPACE}/trainjobs$")
    (listing, *_) = fake.calls("GET", f"/api/v1/namespaces/{NAMESPACE}/pods$")
    assert "jobset.sigs.k8s.io/jobset-name=udpdiff-train-" in listing.query["labelSelector"]
    assert {r.query["container"] for r in fake.calls("GET", "/log$")} == {"node"}
    (created,) = fake.calls("POST", "/trainjobs$")
    patch = created.body["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]
    volumes = patch["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]["volumes"]
    claims = {
        v["name"]: v["persistentVolumeClaim"]["claimName"] for v in volumes if "persistentVolumeClaim" in v
    }
    # The job mounts the step's own claim; the datasets volume, not mounted in the step, keeps its name.
    assert claims == {"checkpoints": "run-1a2b-vidprior-checkpoints", "datasets": "vidprior-datasets"}
