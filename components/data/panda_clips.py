"""Component `select_panda_clips`: stage `udpdiff.clips`."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Output

from components import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def select_panda_clips(
    params_yaml: str,
    source: Input[Dataset],
    output: Output[Dataset],
    metrics: Output[Metrics],
    parent_run_id: str = "",
    mlflow_tracking_uri: str = "",
):
    """Reads Panda-70M clips, filters them by quality and motion score, writes normalised clips.

    Runs `vidprior.stages.execute("udpdiff.clips", ...)`, the same code as `vidprior udpdiff clips`.

    Args:
        params_yaml: The resolved params as YAML.
        source: A directory with the Panda-70M CSV and its clips (imported, or `make_synthetic_panda`).
        output: Receives `clips/` (normalised mp4), `manifest.parquet` (Panda columns, flow statistics,
            sharpness) and `rejects.parquet` (missing, too static, too fast, blurred...).
        metrics: The stage metrics (clips read, kept, rejected per reason).
        parent_run_id: MLflow run to nest the stage run under; empty for a top-level run.
        mlflow_tracking_uri: MLflow tracking server; empty keeps the image's environment.
    """
    from vidprior.stages import execute_for_component

    execute_for_component(
        "udpdiff.clips",
        params_yaml,
        [source.path],
        output.path,
        metrics,
        parent_run_id=parent_run_id,
        mlflow_tracking_uri=mlflow_tracking_uri,
    )
