"""Component `train_classifier`: stage `unic.train` (the Uni-C classifier head, DeepSpeed)."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def train_classifier(
    params_yaml: str,
    labels: Input[Dataset],
    images: Input[Dataset],
    model: Output[Model],
    metrics: Output[Metrics],
    parent_run_id: str = "",
    mlflow_tracking_uri: str = "",
):
    """Trains the classifier head on the frozen SD U-Net encoder (one process, DeepSpeed).

    Runs `vidprior.stages.execute("unic.train", ...)`, the same code as `vidprior unic train`.

    Args:
        params_yaml: The resolved params as YAML.
        labels: Output of `join_labels`.
        images: The merged output of `generate_images`.
        model: Receives `head.safetensors`, `classifier.json`, `history.csv`, checkpoints and
            `report/training.png`.
        metrics: The stage metrics (final loss, held-out accuracy and AUC per timestep bucket).
        parent_run_id: MLflow run to nest the stage run under; empty for a top-level run.
        mlflow_tracking_uri: MLflow tracking server; empty keeps the image's environment.
    """
    from vidprior.stages import execute_for_component

    execute_for_component(
        "unic.train",
        params_yaml,
        [labels.path, images.path],
        model.path,
        metrics,
        parent_run_id=parent_run_id,
        mlflow_tracking_uri=mlflow_tracking_uri,
    )
