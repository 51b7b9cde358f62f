"""Component `register_udpdiff_model`: stage `udpdiff.register`."""

from kfp import dsl
from kfp.dsl import Artifact, Input, Metrics, Model, Output

from components import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def register_udpdiff_model(
    params_yaml: str,
    model: Input[Model],
    output: Output[Artifact],
    metrics: Output[Metrics],
    parent_run_id: str = "",
    mlflow_tracking_uri: str = "",
):
    """Registers the fine-tuned transformer as MLflow model `udpdiff` (new version, alias `challenger`).

    Runs `vidprior.stages.execute("udpdiff.register", ...)`, the same code as `vidprior udpdiff register`.

    Args:
        params_yaml: The resolved params as YAML.
        model: Output of `train_udpdiff`.
        output: Receives `model.json` (name, version, URI).
        metrics: The stage metrics (registered version).
        parent_run_id: MLflow run to nest the stage run under; empty for a top-level run.
        mlflow_tracking_uri: MLflow tracking server; empty keeps the image's environment.
    """
    from vidprior.stages import execute_for_component

    execute_for_component(
        "udpdiff.register",
        params_yaml,
        [model.path],
        output.path,
        metrics,
        parent_run_id=parent_run_id,
        mlflow_tracking_uri=mlflow_tracking_uri,
    )
