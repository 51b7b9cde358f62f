"""Component `judge_videos`: stage `unic.judge` (the five criteria of Uni-C Suppl. VI)."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Output

from components import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def judge_videos(
    params_yaml: str,
    videos: Input[Dataset],
    flow: Input[Dataset],
    output: Output[Dataset],
    metrics: Output[Metrics],
    parent_run_id: str = "",
    mlflow_tracking_uri: str = "",
):
    """Judges the videos the flow rule kept: a vision-LLM endpoint, or the offline judge.

    Runs `vidprior.stages.execute("unic.judge", ...)`, the same code as `vidprior unic judge`.
    With `unic.judge.backend: llm` the API key is read from the environment variable named by
    `unic.judge.endpoint.api_key_env` (mount it from a Kubernetes secret); it is never logged.

    Args:
        params_yaml: The resolved params as YAML.
        videos: The merged output of `generate_videos`.
        flow: Output of `measure_flow`.
        output: Receives `manifest.parquet` (one boolean per criterion, the raw answer) and
            `rejects.parquet` (items left unlabelled, with the reason).
        metrics: The stage metrics (labelled, unlabelled, pass rate per criterion).
        parent_run_id: MLflow run to nest the stage run under; empty for a top-level run.
        mlflow_tracking_uri: MLflow tracking server; empty keeps the image's environment.
    """
    from vidprior.stages import execute_for_component

    execute_for_component(
        "unic.judge",
        params_yaml,
        [videos.path, flow.path],
        output.path,
        metrics,
        parent_run_id=parent_run_id,
        mlflow_tracking_uri=mlflow_tracking_uri,
    )
