"""Component `collect_prompts`: stage `unic.prompts` (Uni-C data, step 1) as a KFP task."""

from kfp import dsl
from kfp.dsl import Dataset, Metrics, Output

from components import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def collect_prompts(
    params_yaml: str,
    output: Output[Dataset],
    metrics: Output[Metrics],
    parent_run_id: str = "",
    mlflow_tracking_uri: str = "",
):
    """Collects, rule-filters and de-duplicates VidProM-format prompts into a prompt manifest.

    Runs `vidprior.stages.execute("unic.prompts", ...)`, the same code as `vidprior unic prompts`.
    The prompt files are the ones named in `unic.prompts.sources` of the params ("builtin" is the
    prompt file shipped in the image).

    Args:
        params_yaml: The resolved params as YAML (`vidprior params show`).
        output: Directory artifact that receives `manifest.parquet` (kept prompts) and
            `rejects.parquet` (every other input row, with its reason).
        metrics: The stage metrics (prompts read / kept / rejected per reason, timings).
        parent_run_id: MLflow run to nest the stage run under; empty for a top-level run.
        mlflow_tracking_uri: MLflow tracking server; empty keeps the image's environment.
    """
    import os

    if mlflow_tracking_uri:
        os.environ["MLFLOW_TRACKING_URI"] = mlflow_tracking_uri

    from pathlib import Path

    import yaml

    from vidprior.config import params_from_dict
    from vidprior.stages import execute

    params = params_from_dict(yaml.safe_load(params_yaml))
    result = execute("unic.prompts", params, None, Path(output.path), parent_run_id=parent_run_id or None)
    for name, value in sorted(result.items()):
        metrics.log_metric(name, float(value))
