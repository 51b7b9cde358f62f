"""Component `generate_videos`: stage `unic.videos` (Uni-C data, step 3) for one shard."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Output

from components import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def generate_videos(
    params_yaml: str,
    images: Input[Dataset],
    shard: str,
    output: Output[Dataset],
    metrics: Output[Metrics],
    parent_run_id: str = "",
    mlflow_tracking_uri: str = "",
):
    """Turns every image of one shard into a video (SVD, or PIA with `unic.videos.model: pia`).

    Runs `vidprior.stages.execute("unic.videos", ...)`, the same code as `vidprior unic videos`.

    Args:
        params_yaml: The resolved params as YAML.
        images: The merged output of `generate_images`.
        shard: `i/n`: this task animates the images whose id hashes to shard i of n.
        output: Receives `videos/<id>.mp4` (H.264), `manifest.parquet` (frames, fps, motion
            bucket, seed, model id per video) and `rejects.parquet`.
        metrics: The stage metrics.
        parent_run_id: MLflow run to nest the stage run under; empty for a top-level run.
        mlflow_tracking_uri: MLflow tracking server; empty keeps the image's environment.
    """
    from vidprior.stages import execute_for_component

    execute_for_component(
        "unic.videos",
        params_yaml,
        [images.path],
        output.path,
        metrics,
        shard=shard,
        parent_run_id=parent_run_id,
        mlflow_tracking_uri=mlflow_tracking_uri,
    )
