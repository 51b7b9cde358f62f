"""The Kubeflow training job of a training stage: a PyTorchJob (training-operator v1) or a TrainJob
(Kubeflow Trainer v2), both running the stage's torchrun entry point on N nodes x M GPUs.

The job runs exactly what a local multi-GPU run runs, `torchrun --nnodes N --nproc-per-node M -m
vidprior.udpdiff.train LATENTS --output OUT --params PARAMS --metrics METRICS` (see
`vidprior.training.runs.torchrun_main`); node rank and the rendezvous address come from the `PET_*`
variables both operators set on every pod (torchrun reads `PET_<FLAG>` as the default of `--<flag>`).
Its inputs, params file and outputs lie in one work directory on the shared
`kubernetes.checkpoints_pvc`, mounted at the same path in the launching step and in every pod
(`JobFiles`). Placement follows `params.kubernetes`: GPU node selector (or affinity when several
products are accepted) and tolerations, the datasets and checkpoints PVCs, a memory-backed /dev/shm
and the MLflow secret as environment variables.
"""

from __future__ import annotations

import copy
import hashlib
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from vidprior.config import KubernetesParams, LauncherParams, Params

GPU_RESOURCE = "nvidia.com/gpu"
PYTORCHJOB = ("kubeflow.org", "v1", "pytorchjobs", "PyTorchJob")
TRAINJOB = ("trainer.kubeflow.org", "v1alpha1", "trainjobs", "TrainJob")
# The container the training operator requires in a PyTorchJob, and the torch runtime's replicated job
# and container of the Trainer v2 `torch-distributed` ClusterTrainingRuntime.
PYTORCH_CONTAINER = "pytorch"
TRAINJOB_NODE = "node"
PATCH_MANAGER = "vidprior.io/launcher"
SHM_VOLUME = "dshm"
PART_OF = {"app.kubernetes.io/part-of": "vidprior", "app.kubernetes.io/component": "training"}
STAGE_LABEL = "vidprior.io/stage"
WORK_KEY_LABEL = "vidprior.io/work-key"
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


@dataclass(frozen=True)
class TrainingStage:
    """A stage that can run as a training job: its torchrun module, its params section (which holds the
    `launcher`) and its positional inputs, as in `vidprior.stages.STAGES`."""

    name: str
    module: str
    section: str
    inputs: tuple[str, ...]

    @property
    def slug(self) -> str:
        return self.name.replace(".", "-")


TRAINING_STAGES = {
    "unic.train": TrainingStage("unic.train", "vidprior.unic.train", "unic.train", ("labels", "images")),
    "udpdiff.train": TrainingStage("udpdiff.train", "vidprior.udpdiff.train", "udpdiff.train", ("encode",)),
}


def training_stage(stage_name: str) -> TrainingStage:
    if stage_name not in TRAINING_STAGES:
        raise ValueError(
            f"{stage_name!r} cannot run as a training job; expected one of {sorted(TRAINING_STAGES)}"
        )
    return TRAINING_STAGES[stage_name]


def launcher_of(stage_name: str, params: Params) -> LauncherParams:
    return params.section(training_stage(stage_name).section).launcher


@dataclass(frozen=True)
class JobFiles:
    """A job's work directory on the shared volume: the same absolute path in the step and the pods."""

    root: PurePosixPath

    def input(self, name: str) -> PurePosixPath:
        return self.root / "inputs" / name

    @property
    def output(self) -> PurePosixPath:
        return self.root / "output"

    @property
    def params(self) -> PurePosixPath:
        return self.root / "params.yaml"

    @property
    def metrics(self) -> PurePosixPath:
        return self.root / "metrics.json"


def work_key(stage: TrainingStage, params: Params, inputs: Sequence[Path | str]) -> str:
    """Content key of a job's work directory: the stage, the resolved params and the inputs' file listing
    (relative paths and sizes, cheap even for paper-scale latents). A retried step lands in the same
    directory, so its job resumes from the checkpoints the failed attempt left there."""
    digest = hashlib.sha256(f"{stage.name}\n{params.digest()}\n".encode())
    for name, path in zip(stage.inputs, inputs, strict=True):
        digest.update(f"input {name}\n".encode())
        root = Path(path)
        for file in sorted(p for p in root.rglob("*") if p.is_file()):
            digest.update(f"{file.relative_to(root).as_posix()} {file.stat().st_size}\n".encode())
    return digest.hexdigest()[:12]


def job_files(stage: TrainingStage, params: Params, key: str) -> JobFiles:
    mount = PurePosixPath(params.kubernetes.checkpoints_pvc.mount_path)
    return JobFiles(mount / launcher_of(stage.name, params).work_dir / f"{stage.slug}-{key}")


def current_namespace(launcher: LauncherParams) -> str:
    """`launcher.namespace`, else the step's own namespace (its service account's), else "default"."""
    if launcher.namespace:
        return launcher.namespace
    try:
        return SERVICE_ACCOUNT_NAMESPACE.read_text(encoding="utf-8").strip() or "default"
    except OSError:
        return "default"


def job_name(stage: TrainingStage, key: str) -> str:
    """`<stage>-<work key>-<random>`: unique per launch (a retry makes a new job over the same work
    directory), short enough for the operators' derived names (`<job>-master-0`, `<job>-node-0-0`)."""
    return f"{stage.slug}-{key[:8]}-{os.urandom(2).hex()}"


@dataclass(frozen=True)
class TrainingJob:
    """Everything a job manifest is made of."""

    stage: TrainingStage
    name: str
    namespace: str
    image: str
    launcher: LauncherParams
    kubernetes: KubernetesParams
    files: JobFiles
    key: str
    # Claim name per volume ("checkpoints", "datasets") where it differs from `kubernetes.*_pvc.name`:
    # a pipeline-created PVC is named per run, and the job must mount the very claim the step has.
    claims: Mapping[str, str] = field(default_factory=dict)

    @property
    def procs_per_node(self) -> int:
        return max(self.launcher.gpus_per_node, 1)

    @property
    def command(self) -> list[str]:
        inputs = [str(self.files.input(name)) for name in self.stage.inputs]
        return [
            "torchrun",
            "--nnodes",
            str(self.launcher.nodes),
            "--nproc-per-node",
            str(self.procs_per_node),
            "-m",
            self.stage.module,
            *inputs,
            "--output",
            str(self.files.output),
            "--params",
            str(self.files.params),
            "--metrics",
            str(self.files.metrics),
        ]

    @property
    def labels(self) -> dict[str, str]:
        return {**PART_OF, STAGE_LABEL: self.stage.name, WORK_KEY_LABEL: self.key}


def training_job(
    stage_name: str,
    params: Params,
    inputs: Sequence[Path | str],
    *,
    name: str = "",
    claims: Mapping[str, str] | None = None,
) -> TrainingJob:
    stage = training_stage(stage_name)
    key = work_key(stage, params, inputs)
    launcher = launcher_of(stage_name, params)
    return TrainingJob(
        stage=stage,
        name=name or job_name(stage, key),
        namespace=current_namespace(launcher),
        image=params.images.train,
        launcher=launcher,
        kubernetes=params.kubernetes,
        files=job_files(stage, params, key),
        key=key,
        claims=dict(claims or {}),
    )


def manifest_for(job: TrainingJob) -> dict[str, Any]:
    """The job's manifest for `launcher.kind` (`in_process`: the PyTorchJob it would have been)."""
    return trainjob_manifest(job) if job.launcher.kind == "trainjob" else pytorchjob_manifest(job)


# --------------------------------------------------------------------------- pod pieces


def _env(job: TrainingJob) -> list[dict[str, Any]]:
    secret = job.kubernetes.mlflow_secret
    return [
        # Logs reach the step as they are written, not when a buffer fills.
        {"name": "PYTHONUNBUFFERED", "value": "1"},
        {"name": "VIDPRIOR_TRAINING_JOB", "value": job.name},
        # The model cache on the datasets volume, as the pipeline's tasks have it.
        *([{"name": "HF_HOME", "value": job.kubernetes.hf_home}] if job.kubernetes.hf_home else []),
        *(
            {
                "name": env_name,
                "valueFrom": {"secretKeyRef": {"name": secret.name, "key": key, "optional": secret.optional}},
            }
            for key, env_name in sorted(secret.env.items())
        ),
    ]


def _resources(job: TrainingJob) -> dict[str, Any]:
    amounts: dict[str, str] = {}
    if job.launcher.gpus_per_node:
        amounts[GPU_RESOURCE] = str(job.launcher.gpus_per_node)
    if job.launcher.cpu_per_node:
        amounts["cpu"] = job.launcher.cpu_per_node
    if job.launcher.memory_per_node:
        amounts["memory"] = job.launcher.memory_per_node
    # Requests equal to limits: a training node is never overcommitted.
    return {"limits": dict(amounts), "requests": dict(amounts)} if amounts else {}


def _volumes(job: TrainingJob) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(pod volumes, container mounts): checkpoints PVC (the work directory), datasets PVC (data and the
    model cache), and /dev/shm as memory, which NCCL and data loaders need beyond the 64 MiB default."""
    volumes, mounts = [], []
    for volume, pvc in (
        ("checkpoints", job.kubernetes.checkpoints_pvc),
        ("datasets", job.kubernetes.datasets_pvc),
    ):
        claim = job.claims.get(volume, pvc.name)
        volumes.append({"name": volume, "persistentVolumeClaim": {"claimName": claim}})
        mounts.append({"name": volume, "mountPath": pvc.mount_path})
    if job.kubernetes.shm_size:
        volumes.append(
            {"name": SHM_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": job.kubernetes.shm_size}}
        )
        mounts.append({"name": SHM_VOLUME, "mountPath": "/dev/shm"})
    return volumes, mounts


def _placement(job: TrainingJob) -> dict[str, Any]:
    """GPU nodes of an accepted product: a node selector for one, a required node affinity for several
    (as the pipeline's GPU tasks); nothing for a CPU job (`gpus_per_node: 0`)."""
    if not job.launcher.gpus_per_node:
        return {}
    k8s = job.kubernetes
    placement: dict[str, Any] = {}
    if len(k8s.gpu_products) == 1:
        placement["nodeSelector"] = {k8s.gpu_product_key: k8s.gpu_products[0]}
    else:
        term = {
            "matchExpressions": [
                {"key": k8s.gpu_product_key, "operator": "In", "values": list(k8s.gpu_products)}
            ]
        }
        placement["affinity"] = {
            "nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [term]}}
        }
    if k8s.gpu_tolerations:
        placement["tolerations"] = [t.model_dump(exclude_none=True) for t in k8s.gpu_tolerations]
    return placement


def _service_account(job: TrainingJob) -> dict[str, str]:
    return {"serviceAccountName": job.launcher.service_account} if job.launcher.service_account else {}


def _metadata(job: TrainingJob) -> dict[str, Any]:
    return {"name": job.name, "namespace": job.namespace, "labels": job.labels}


# --------------------------------------------------------------------------- PyTorchJob


def pytorchjob_manifest(job: TrainingJob) -> dict[str, Any]:
    """`kubeflow.org/v1` PyTorchJob: one Master and `nodes - 1` Workers, `gpus_per_node` GPUs each.

    Restarts are left to the step: `restartPolicy: Never` and `backoffLimit: 0` fail the job at the
    first pod failure (one restarted node cannot rejoin a static torchrun rendezvous anyway), and a
    retried step launches a new job over the same work directory, which resumes from its checkpoints.
    """
    volumes, mounts = _volumes(job)
    container = {
        "name": PYTORCH_CONTAINER,
        "image": job.image,
        "imagePullPolicy": "IfNotPresent",
        "command": job.command,
        "env": _env(job),
        "volumeMounts": mounts,
    }
    if resources := _resources(job):
        container["resources"] = resources
    template = {
        "metadata": {"labels": job.labels},
        "spec": {"containers": [container], "volumes": volumes, **_placement(job), **_service_account(job)},
    }
    replicas = {"Master": {"replicas": 1, "restartPolicy": "Never", "template": template}}
    if job.launcher.nodes > 1:
        worker = {
            "replicas": job.launcher.nodes - 1,
            "restartPolicy": "Never",
            "template": copy.deepcopy(template),
        }
        replicas["Worker"] = worker
    run_policy: dict[str, Any] = {
        # Pods stay until the TTL so a failed run's logs can be read; the step quotes them anyway.
        "cleanPodPolicy": "None",
        "backoffLimit": 0,
        "activeDeadlineSeconds": math.ceil(job.launcher.timeout_s),
    }
    if job.launcher.ttl_s is not None:
        run_policy["ttlSecondsAfterFinished"] = job.launcher.ttl_s
    group, version, _, kind = PYTORCHJOB
    return {
        "apiVersion": f"{group}/{version}",
        "kind": kind,
        "metadata": _metadata(job),
        "spec": {
            # The operator derives PET_NPROC_PER_NODE and WORLD_SIZE from it; torchrun is told the same.
            "nprocPerNode": str(job.procs_per_node),
            "runPolicy": run_policy,
            "pytorchReplicaSpecs": replicas,
        },
    }


# --------------------------------------------------------------------------- TrainJob


def trainjob_manifest(job: TrainingJob) -> dict[str, Any]:
    """`trainer.kubeflow.org/v1alpha1` TrainJob on the `launcher.runtime` ClusterTrainingRuntime.

    The trainer fields carry what the job is (image, command, nodes, processes and resources per node,
    environment); a runtime patch adds where it runs (placement, volumes, service account) to the
    runtime's `node` pods, which TrainJob has no first-class field for.
    """
    volumes, mounts = _volumes(job)
    trainer: dict[str, Any] = {
        "image": job.image,
        "command": job.command,
        "numNodes": job.launcher.nodes,
        "numProcPerNode": job.procs_per_node,
        "env": _env(job),
    }
    if resources := _resources(job):
        trainer["resourcesPerNode"] = resources
    pod_spec = {
        **_placement(job),
        **_service_account(job),
        "volumes": volumes,
        "containers": [{"name": TRAINJOB_NODE, "volumeMounts": mounts}],
    }
    pod = {"metadata": {"labels": job.labels}, "spec": pod_spec}
    patch = {
        "manager": PATCH_MANAGER,
        "trainingRuntimeSpec": {
            "template": {
                "spec": {"replicatedJobs": [{"name": TRAINJOB_NODE, "template": {"spec": {"template": pod}}}]}
            }
        },
    }
    group, version, _, kind = TRAINJOB
    return {
        "apiVersion": f"{group}/{version}",
        "kind": kind,
        "metadata": _metadata(job),
        "spec": {
            "runtimeRef": {"apiGroup": group, "kind": "ClusterTrainingRuntime", "name": job.launcher.runtime},
            "activeDeadlineSeconds": math.ceil(job.launcher.timeout_s),
            "trainer": trainer,
            "runtimePatches": [patch],
        },
    }
