"""Component `encode_latents`: stage `udpdiff.encode`."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Output

from components import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def encode_latents(
    params_yaml: str,
    dataset: Input[Dataset],
    output: Output[Dataset],
    metrics: Output[Metrics],
    parent_run_id: str = "",
    mlflow_tracking_uri: str = "",
):
    """Precomputes VAE latents (clip, segmentation, depth) and T5 embeddings (long and short caption).

    Runs `vidprior.stages.execute("udpdiff.encode", ...)`, the same code as `vidprior udpdiff encode`.

    Args:
        params_yaml: The resolved params as YAML.
        dataset: Output of `build_dense_dataset`.
        output: Receives `latents/` (one safetensors file per clip) and `manifest.parquet`.
        metrics: The stage metrics.
        parent_run_id: MLflow run to nest the stage run under; empty for a top-level run.
        mlflow_tracking_uri: MLflow tracking server; empty keeps the image's environment.
    """
    from vidprior.stages import execute_for_component

    execute_for_component(
        "udpdiff.encode",
        params_yaml,
        [dataset.path],
        output.path,
        metrics,
        parent_run_id=parent_run_id,
        mlflow_tracking_uri=mlflow_tracking_uri,
    )
