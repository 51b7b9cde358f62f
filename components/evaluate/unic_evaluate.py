"""Component `evaluate_unic`: stage `unic.evaluate` (Uni-C Table I, guided vs unguided)."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def evaluate_unic(
    params_yaml: str,
    classifier: Input[Model],
    prompts: Input[Dataset],
    registered: Input[Dataset],
    output: Output[Dataset],
    metrics: Output[Metrics],
    parent_run_id: str = "",
    mlflow_tracking_uri: str = "",
):
    """Samples each `unic.evaluate.workflows` guided and unguided on the same seeds and scores them.

    Runs `vidprior.stages.execute("unic.evaluate", ...)`, the same code as `vidprior unic evaluate`.
    The results are written as `eval.*` / `eval_baseline.*` tags of the registered version.

    Args:
        params_yaml: The resolved params as YAML.
        classifier: Output of `train_classifier` (holds `head.safetensors`).
        prompts: Output of `collect_prompts`; the first `unic.evaluate.max_prompts` are sampled.
        registered: Output of `register_unic_model` (`model.json`: the version to tag).
        output: Receives `videos/`, `manifest.parquet` (a row per video, a column per metric),
            `table.md` / `table.csv` (Table I, measured next to the paper), `evaluation.json` and
            `plots/`.
        metrics: The stage metrics (`candidate.<workflow>.<metric>`, `baseline.<workflow>.<metric>`).
        parent_run_id: MLflow run to nest the stage run under; empty for a top-level run.
        mlflow_tracking_uri: MLflow tracking server; empty keeps the image's environment.
    """
    from vidprior.stages import execute_for_component

    execute_for_component(
        "unic.evaluate",
        params_yaml,
        [classifier.path, prompts.path, registered.path],
        output.path,
        metrics,
        parent_run_id=parent_run_id,
        mlflow_tracking_uri=mlflow_tracking_uri,
    )
