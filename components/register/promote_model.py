"""Component `promote_model`: stage `unic.promote` or `udpdiff.promote` (alias `champion` by policy)."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Output

from components import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def promote_model(
    params_yaml: str,
    family: str,
    evaluation: Input[Dataset],
    output: Output[Dataset],
    metrics: Output[Metrics],
    policy_yaml: str = "",
    parent_run_id: str = "",
    mlflow_tracking_uri: str = "",
):
    """Moves alias `champion` to the evaluated version when it beats the champion under the policy.

    Runs `vidprior.stages.execute("<family>.promote", ...)`, the same code as `vidprior <family> promote`.
    A refusal does not fail the task: `promotion.json` says why and the `promoted` metric is 0.

    Args:
        params_yaml: The resolved params as YAML.
        family: `unic` or `udpdiff`: which model and stage.
        evaluation: Output of the family's evaluate component (holds `evaluation.json`: model, version).
        output: Receives `promotion.json` (decision, reason, per-metric comparison with the champion).
        metrics: The stage metrics (`promoted` 1/0, the champion version).
        policy_yaml: The promotion policy's YAML (e.g. `mlflow/policies/unic.yaml` read at compile
            time); empty reads `<params.registry.policies_dir>/<model>.yaml` inside the image.
        parent_run_id: MLflow run to nest the stage run under; empty for a top-level run.
        mlflow_tracking_uri: MLflow tracking server; empty keeps the image's environment.
    """
    from vidprior.registry.promote import execute_for_component

    execute_for_component(
        f"{family}.promote",
        params_yaml,
        evaluation.path,
        output.path,
        metrics,
        policy_yaml=policy_yaml,
        parent_run_id=parent_run_id,
        mlflow_tracking_uri=mlflow_tracking_uri,
    )
