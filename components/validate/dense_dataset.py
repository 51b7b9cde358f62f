"""Component `build_dense_dataset`: stage `udpdiff.dataset`."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Output

from components import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def build_dense_dataset(
    params_yaml: str,
    clips: Input[Dataset],
    captions: Input[Dataset],
    segment: Input[Dataset],
    depth: Input[Dataset],
    output: Output[Dataset],
    metrics: Output[Metrics],
    parent_run_id: str = "",
    mlflow_tracking_uri: str = "",
):
    """Joins clips, captions, segmentation and depth into Panda-Dense and validates it (Great Expectations).

    Runs `vidprior.stages.execute("udpdiff.dataset", ...)`, the same code as `vidprior udpdiff dataset`.

    Args:
        params_yaml: The resolved params as YAML.
        clips: Output of `select_panda_clips`.
        captions: Output of `caption_clips`.
        segment: Output of `segment_entities`.
        depth: Output of `estimate_depth`.
        output: Receives the self-contained dataset (`clips/`, `seg/`, `depth/`, `manifest.parquet`),
            `rejects.parquet` and the suite reports in `report/`; a failed suite fails the task.
        metrics: The stage metrics.
        parent_run_id: MLflow run to nest the stage run under; empty for a top-level run.
        mlflow_tracking_uri: MLflow tracking server; empty keeps the image's environment.
    """
    from vidprior.stages import execute_for_component

    execute_for_component(
        "udpdiff.dataset",
        params_yaml,
        [clips.path, captions.path, segment.path, depth.path],
        output.path,
        metrics,
        parent_run_id=parent_run_id,
        mlflow_tracking_uri=mlflow_tracking_uri,
    )
