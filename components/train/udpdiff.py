"""Component `train_udpdiff`: stage `udpdiff.train`."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Model, Output

from components import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def train_udpdiff(
    params_yaml: str,
    latents: Input[Dataset],
    model: Output[Model],
    metrics: Output[Metrics],
    job_manifest: Output[Artifact],
    parent_run_id: str = "",
    mlflow_tracking_uri: str = "",
):
    """Fine-tunes the 32-channel CogVideoX with the task embedding under DeepSpeed.

    Runs `vidprior.kube.launch.execute_training_step("udpdiff.train", ...)`: with
    `udpdiff.train.launcher.kind: in_process` the same code as `vidprior udpdiff train`, in this step;
    with `pytorchjob` (the paper profile: 1 node x 8 GPUs) or `trainjob` the stage's torchrun entry point
    as a Kubeflow training job on `launcher.nodes` x `launcher.gpus_per_node` GPUs, which this step
    creates, follows (its master log streams into this step's log) and waits for, exchanging files
    through `kubernetes.checkpoints_pvc`.

    Args:
        params_yaml: The resolved params as YAML.
        latents: Output of `encode_latents`.
        model: Receives `transformer/` (safetensors + config), `udpdiff.json`, checkpoints and `report/`
            (history, loss plot).
        metrics: The stage metrics (first and final loss, steps).
        job_manifest: The training job's manifest (YAML); in process, the PyTorchJob it would have been.
        parent_run_id: MLflow run to nest the stage run under; empty for a top-level run.
        mlflow_tracking_uri: MLflow tracking server; empty keeps the image's environment.
    """
    from vidprior.kube.launch import execute_training_step

    execute_training_step(
        "udpdiff.train",
        params_yaml,
        [latents.path],
        model.path,
        metrics,
        job_manifest.path,
        parent_run_id=parent_run_id,
        mlflow_tracking_uri=mlflow_tracking_uri,
    )
