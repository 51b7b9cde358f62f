"""Component `train_udpdiff`: stage `udpdiff.train`."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def train_udpdiff(
    params_yaml: str,
    latents: Input[Dataset],
    model: Output[Model],
    metrics: Output[Metrics],
    parent_run_id: str = "",
    mlflow_tracking_uri: str = "",
):
    """Fine-tunes the 32-channel CogVideoX with the task embedding under DeepSpeed (one process).

    Runs `vidprior.stages.execute("udpdiff.train", ...)`, the same code as `vidprior udpdiff train`.

    Args:
        params_yaml: The resolved params as YAML.
        latents: Output of `encode_latents`.
        model: Receives `transformer/` (safetensors + config), `udpdiff.json`, checkpoints and `report/`
            (history, loss plot).
        metrics: The stage metrics (first and final loss, steps).
        parent_run_id: MLflow run to nest the stage run under; empty for a top-level run.
        mlflow_tracking_uri: MLflow tracking server; empty keeps the image's environment.
    """
    from vidprior.stages import execute_for_component

    execute_for_component(
        "udpdiff.train",
        params_yaml,
        [latents.path],
        model.path,
        metrics,
        parent_run_id=parent_run_id,
        mlflow_tracking_uri=mlflow_tracking_uri,
    )
