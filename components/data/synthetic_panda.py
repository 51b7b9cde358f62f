"""Component `make_synthetic_panda`: stage `udpdiff.synthetic`."""

from kfp import dsl
from kfp.dsl import Dataset, Metrics, Output

from components import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def make_synthetic_panda(
    params_yaml: str,
    output: Output[Dataset],
    metrics: Output[Metrics],
    parent_run_id: str = "",
    mlflow_tracking_uri: str = "",
):
    """A Panda-70M-shaped source of moving textured shapes with exact masks and depth.

    Runs `vidprior.stages.execute("udpdiff.synthetic", ...)`, the same code as `vidprior udpdiff synthetic`.

    Args:
        params_yaml: The resolved params as YAML.
        output: Writes `panda70m.csv`, `clips/` and `truth/` (exact masks and depth per clip).
        metrics: The stage metrics (clips, entities).
        parent_run_id: MLflow run to nest the stage run under; empty for a top-level run.
        mlflow_tracking_uri: MLflow tracking server; empty keeps the image's environment.
    """
    from vidprior.stages import execute_for_component

    execute_for_component(
        "udpdiff.synthetic",
        params_yaml,
        [],
        output.path,
        metrics,
        parent_run_id=parent_run_id,
        mlflow_tracking_uri=mlflow_tracking_uri,
    )
