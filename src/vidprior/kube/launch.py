"""A pipeline step that runs its training stage as a Kubeflow training job and waits for it.

`execute_training_step` is what the training components call. With `launcher.kind: in_process` (the
default, and the tiny profile's) it runs the stage inside the step exactly as every other stage runs;
with `pytorchjob` or `trainjob` it hands `vidprior.stages.execute` a runner, `run_training_job`, so the
stage is tracked the same way (MLflow run, KFP metrics) while the work happens on the cluster:

1. stage: copy the step's input artifacts into the job's work directory on the shared checkpoints PVC
   (mounted in the step and in every pod at the same path) and write the resolved params file there;
2. create: generate the manifest, validate it against the SDK's models, save it as the step's
   `job_manifest` artifact, POST it (CustomObjectsApi);
3. follow: poll the job's conditions until Succeeded/Complete or Failed (or the timeout, which deletes
   the job), and stream the master pod's log to stdout meanwhile (the step's own log in the KFP UI);
4. collect: copy the job's output directory into the step's output artifact and return the metrics
   rank 0 printed (`METRICS {...}`), or those it wrote to the metrics file.

A failed job raises `TrainingJobFailed` with the operator's reason and the last lines of the master log.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import socket
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import yaml

from vidprior.config import Params, params_to_yaml
from vidprior.io.atomic import write_text_atomic
from vidprior.kube.training_job import (
    PYTORCH_CONTAINER,
    PYTORCHJOB,
    TRAINJOB,
    TRAINJOB_NODE,
    TrainingJob,
    current_namespace,
    launcher_of,
    manifest_for,
    training_job,
)
from vidprior.kube.validate import validate_manifest

SUCCEEDED = ("Succeeded", "Complete")  # PyTorchJob, TrainJob
FAILED = ("Failed",)
METRICS_LINE = re.compile(r"(?:^|\s)METRICS (\{.*\})\s*$")


class TrainingJobError(RuntimeError):
    """The training job could not be created, failed, or did not finish in time."""


class TrainingJobFailed(TrainingJobError):
    pass


class TrainingJobTimeout(TrainingJobError):
    pass


# --------------------------------------------------------------------------- the component's entry


def execute_training_step(
    stage_name: str,
    params_yaml: str,
    inputs: Sequence[str],
    output_path: str,
    metrics_artifact,
    manifest_path: str,
    *,
    parent_run_id: str = "",
    mlflow_tracking_uri: str = "",
) -> dict[str, float]:
    """A training component's body: the stage in process, or as the job its launcher asks for.

    `manifest_path` (the component's `job_manifest` artifact) receives the job's manifest; in process it
    receives the PyTorchJob that `launcher.kind: pytorchjob` would create, under a header saying so.
    """
    from vidprior.config import params_from_dict
    from vidprior.stages import execute_for_component

    params = params_from_dict(yaml.safe_load(params_yaml))
    launcher = launcher_of(stage_name, params)
    runner = None
    if launcher.kind == "in_process":
        write_in_process_record(stage_name, params, inputs, Path(manifest_path))
    else:
        runner = job_runner(stage_name, Path(manifest_path))
    return execute_for_component(
        stage_name,
        params_yaml,
        inputs,
        output_path,
        metrics_artifact,
        parent_run_id=parent_run_id,
        mlflow_tracking_uri=mlflow_tracking_uri,
        runner=runner,
    )


def job_runner(stage_name: str, manifest_path: Path, api_client=None, out: IO[str] | None = None) -> Callable:
    """`run(params, inputs, output_dir)` for `vidprior.stages.execute`, launching `stage_name` as a job."""

    def run(params: Params, inputs: Sequence[Path | str] | None, output_dir: Path) -> dict[str, float]:
        return run_training_job(
            stage_name, params, list(inputs or []), output_dir, manifest_path, api_client=api_client, out=out
        )

    return run


def write_in_process_record(
    stage_name: str, params: Params, inputs: Sequence[Path | str], path: Path
) -> None:
    job = training_job(stage_name, params, inputs, name=f"{stage_name.replace('.', '-')}-preview")
    preview = manifest_for(job)
    validate_manifest(preview)
    header = (
        f"# {stage_name} ran in process, inside this step ({stage_name}.launcher.kind: in_process).\n"
        "# With launcher.kind: pytorchjob it would have created the PyTorchJob below instead:\n"
        f"# {job.launcher.nodes} node(s) x {job.launcher.gpus_per_node} GPU(s), work directory on the PVC "
        f"{params.kubernetes.checkpoints_pvc.name}.\n"
        "# Validated against the kubeflow-training models.\n"
    )
    write_text_atomic(path, header + dump_manifest(preview))


def dump_manifest(manifest: dict[str, Any]) -> str:
    return yaml.dump(manifest, Dumper=_PlainDumper, sort_keys=False)


class _PlainDumper(yaml.SafeDumper):
    """No `&id001` anchors: a manifest is read by people and by `kubectl apply -f`."""

    def ignore_aliases(self, data):
        return True


# --------------------------------------------------------------------------- the runner


def run_training_job(
    stage_name: str,
    params: Params,
    inputs: Sequence[Path | str],
    output_dir: Path,
    manifest_path: Path,
    *,
    api_client=None,
    out: IO[str] | None = None,
) -> dict[str, float]:
    """Stage the inputs, create the job, follow it to the end, copy its outputs to `output_dir`; the
    stage metrics. Raises `TrainingJobFailed` / `TrainingJobTimeout` with the master log's last lines."""
    out = out or sys.stdout
    launcher = launcher_of(stage_name, params)
    if launcher.kind == "in_process":
        raise ValueError(f"{stage_name}.launcher.kind is in_process: run the stage itself, not a job")
    shared = Path(params.kubernetes.checkpoints_pvc.mount_path)
    if not shared.is_dir():
        raise TrainingJobError(
            f"{shared} is not mounted in this step: a training job exchanges inputs and outputs with the "
            f"step through the PVC {params.kubernetes.checkpoints_pvc.name!r} (kubernetes.checkpoints_pvc), "
            "which the step must mount at the same path as the job's pods"
        )
    api = KubeApi(api_client)
    claims = api.step_claims(current_namespace(launcher), params)
    job = training_job(stage_name, params, inputs, claims=claims)
    stage_inputs(job, inputs, params)
    manifest = manifest_for(job)
    validate_manifest(manifest)
    write_text_atomic(Path(manifest_path), dump_manifest(manifest))
    api.create(job, manifest, out)
    watch = JobWatch(api, job, out)
    outcome = watch.wait()
    if outcome.failed:
        raise TrainingJobFailed(
            f"{outcome.kind} {job.namespace}/{job.name} failed: {outcome.reason}: {outcome.message}\n"
            f"{watch.tail_text()}\n"
            f"(inspect: kubectl -n {job.namespace} describe {outcome.kind.lower()} {job.name})"
        )
    collect_outputs(job, Path(output_dir))
    metrics = watch.metrics if watch.metrics is not None else _metrics_file(job)
    if metrics is None:
        raise TrainingJobError(
            f"{job.name} succeeded but reported no metrics: no `METRICS {{...}}` line in the master log "
            f"and no {job.files.metrics}"
        )
    return metrics


def stage_inputs(job: TrainingJob, inputs: Sequence[Path | str], params: Params) -> None:
    """The step's inputs into the work directory (files already there with the same size and mtime are
    kept, so a retried step copies only what is missing), and the params the job reads."""
    if len(inputs) != len(job.stage.inputs):
        raise ValueError(f"{job.stage.name} takes inputs {list(job.stage.inputs)}, got {len(inputs)}")
    for name, source in zip(job.stage.inputs, inputs, strict=True):
        source = Path(source)
        if not source.is_dir():
            raise FileNotFoundError(f"{job.stage.name} input {name!r}: {source} is not a directory")
        _sync_tree(source, Path(job.files.input(name)))
    Path(job.files.output).mkdir(parents=True, exist_ok=True)
    # An earlier attempt's metrics must not pass for this one's.
    Path(job.files.metrics).unlink(missing_ok=True)
    write_text_atomic(Path(job.files.params), params_to_yaml(params))


def collect_outputs(job: TrainingJob, output_dir: Path) -> None:
    source = Path(job.files.output)
    if not source.is_dir():
        raise TrainingJobError(f"{job.name} succeeded but left no output directory {source}")
    _sync_tree(source, output_dir)


def _sync_tree(source: Path, target: Path) -> None:
    for file in sorted(p for p in source.rglob("*") if p.is_file()):
        dest = target / file.relative_to(source)
        if not _same_file(file, dest):
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(file, dest)  # keeps the mtime, which the next sync compares
    target.mkdir(parents=True, exist_ok=True)


def _same_file(source: Path, dest: Path) -> bool:
    if not dest.is_file():
        return False
    a, b = source.stat(), dest.stat()
    return (a.st_size, int(a.st_mtime)) == (b.st_size, int(b.st_mtime))


def _metrics_file(job: TrainingJob) -> dict[str, float] | None:
    path = Path(job.files.metrics)
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


# --------------------------------------------------------------------------- the Kubernetes API


class KubeApi:
    """The few calls a launch makes. Without an `api_client`: the in-cluster config (the step's service
    account, which needs create/get/delete on the job kind and get/list on pods and pods/log), else the
    kubeconfig (`KUBECONFIG`)."""

    def __init__(self, api_client=None):
        from kubernetes import client, config

        if api_client is None:
            try:
                config.load_incluster_config()
            except config.ConfigException:
                # Read now: the client's default is KUBECONFIG as it was when kubernetes was imported.
                config.load_kube_config(config_file=os.environ.get("KUBECONFIG"))
            api_client = client.ApiClient()
        self.custom = client.CustomObjectsApi(api_client)
        self.core = client.CoreV1Api(api_client)

    @staticmethod
    def _resource(job: TrainingJob) -> tuple[str, str, str, str]:
        return TRAINJOB if job.launcher.kind == "trainjob" else PYTORCHJOB

    def step_claims(self, namespace: str, params: Params) -> dict[str, str]:
        """The claims this step's own pod mounts at the volumes' mount paths ({} outside a pod, or when
        the pod cannot be read): a PVC the pipeline created has a per-run name the params cannot know."""
        from kubernetes.client.exceptions import ApiException

        pod_name = os.environ.get("HOSTNAME") or socket.gethostname()  # a pod's hostname is its name
        try:
            pod = self.core.read_namespaced_pod(pod_name, namespace)
        except ApiException:
            return {}
        by_volume = {
            v.name: v.persistent_volume_claim.claim_name
            for v in pod.spec.volumes or []
            if v.persistent_volume_claim
        }
        by_path = {
            m.mount_path: by_volume[m.name]
            for c in pod.spec.containers
            for m in c.volume_mounts or []
            if m.name in by_volume
        }
        k8s = params.kubernetes
        wanted = {"checkpoints": k8s.checkpoints_pvc.mount_path, "datasets": k8s.datasets_pvc.mount_path}
        return {volume: by_path[path] for volume, path in wanted.items() if path in by_path}

    def create(self, job: TrainingJob, manifest: dict[str, Any], out: IO[str]) -> None:
        from kubernetes.client.exceptions import ApiException

        group, version, plural, kind = self._resource(job)
        try:
            self.custom.create_namespaced_custom_object(group, version, job.namespace, plural, manifest)
        except ApiException as exc:
            hint = {
                404: f"does the cluster serve {plural}.{group}/{version}? ({kind} needs its operator)",
                403: f"the step's service account may not create {plural}.{group} in {job.namespace}",
                409: "a job of that name exists already",
            }.get(exc.status, "")
            raise TrainingJobError(
                f"creating {kind} {job.namespace}/{job.name} failed: HTTP {exc.status} {exc.reason}: "
                f"{_api_message(exc)}{'; ' + hint if hint else ''}"
            ) from None
        print(
            f"created {kind} {job.namespace}/{job.name}: {job.launcher.nodes} node(s) x "
            f"{job.launcher.gpus_per_node} GPU(s), work directory {job.files.root}",
            file=out,
            flush=True,
        )

    def get(self, job: TrainingJob) -> dict[str, Any]:
        group, version, plural, _ = self._resource(job)
        return self.custom.get_namespaced_custom_object(group, version, job.namespace, plural, job.name)

    def delete(self, job: TrainingJob) -> None:
        from kubernetes.client import V1DeleteOptions

        group, version, plural, _ = self._resource(job)
        self.custom.delete_namespaced_custom_object(
            group,
            version,
            job.namespace,
            plural,
            job.name,
            body=V1DeleteOptions(propagation_policy="Background"),
        )

    def master_pod(self, job: TrainingJob):
        """The newest pod of node rank 0 (the one whose rank 0 prints the metrics), or None yet."""
        if job.launcher.kind == "trainjob":
            selector = (
                f"jobset.sigs.k8s.io/jobset-name={job.name},jobset.sigs.k8s.io/replicatedjob-name={TRAINJOB_NODE},"
                "batch.kubernetes.io/job-completion-index=0"
            )
        else:
            selector = f"training.kubeflow.org/job-name={job.name},training.kubeflow.org/replica-type=master"
        pods = self.core.list_namespaced_pod(job.namespace, label_selector=selector).items

        def started(pod) -> tuple[float, str]:
            created = pod.metadata.creation_timestamp
            return (created.timestamp() if created else 0.0, pod.metadata.name)

        return max(pods, key=started, default=None)

    def log(self, job: TrainingJob, pod: str, since_seconds: int | None) -> str | None:
        """The pod's log with timestamps (None while its container has not started)."""
        from kubernetes.client.exceptions import ApiException

        container = TRAINJOB_NODE if job.launcher.kind == "trainjob" else PYTORCH_CONTAINER
        kwargs = {"since_seconds": since_seconds} if since_seconds else {}
        try:
            # Raw text: the client would json-decode a log that happens to be valid JSON.
            response = self.core.read_namespaced_pod_log(
                pod, job.namespace, container=container, timestamps=True, _preload_content=False, **kwargs
            )
        except ApiException as exc:
            if exc.status in (400, 404):  # ContainerCreating / not scheduled yet / just deleted
                return None
            raise
        return response.data.decode("utf-8", errors="replace")


def _api_message(exc) -> str:
    try:
        return json.loads(exc.body).get("message", exc.body)
    except (TypeError, ValueError, AttributeError):
        return str(exc.body)


# --------------------------------------------------------------------------- following a job


@dataclass
class Outcome:
    kind: str
    failed: bool
    reason: str = ""
    message: str = ""


@dataclass
class JobWatch:
    """Polls a job's conditions and its master pod's log until the job ends or `launcher.timeout_s`."""

    api: KubeApi
    job: TrainingJob
    out: IO[str]
    clock: Callable[[], float] = time.monotonic
    metrics: dict[str, float] | None = None
    tail: deque = field(init=False)
    _pod: str | None = field(default=None, init=False)
    _last: tuple[str, int] | None = field(default=None, init=False)
    _at_last: set = field(default_factory=set, init=False)
    _read_at: float | None = field(default=None, init=False)
    _seen_conditions: set = field(default_factory=set, init=False)

    def __post_init__(self):
        self.tail = deque(maxlen=self.job.launcher.log_tail_lines)

    def wait(self) -> Outcome:
        kind = self.job.launcher.kind
        kind_name = TRAINJOB[3] if kind == "trainjob" else PYTORCHJOB[3]
        deadline = self.clock() + self.job.launcher.timeout_s
        while True:
            # Status first, then logs: once the job has ended its pod has too, so this read is complete.
            obj = self._poll(lambda: self.api.get(self.job), kind_name, job_lookup=True)
            outcome = self._outcome(obj, kind_name) if obj is not None else None
            self._poll(self.pump_logs, kind_name)
            if outcome is not None:
                return outcome
            if self.clock() >= deadline:
                self.api.delete(self.job)
                raise TrainingJobTimeout(
                    f"{kind_name} {self.job.namespace}/{self.job.name} did not finish within "
                    f"{self.job.launcher.timeout_s:g} s; deleted it\n{self.tail_text()}"
                )
            time.sleep(self.job.launcher.poll_s)

    def _poll(self, call: Callable[[], Any], kind_name: str, job_lookup: bool = False):
        """One API round trip; a hiccup of the API server (5xx, a dropped connection) only costs a poll."""
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        try:
            return call()
        except ApiException as exc:
            if exc.status == 404 and job_lookup:
                raise TrainingJobError(
                    f"{kind_name} {self.job.namespace}/{self.job.name} disappeared (deleted by someone else?)"
                    f"\n{self.tail_text()}"
                ) from None
            if exc.status is not None and exc.status < 500:
                raise
            print(f"{self.job.name}: API server answered {exc.status}; retrying", file=self.out, flush=True)
        except HTTPError as exc:
            print(f"{self.job.name}: API server unreachable ({exc}); retrying", file=self.out, flush=True)
        return None

    def _outcome(self, obj: dict[str, Any], kind_name: str) -> Outcome | None:
        conditions = (obj.get("status") or {}).get("conditions") or []
        ended = None
        for condition in conditions:
            if condition.get("status") != "True":
                continue
            seen = (condition.get("type"), condition.get("reason"), condition.get("lastTransitionTime"))
            if seen not in self._seen_conditions:
                self._seen_conditions.add(seen)
                print(
                    f"{self.job.name}: {condition.get('type')} ({condition.get('reason', '')}) "
                    f"{condition.get('message', '')}".rstrip(),
                    file=self.out,
                    flush=True,
                )
            if condition.get("type") in SUCCEEDED + FAILED:
                ended = condition
        if ended is None:
            return None
        return Outcome(kind_name, ended["type"] in FAILED, ended.get("reason", ""), ended.get("message", ""))

    def pump_logs(self) -> None:
        pod = self.api.master_pod(self.job)
        if pod is None:
            return
        if pod.metadata.name != self._pod:  # a new master pod starts its log afresh
            self._pod, self._last, self._at_last, self._read_at = pod.metadata.name, None, set(), None
        # Only lines newer than the last one printed are wanted; `sinceSeconds` bounds the transfer,
        # with slack for clock skew and the poll interval, and the timestamps drop what was seen.
        since = None
        if self._read_at is not None:
            since = math.ceil(self.clock() - self._read_at + self.job.launcher.poll_s) + 60
        text = self.api.log(self.job, self._pod, since)
        if text is None:
            return
        self._read_at = self.clock()
        for raw in text.splitlines():
            stamp, _, line = raw.partition(" ")
            key = _timestamp_key(stamp)
            if key is None:  # not timestamped (a wrapped line): print it as it is
                key, line = self._last or ("", 0), raw
            if self._last is not None and (key < self._last or (key == self._last and raw in self._at_last)):
                continue
            if key != self._last:
                self._last, self._at_last = key, set()
            self._at_last.add(raw)
            self._emit(line)

    def _emit(self, line: str) -> None:
        print(f"[{self._pod}] {line}", file=self.out, flush=True)
        self.tail.append(line)
        match = METRICS_LINE.search(line)
        if match:
            with contextlib.suppress(ValueError):  # a line that only looks like it
                self.metrics = json.loads(match.group(1))

    def tail_text(self) -> str:
        if not self.tail:
            return f"(no log lines from the master pod {self._pod or '(none started)'})"
        return f"last {len(self.tail)} log lines of {self._pod}:\n" + "\n".join(
            f"  {line}" for line in self.tail
        )


def _timestamp_key(stamp: str) -> tuple[str, int] | None:
    """RFC 3339 (nano) timestamp -> (seconds part, nanoseconds): comparable, unlike the strings, whose
    fraction the kubelet writes without trailing zeros."""
    match = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)", stamp)
    if not match:
        return None
    return match.group(1), int((match.group(2) or "0").ljust(9, "0"))
