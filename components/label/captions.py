"""Component `caption_clips`: stage `udpdiff.captions`."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Output

from components import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def caption_clips(
    params_yaml: str,
    clips: Input[Dataset],
    output: Output[Dataset],
    metrics: Output[Metrics],
    parent_run_id: str = "",
    mlflow_tracking_uri: str = "",
):
    """Adds the long caption (Video-LLaVA, an endpoint, or Panda's own) beside the short Panda caption.

    Runs `vidprior.stages.execute("udpdiff.captions", ...)`, the same code as `vidprior udpdiff captions`.

    Args:
        params_yaml: The resolved params as YAML.
        clips: Output of `select_panda_clips`.
        output: Receives `manifest.parquet` (short and long caption, captioner) and `rejects.parquet`.
        metrics: The stage metrics.
        parent_run_id: MLflow run to nest the stage run under; empty for a top-level run.
        mlflow_tracking_uri: MLflow tracking server; empty keeps the image's environment.
    """
    from vidprior.stages import execute_for_component

    execute_for_component(
        "udpdiff.captions",
        params_yaml,
        [clips.path],
        output.path,
        metrics,
        parent_run_id=parent_run_id,
        mlflow_tracking_uri=mlflow_tracking_uri,
    )
