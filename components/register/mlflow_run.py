"""Components `open_mlflow_run` and `close_mlflow_run`: the MLflow parent run of a pipeline run.

A pipeline opens the parent run first, hands its id to every stage component (which logs a nested
run under it) and closes it from a `dsl.ExitHandler`, so the parent run is closed even when a stage
fails, with the outcome of the stages as its status.
"""

from kfp import dsl
from kfp.dsl import PipelineTaskFinalStatus

from components import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def open_mlflow_run(pipeline_name: str, params_yaml: str, mlflow_tracking_uri: str = "") -> str:
    """Opens the MLflow parent run of one pipeline run; it stays open until `close_mlflow_run`.

    Args:
        pipeline_name: Pipeline name, used as the run name and the `vidprior.pipeline` tag.
        params_yaml: The run's params; the run goes to their `tracking.experiment` (created when
            missing), the same experiment the stages log to.
        mlflow_tracking_uri: MLflow tracking server; empty keeps the image's environment.

    Returns:
        The MLflow run id of the parent run.
    """
    import os

    if mlflow_tracking_uri:
        os.environ["MLFLOW_TRACKING_URI"] = mlflow_tracking_uri

    import yaml

    from vidprior.config import params_from_dict
    from vidprior.registry.tracking import open_parent_run

    params = params_from_dict(yaml.safe_load(params_yaml))
    tags = {"vidprior.orchestrator": "kfp", "vidprior.profile": params.profile}
    return open_parent_run(pipeline_name, params.tracking.experiment, tags)


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def close_mlflow_run(run_id: str, status: PipelineTaskFinalStatus, mlflow_tracking_uri: str = ""):
    """Closes the MLflow parent run: FINISHED when the stages succeeded, else FAILED or KILLED.

    Meant as the exit task of a `dsl.ExitHandler` around the stages; KFP fills `status` with the
    final status of the handler's group (it is not a pipeline argument).

    Args:
        run_id: The parent run id returned by `open_mlflow_run`.
        status: Final status of the tasks the exit handler wraps (injected by KFP).
        mlflow_tracking_uri: MLflow tracking server; empty keeps the image's environment.
    """
    import os

    if mlflow_tracking_uri:
        os.environ["MLFLOW_TRACKING_URI"] = mlflow_tracking_uri

    from vidprior.registry.tracking import close_run

    outcome = {"SUCCEEDED": "FINISHED", "CANCELLED": "KILLED", "CANCELED": "KILLED"}
    close_run(run_id, outcome.get(str(status.state).upper(), "FAILED"))
