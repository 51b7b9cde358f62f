"""Component `evaluate_udpdiff`: stage `udpdiff.evaluate` (base CogVideoX vs UDPDiff per task)."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Output

from components import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def evaluate_udpdiff(
    params_yaml: str,
    samples: Input[Dataset],
    dataset: Input[Dataset],
    registered: Input[Dataset],
    output: Output[Dataset],
    metrics: Output[Metrics],
    parent_run_id: str = "",
    mlflow_tracking_uri: str = "",
):
    """Samples the base CogVideoX on the UDPDiff samples' prompts and seeds and scores both.

    Runs `vidprior.stages.execute("udpdiff.evaluate", ...)`, the same code as
    `vidprior udpdiff evaluate`. The results are written as `eval.*` / `eval_baseline.*` tags of the
    registered version.

    Args:
        params_yaml: The resolved params as YAML.
        samples: Output of `sample_udpdiff` (videos, decoded depth, prompts and seeds).
        dataset: Output of `build_dense_dataset`: FVD's reference clips and the depth labels.
        registered: Output of `register_udpdiff_model` (`model.json`: the version to tag).
        output: Receives `videos/`, `manifest.parquet` (a row per video, a column per metric),
            `table.md` / `table.csv` (SC/BC/MS x100, FVD and depth next to the paper),
            `evaluation.json` and `plots/`.
        metrics: The stage metrics (`candidate.<task>.<metric>`, `baseline.<task>.<metric>`).
        parent_run_id: MLflow run to nest the stage run under; empty for a top-level run.
        mlflow_tracking_uri: MLflow tracking server; empty keeps the image's environment.
    """
    from vidprior.stages import execute_for_component

    execute_for_component(
        "udpdiff.evaluate",
        params_yaml,
        [samples.path, dataset.path, registered.path],
        output.path,
        metrics,
        parent_run_id=parent_run_id,
        mlflow_tracking_uri=mlflow_tracking_uri,
    )
