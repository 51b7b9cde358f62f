"""Component `measure_flow`: stage `unic.flow` (optical-flow statistics and the flow rule)."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Output

from components import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def measure_flow(
    params_yaml: str,
    videos: Input[Dataset],
    output: Output[Dataset],
    metrics: Output[Metrics],
    parent_run_id: str = "",
    mlflow_tracking_uri: str = "",
):
    """Measures optical-flow statistics per video and applies the paper's flow rule.

    Runs `vidprior.stages.execute("unic.flow", ...)`, the same code as `vidprior unic flow`.

    Args:
        params_yaml: The resolved params as YAML.
        videos: The merged output of `generate_videos`.
        output: Receives `manifest.parquet` (statistics, pass / clause per video), `rejects.parquet`
            (unreadable videos, non-finite statistics) and `report/flow_statistics.png`.
        metrics: The stage metrics.
        parent_run_id: MLflow run to nest the stage run under; empty for a top-level run.
        mlflow_tracking_uri: MLflow tracking server; empty keeps the image's environment.
    """
    from vidprior.stages import execute_for_component

    execute_for_component(
        "unic.flow",
        params_yaml,
        [videos.path],
        output.path,
        metrics,
        parent_run_id=parent_run_id,
        mlflow_tracking_uri=mlflow_tracking_uri,
    )
