"""Component `export_review`: stage `unic.review` (a sample of positives for the manual check)."""

from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Metrics, Output

from components import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def export_review(
    params_yaml: str,
    labels: Input[Dataset],
    images: Input[Dataset],
    videos: Input[Dataset],
    output: Output[Dataset],
    page: Output[HTML],
    metrics: Output[Metrics],
    parent_run_id: str = "",
    mlflow_tracking_uri: str = "",
):
    """Exports `unic.review.sample_size` random positives as frame strips with their verdicts.

    Runs `vidprior.stages.execute("unic.review", ...)`, the same code as `vidprior unic review`.

    Args:
        params_yaml: The resolved params as YAML.
        labels: Output of `join_labels`.
        images: The merged output of `generate_images`.
        videos: The merged output of `generate_videos`.
        output: Receives `report/index.html` and `report/review.csv` (for reviewers' verdicts).
        page: The same page, as an HTML artifact the Kubeflow UI renders.
        metrics: The stage metrics (items exported, positives available).
        parent_run_id: MLflow run to nest the stage run under; empty for a top-level run.
        mlflow_tracking_uri: MLflow tracking server; empty keeps the image's environment.
    """
    import shutil
    from pathlib import Path

    from vidprior.stages import execute_for_component

    execute_for_component(
        "unic.review",
        params_yaml,
        [labels.path, images.path, videos.path],
        output.path,
        metrics,
        parent_run_id=parent_run_id,
        mlflow_tracking_uri=mlflow_tracking_uri,
    )
    shutil.copyfile(Path(output.path) / "report" / "index.html", page.path)
