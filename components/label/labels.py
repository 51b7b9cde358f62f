"""Component `join_labels`: stage `unic.labels` (the Uni-C training table)."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Output

from components import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def join_labels(
    params_yaml: str,
    images: Input[Dataset],
    videos: Input[Dataset],
    flow: Input[Dataset],
    judge: Input[Dataset],
    output: Output[Dataset],
    metrics: Output[Metrics],
    parent_run_id: str = "",
    mlflow_tracking_uri: str = "",
):
    """Joins the flow rule and the judge into one label per image.

    Runs `vidprior.stages.execute("unic.labels", ...)`, the same code as `vidprior unic labels`.

    Args:
        params_yaml: The resolved params as YAML.
        images: The merged output of `generate_images`.
        videos: The merged output of `generate_videos`.
        flow: Output of `measure_flow`.
        judge: Output of `judge_videos`.
        output: Receives `manifest.parquet` (image id, prompt, label, decided_by, reasons) and
            `rejects.parquet` (every image that could not be labelled, with the reason).
        metrics: The stage metrics (label balance, who decided).
        parent_run_id: MLflow run to nest the stage run under; empty for a top-level run.
        mlflow_tracking_uri: MLflow tracking server; empty keeps the image's environment.
    """
    from vidprior.stages import execute_for_component

    execute_for_component(
        "unic.labels",
        params_yaml,
        [images.path, videos.path, flow.path, judge.path],
        output.path,
        metrics,
        parent_run_id=parent_run_id,
        mlflow_tracking_uri=mlflow_tracking_uri,
    )
