"""Pipeline `vidprior-unic`: Uni-C data and training, one KFP task per `vidprior` stage.

Shape:

    open-mlflow-run ──run id──> vidprior-unic-stages (sub-pipeline)
                                  exit-handler: collect-prompts ──> ...   (nested MLflow runs)
                                  exit task:    close-mlflow-run          (always runs)

The parent MLflow run is opened first and closed by an exit handler's exit task, so it is closed
(FINISHED, or FAILED when a stage failed) whatever happens to the stages. KFP forbids an exit
task to consume another task's output, so the stages and the exit handler live in a sub-pipeline
that receives the run id as an input parameter, which an exit task may read.

Extend it by adding stage tasks inside the exit handler of `unic_stages`, in stage order.
"""

from kfp import dsl
from kfp.dsl import graph_component

from components.data.prompts import collect_prompts
from components.register.mlflow_run import close_mlflow_run, open_mlflow_run
from pipelines import params_yaml_default
from vidprior.config import Params

PIPELINE_NAME = "vidprior-unic"


def build_unic_pipeline(params: Params) -> graph_component.GraphComponent:
    """Builds the `vidprior-unic` pipeline for `params`.

    Args:
        params: Resolved params. They become the default of the `params_yaml` argument; the images
            come from `params.images`.

    Returns:
        The pipeline, ready for `kfp.compiler.Compiler().compile` or a `kfp.local` run.
    """
    default_params_yaml = params_yaml_default(params)
    base_image = params.images.base

    def on_base(task: dsl.PipelineTask) -> dsl.PipelineTask:
        return task.set_container_image(base_image)

    @dsl.pipeline(name=f"{PIPELINE_NAME}-stages")
    def unic_stages(params_yaml: str, parent_run_id: str, mlflow_tracking_uri: str = ""):
        """The Uni-C stages, nested under the MLflow run `parent_run_id`, which is closed on exit.

        Args:
            params_yaml: The resolved params as YAML.
            parent_run_id: The MLflow parent run; every stage logs a run nested under it.
            mlflow_tracking_uri: MLflow tracking server for every task; empty keeps the image's.
        """
        close = on_base(close_mlflow_run(run_id=parent_run_id, mlflow_tracking_uri=mlflow_tracking_uri))
        close.set_caching_options(False)

        with dsl.ExitHandler(close, name="unic-stages"):
            stage_args = {
                "params_yaml": params_yaml,
                "parent_run_id": parent_run_id,
                "mlflow_tracking_uri": mlflow_tracking_uri,
            }
            on_base(collect_prompts(**stage_args))
            # Next stages consume the `output` Dataset of collect-prompts (manifest.parquet inside).

    @dsl.pipeline(
        name=PIPELINE_NAME,
        description="Uni-C: prompts (later images, videos, labels, classifier) under one MLflow parent run.",
    )
    def unic_pipeline(params_yaml: str = default_params_yaml, mlflow_tracking_uri: str = ""):
        """Uni-C pipeline.

        Args:
            params_yaml: The resolved params as YAML (default: the params it was compiled with).
            mlflow_tracking_uri: MLflow tracking server for every task; empty keeps the image's.
        """
        parent = on_base(
            open_mlflow_run(
                pipeline_name=PIPELINE_NAME, params_yaml=params_yaml, mlflow_tracking_uri=mlflow_tracking_uri
            )
        )
        parent.set_caching_options(False)  # a new parent run per pipeline run, never a cached one
        unic_stages(
            params_yaml=params_yaml, parent_run_id=parent.output, mlflow_tracking_uri=mlflow_tracking_uri
        )

    return unic_pipeline
