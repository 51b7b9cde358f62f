"""Component `validate_unic_data`: stage `unic.validate` (Great Expectations on flow and labels)."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Output

from components import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def validate_unic_data(
    params_yaml: str,
    images: Input[Dataset],
    videos: Input[Dataset],
    flow: Input[Dataset],
    labels: Input[Dataset],
    output: Output[Dataset],
    metrics: Output[Metrics],
    parent_run_id: str = "",
    mlflow_tracking_uri: str = "",
):
    """Runs the flow-statistics and labels suites; the task fails when a suite fails.

    Runs `vidprior.stages.execute("unic.validate", ...)`, the same code as `vidprior unic validate`.
    Both reports are written before a failure, and logged to the stage's MLflow run either way.

    Args:
        params_yaml: The resolved params as YAML.
        images: The merged output of `generate_images`.
        videos: The merged output of `generate_videos`.
        flow: Output of `measure_flow`.
        labels: Output of `join_labels`.
        output: Receives `report/flow_statistics.json`, `report/labels.json` (+ HTML) and `summary.json`.
        metrics: The stage metrics (suites passed, class balance).
        parent_run_id: MLflow run to nest the stage run under; empty for a top-level run.
        mlflow_tracking_uri: MLflow tracking server; empty keeps the image's environment.
    """
    from vidprior.stages import execute_for_component

    execute_for_component(
        "unic.validate",
        params_yaml,
        [images.path, videos.path, flow.path, labels.path],
        output.path,
        metrics,
        parent_run_id=parent_run_id,
        mlflow_tracking_uri=mlflow_tracking_uri,
    )
