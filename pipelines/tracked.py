"""What every vidprior pipeline shares: an MLflow parent run around its stages, and task placement.

Shape of a tracked pipeline:

    open-mlflow-run ──run id──> <name>-stages (sub-pipeline)
      exit-handler: the stage tasks, each logging a run nested under the parent run
      exit task: close-mlflow-run (always runs)

The parent run is opened first and closed by an exit handler's exit task, so it is closed (FINISHED,
or FAILED when a stage failed) whatever happens to the stages. KFP forbids an exit task to consume
another task's output, so the stages and the exit handler live in a sub-pipeline that receives the
run id as an input parameter, which an exit task may read.
"""

# No `from __future__ import annotations`: kfp reads the pipeline functions' annotations as types.
from collections.abc import Callable
from contextlib import contextmanager

from kfp import dsl, kubernetes
from kfp.dsl import graph_component

from components.register.mlflow_run import close_mlflow_run, open_mlflow_run
from pipelines import params_yaml_default
from vidprior.config import KubernetesParams, LauncherParams, Params, PvcParams

GPU_RESOURCE = "nvidia.com/gpu"
SHM_PATH = "/dev/shm"

# Components that call an OpenAI-compatible endpoint -> the params section naming the env var their
# client reads the API key from (`api_key_env`); the endpoint secret is exposed under that name.
ENDPOINT_CLIENTS = {
    "collect-prompts": "unic.prompts.llm_filter",
    "judge-videos": "unic.judge.endpoint",
    "caption-clips": "udpdiff.captions.endpoint",
}


class Placement:
    """Where and how each task runs: its image (from `params.images`), one GPU per model task on the
    paper profile, and, when `params.kubernetes` applies (paper profile, or `enabled: true`), the
    cluster specifics as kfp-kubernetes platform config:

    - every task: the MLflow secret as env (tracking login, artifact store keys), HF_HOME;
    - stage tasks: the datasets PVC; endpoint clients (`ENDPOINT_CLIENTS`): the endpoint API key;
    - GPU tasks: `gpus_per_task` GPUs, the GPU product node selector (one product) or node affinity
      (several) and the GPU tolerations (those three on the paper profile only), a memory-backed
      /dev/shm and the checkpoints PVC.

    The tiny profile gets none of it: its compiled YAML has no platform spec (kfp.local, which runs it in
    tests, ignores platform config in any case).
    """

    def __init__(self, params: Params):
        self.images = params.images
        self.on_gpu = params.profile == "paper"
        self.kube: KubernetesParams | None = (
            params.kubernetes if params.kubernetes.applies(params.profile) else None
        )
        self.gpus = params.kubernetes.gpus_per_task
        self._endpoint_env = {
            name: params.section(section).api_key_env for name, section in ENDPOINT_CLIENTS.items()
        }
        # PVC name per volume: the constant name, or the output of the CreatePVC task made by
        # `create_volumes` (volumes with `create: true`).
        self._pvc_names: dict[str, object] = {}

    # ------------------------------------------------------------------ task kinds

    def tracking(self, task: dsl.PipelineTask) -> dsl.PipelineTask:
        """The MLflow bookkeeping tasks (open and close the parent run): base image, MLflow secret."""
        task.set_container_image(self.images.base)
        if self.kube:
            self._cluster_env(task)
        return task

    def base(self, task: dsl.PipelineTask) -> dsl.PipelineTask:
        return self._stage(task, self.images.base)

    def label(self, task: dsl.PipelineTask) -> dsl.PipelineTask:
        return self._stage(task, self.images.label)

    def gpu(self, task: dsl.PipelineTask, image: str | None = None) -> dsl.PipelineTask:
        self._stage(task, image or self.images.base)
        if self.on_gpu:
            task.set_accelerator_type(GPU_RESOURCE).set_accelerator_limit(self.gpus)
        if self.kube:
            self._gpu_node(task)
        return task

    def train(self, task: dsl.PipelineTask, launcher: LauncherParams) -> dsl.PipelineTask:
        """A training step on the train image. In process it is a GPU task; when it launches a Kubeflow
        training job (`launcher.kind`), the job's pods get the GPUs and the step only creates and follows
        the job: no GPU, but the checkpoints PVC, through which it hands the job inputs and outputs."""
        if launcher.kind == "in_process":
            return self.gpu(task, self.images.train)
        self._stage(task, self.images.train)
        if self.kube:
            self._mount(task, "checkpoints", self.kube.checkpoints_pvc)
        return task

    # ------------------------------------------------------------------ volumes

    def create_volumes(self) -> None:
        """Adds a CreatePVC task for each volume with `create: true`; call it inside the stages'
        exit handler before any stage task (see `closing_parent_run`), so a failure is reported."""
        if not self.kube:
            return
        for role, pvc in self._volumes():
            if not pvc.create:
                continue
            # A per-run claim (`<uuid>-<name>`): a fixed name would collide with the previous run's.
            created = kubernetes.CreatePVC(
                pvc_name_suffix=f"-{pvc.name}",
                access_modes=list(pvc.access_modes),
                size=pvc.size,
                storage_class_name=pvc.storage_class,
            )
            created.set_display_name(f"create-{role}-pvc")
            created.set_caching_options(False)
            self._pvc_names[role] = created.outputs["name"]

    def _volumes(self) -> list[tuple[str, PvcParams]]:
        return [("datasets", self.kube.datasets_pvc), ("checkpoints", self.kube.checkpoints_pvc)]

    def _mount(self, task: dsl.PipelineTask, role: str, pvc: PvcParams) -> None:
        if pvc.create and role not in self._pvc_names:
            raise RuntimeError(
                f"kubernetes.{role}_pvc.create is true but no CreatePVC task exists: build stage tasks "
                "inside `closing_parent_run`, which creates the volumes first"
            )
        kubernetes.mount_pvc(task, pvc_name=self._pvc_names.get(role, pvc.name), mount_path=pvc.mount_path)

    # ------------------------------------------------------------------ platform config

    def _stage(self, task: dsl.PipelineTask, image: str) -> dsl.PipelineTask:
        task.set_container_image(image)
        if self.kube:
            self._cluster_env(task)
            self._mount(task, "datasets", self.kube.datasets_pvc)
            env = self._endpoint_env.get(task.component_spec.name)
            if env:
                secret = self.kube.endpoint_secret
                kubernetes.use_secret_as_env(task, secret.name, {secret.key: env}, optional=secret.optional)
        return task

    def _cluster_env(self, task: dsl.PipelineTask) -> None:
        secret = self.kube.mlflow_secret
        kubernetes.use_secret_as_env(task, secret.name, dict(secret.env), optional=secret.optional)
        if self.kube.hf_home:
            task.set_env_variable("HF_HOME", self.kube.hf_home)

    def _gpu_node(self, task: dsl.PipelineTask) -> None:
        kube = self.kube
        # GPU nodes only for tasks that ask for GPUs (the tiny profile with `enabled: true` asks none).
        if self.on_gpu:
            if len(kube.gpu_products) == 1:
                kubernetes.add_node_selector(task, kube.gpu_product_key, kube.gpu_products[0])
            else:  # a node selector matches one value; a required node affinity `In` takes a list
                kubernetes.add_node_affinity(
                    task,
                    match_expressions=[
                        {"key": kube.gpu_product_key, "operator": "In", "values": kube.gpu_products}
                    ],
                )
            for toleration in kube.gpu_tolerations:
                kubernetes.add_toleration(
                    task,
                    key=toleration.key,
                    operator=toleration.operator,
                    value=toleration.value,
                    effect=toleration.effect,
                )
        if kube.shm_size:
            kubernetes.empty_dir_mount(
                task, volume_name="dshm", mount_path=SHM_PATH, medium="Memory", size_limit=kube.shm_size
            )
        self._mount(task, "checkpoints", kube.checkpoints_pvc)


@contextmanager
def closing_parent_run(placement: Placement, parent_run_id: str, mlflow_tracking_uri: str, name: str):
    """An exit handler whose exit task closes the MLflow parent run with the stages' outcome; the
    volumes the pipeline creates (`create: true`) are its first tasks."""
    close = placement.tracking(
        close_mlflow_run(run_id=parent_run_id, mlflow_tracking_uri=mlflow_tracking_uri)
    )
    close.set_caching_options(False)
    with dsl.ExitHandler(close, name=name):
        placement.create_volumes()
        yield


def tracked_pipeline(
    params: Params,
    name: str,
    description: str,
    stages: Callable[..., graph_component.GraphComponent],
) -> graph_component.GraphComponent:
    """The pipeline `name`: opens the parent run, then runs `stages(params_yaml, parent_run_id, uri)`."""
    placement = Placement(params)

    @dsl.pipeline(name=name, description=description)
    def pipeline(params_yaml: str = params_yaml_default(params), mlflow_tracking_uri: str = ""):
        """Opens the MLflow parent run and runs the stages under it.

        Args:
            params_yaml: The resolved params as YAML (default: the params it was compiled with).
            mlflow_tracking_uri: MLflow tracking server for every task; empty keeps the image's.
        """
        uri = mlflow_tracking_uri
        parent = placement.tracking(
            open_mlflow_run(pipeline_name=name, params_yaml=params_yaml, mlflow_tracking_uri=uri)
        )
        parent.set_caching_options(False)  # a new parent run per pipeline run, never a cached one
        stages(params_yaml=params_yaml, parent_run_id=parent.output, mlflow_tracking_uri=uri)

    return pipeline
