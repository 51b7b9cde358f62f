"""Component `estimate_depth`: stage `udpdiff.depth`."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Output

from components import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def estimate_depth(
    params_yaml: str,
    clips: Input[Dataset],
    output: Output[Dataset],
    metrics: Output[Metrics],
    parent_run_id: str = "",
    mlflow_tracking_uri: str = "",
):
    """Estimates video depth for each clip and encodes it as a Spectral Pixelplanes video.

    Runs `vidprior.stages.execute("udpdiff.depth", ...)`, the same code as `vidprior udpdiff depth`.

    Args:
        params_yaml: The resolved params as YAML.
        clips: Output of `select_panda_clips`.
        output: Receives `depth/` (lossless Pixelplanes mp4 and depth in [0, 1] per clip), `manifest.parquet`
            and `rejects.parquet`.
        metrics: The stage metrics.
        parent_run_id: MLflow run to nest the stage run under; empty for a top-level run.
        mlflow_tracking_uri: MLflow tracking server; empty keeps the image's environment.
    """
    from vidprior.stages import execute_for_component

    execute_for_component(
        "udpdiff.depth",
        params_yaml,
        [clips.path],
        output.path,
        metrics,
        parent_run_id=parent_run_id,
        mlflow_tracking_uri=mlflow_tracking_uri,
    )
