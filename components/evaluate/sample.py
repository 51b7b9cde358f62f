"""Component `sample_guided`: stage `unic.sample` (guided generation with the trained head)."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def sample_guided(
    params_yaml: str,
    classifier: Input[Model],
    prompts: Input[Dataset],
    output: Output[Dataset],
    metrics: Output[Metrics],
    parent_run_id: str = "",
    mlflow_tracking_uri: str = "",
):
    """Samples `unic.sample.workflow` with Uni-C guidance, and unguided on the same seeds.

    Runs `vidprior.stages.execute("unic.sample", ...)`, the same code as `vidprior unic sample`.

    Args:
        params_yaml: The resolved params as YAML.
        classifier: Output of `train_classifier` (holds `head.safetensors`).
        prompts: Output of `collect_prompts`; the first `unic.sample.max_prompts` are sampled.
        output: Receives `images/`, `videos/` and `manifest.parquet` (variant, lambda, seed,
            classifier probability per sample).
        metrics: The stage metrics (mean classifier probability guided vs baseline).
        parent_run_id: MLflow run to nest the stage run under; empty for a top-level run.
        mlflow_tracking_uri: MLflow tracking server; empty keeps the image's environment.
    """
    from vidprior.stages import execute_for_component

    execute_for_component(
        "unic.sample",
        params_yaml,
        [classifier.path, prompts.path],
        output.path,
        metrics,
        parent_run_id=parent_run_id,
        mlflow_tracking_uri=mlflow_tracking_uri,
    )
