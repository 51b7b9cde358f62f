"""Component `register_unic_model`: stage `unic.register` (MLflow model `unic`, alias `challenger`)."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def register_unic_model(
    params_yaml: str,
    classifier: Input[Model],
    output: Output[Dataset],
    metrics: Output[Metrics],
    parent_run_id: str = "",
    mlflow_tracking_uri: str = "",
):
    """Registers the trained head as a new version of MLflow model `unic` with alias `challenger`.

    Runs `vidprior.stages.execute("unic.register", ...)`, the same code as `vidprior unic register`.
    The version is tagged with the git commit, the DVC hash of the labels and the params digest.

    Args:
        params_yaml: The resolved params as YAML.
        classifier: Output of `train_classifier` (holds `head.safetensors`).
        output: Receives `model.json` (name, version, model URI, alias, tags).
        metrics: The stage metrics (the registered version).
        parent_run_id: MLflow run to nest the stage run under; empty for a top-level run.
        mlflow_tracking_uri: MLflow tracking server; empty keeps the image's environment.
    """
    from vidprior.stages import execute_for_component

    execute_for_component(
        "unic.register",
        params_yaml,
        [classifier.path],
        output.path,
        metrics,
        parent_run_id=parent_run_id,
        mlflow_tracking_uri=mlflow_tracking_uri,
    )
