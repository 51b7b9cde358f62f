"""Component `segment_entities`: stage `udpdiff.segment`."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Output

from components import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def segment_entities(
    params_yaml: str,
    clips: Input[Dataset],
    output: Output[Dataset],
    metrics: Output[Metrics],
    parent_run_id: str = "",
    mlflow_tracking_uri: str = "",
):
    """Segments the entities of each clip's first frame and propagates them through the clip (SAM2).

    Runs `vidprior.stages.execute("udpdiff.segment", ...)`, the same code as `vidprior udpdiff segment`.

    Args:
        params_yaml: The resolved params as YAML.
        clips: Output of `select_panda_clips`.
        output: Receives `seg/` (lossless Pixelplanes mp4 and entity ids per clip), `manifest.parquet`
            (palette, entity count) and `rejects.parquet`.
        metrics: The stage metrics (entities per clip, cleaned regions).
        parent_run_id: MLflow run to nest the stage run under; empty for a top-level run.
        mlflow_tracking_uri: MLflow tracking server; empty keeps the image's environment.
    """
    from vidprior.stages import execute_for_component

    execute_for_component(
        "udpdiff.segment",
        params_yaml,
        [clips.path],
        output.path,
        metrics,
        parent_run_id=parent_run_id,
        mlflow_tracking_uri=mlflow_tracking_uri,
    )
