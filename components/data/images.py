"""Component `generate_images`: stage `unic.images` (Uni-C data, step 2) for one shard."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Output

from components import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def generate_images(
    params_yaml: str,
    prompts: Input[Dataset],
    shard: str,
    output: Output[Dataset],
    metrics: Output[Metrics],
    parent_run_id: str = "",
    mlflow_tracking_uri: str = "",
):
    """Generates `unic.images.per_prompt` Stable Diffusion images per prompt of one shard.

    Runs `vidprior.stages.execute("unic.images", ...)`, the same code as `vidprior unic images`.

    Args:
        params_yaml: The resolved params as YAML (`vidprior params show`).
        prompts: Output of `collect_prompts` (its `manifest.parquet`).
        shard: `i/n`: this task generates the images whose id hashes to shard i of n.
        output: Receives `images/<id>.png`, `manifest.parquet` (prompt, seed, model id per image)
            and `rejects.parquet`.
        metrics: The stage metrics (images planned / kept / rejected).
        parent_run_id: MLflow run to nest the stage run under; empty for a top-level run.
        mlflow_tracking_uri: MLflow tracking server; empty keeps the image's environment.
    """
    from vidprior.stages import execute_for_component

    execute_for_component(
        "unic.images",
        params_yaml,
        [prompts.path],
        output.path,
        metrics,
        shard=shard,
        parent_run_id=parent_run_id,
        mlflow_tracking_uri=mlflow_tracking_uri,
    )
