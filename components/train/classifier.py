"""Component `train_classifier`: stage `unic.train` (the Uni-C classifier head, DeepSpeed)."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Model, Output

from components import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def train_classifier(
    params_yaml: str,
    labels: Input[Dataset],
    images: Input[Dataset],
    model: Output[Model],
    metrics: Output[Metrics],
    job_manifest: Output[Artifact],
    parent_run_id: str = "",
    mlflow_tracking_uri: str = "",
):
    """Trains the classifier head on the frozen SD U-Net encoder with DeepSpeed.

    Runs `vidprior.kube.launch.execute_training_step("unic.train", ...)`: with
    `unic.train.launcher.kind: in_process` the same code as `vidprior unic train`, in this step; with
    `pytorchjob` or `trainjob` the stage's torchrun entry point as a Kubeflow training job on
    `launcher.nodes` x `launcher.gpus_per_node` GPUs, which this step creates, follows (its master log
    streams into this step's log) and waits for, exchanging files through `kubernetes.checkpoints_pvc`.

    Args:
        params_yaml: The resolved params as YAML.
        labels: Output of `join_labels`.
        images: The merged output of `generate_images`.
        model: Receives `head.safetensors`, `classifier.json`, `history.csv`, checkpoints and
            `report/training.png`.
        metrics: The stage metrics (final loss, held-out accuracy and AUC per timestep bucket).
        job_manifest: The training job's manifest (YAML); in process, the PyTorchJob it would have been.
        parent_run_id: MLflow run to nest the stage run under; empty for a top-level run.
        mlflow_tracking_uri: MLflow tracking server; empty keeps the image's environment.
    """
    from vidprior.kube.launch import execute_training_step

    execute_training_step(
        "unic.train",
        params_yaml,
        [labels.path, images.path],
        model.path,
        metrics,
        job_manifest.path,
        parent_run_id=parent_run_id,
        mlflow_tracking_uri=mlflow_tracking_uri,
    )
