"""Component `sample_udpdiff`: stage `udpdiff.sample`."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def sample_udpdiff(
    params_yaml: str,
    model: Input[Model],
    dataset: Input[Dataset],
    output: Output[Dataset],
    metrics: Output[Metrics],
    parent_run_id: str = "",
    mlflow_tracking_uri: str = "",
):
    """Generates a video and its segmentation or depth per prompt and task, and decodes the dense maps.

    Runs `vidprior.stages.execute("udpdiff.sample", ...)`, the same code as `vidprior udpdiff sample`.

    Args:
        params_yaml: The resolved params as YAML.
        model: Output of `train_udpdiff`.
        dataset: Output of `build_dense_dataset`; its long captions are the prompts.
        output: Receives `videos/`, `dense/` (Pixelplanes mp4 and decoded ids or depth) and
            `manifest.parquet`.
        metrics: The stage metrics (samples, seconds per video).
        parent_run_id: MLflow run to nest the stage run under; empty for a top-level run.
        mlflow_tracking_uri: MLflow tracking server; empty keeps the image's environment.
    """
    from vidprior.stages import execute_for_component

    execute_for_component(
        "udpdiff.sample",
        params_yaml,
        [model.path, dataset.path],
        output.path,
        metrics,
        parent_run_id=parent_run_id,
        mlflow_tracking_uri=mlflow_tracking_uri,
    )
