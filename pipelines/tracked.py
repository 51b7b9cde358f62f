"""What every vidprior pipeline shares: an MLflow parent run around its stages, and task placement.

Shape of a tracked pipeline:

    open-mlflow-run ──run id──> <name>-stages (sub-pipeline)
      exit-handler: the stage tasks, each logging a run nested under the parent run
      exit task: close-mlflow-run (always runs)

The parent run is opened first and closed by an exit handler's exit task, so it is closed (FINISHED,
or FAILED when a stage failed) whatever happens to the stages. KFP forbids an exit task to consume
another task's output, so the stages and the exit handler live in a sub-pipeline that receives the
run id as an input parameter, which an exit task may read.
"""

# No `from __future__ import annotations`: kfp reads the pipeline functions' annotations as types.
from collections.abc import Callable
from contextlib import contextmanager

from kfp import dsl
from kfp.dsl import graph_component

from components.register.mlflow_run import close_mlflow_run, open_mlflow_run
from pipelines import params_yaml_default
from vidprior.config import Params

GPU_RESOURCE = "nvidia.com/gpu"


class Placement:
    """Container images from params, and one GPU per model task on the paper profile (CPU when tiny)."""

    def __init__(self, params: Params):
        self.images = params.images
        self.on_gpu = params.profile == "paper"

    def base(self, task: dsl.PipelineTask) -> dsl.PipelineTask:
        return task.set_container_image(self.images.base)

    def label(self, task: dsl.PipelineTask) -> dsl.PipelineTask:
        return task.set_container_image(self.images.label)

    def gpu(self, task: dsl.PipelineTask, image: str | None = None) -> dsl.PipelineTask:
        task.set_container_image(image or self.images.base)
        if self.on_gpu:
            task.set_accelerator_type(GPU_RESOURCE).set_accelerator_limit(1)
        return task


@contextmanager
def closing_parent_run(placement: Placement, parent_run_id: str, mlflow_tracking_uri: str, name: str):
    """An exit handler whose exit task closes the MLflow parent run with the stages' outcome."""
    close = placement.base(close_mlflow_run(run_id=parent_run_id, mlflow_tracking_uri=mlflow_tracking_uri))
    close.set_caching_options(False)
    with dsl.ExitHandler(close, name=name):
        yield


def tracked_pipeline(
    params: Params,
    name: str,
    description: str,
    stages: Callable[..., graph_component.GraphComponent],
) -> graph_component.GraphComponent:
    """The pipeline `name`: opens the parent run, then runs `stages(params_yaml, parent_run_id, uri)`."""
    placement = Placement(params)

    @dsl.pipeline(name=name, description=description)
    def pipeline(params_yaml: str = params_yaml_default(params), mlflow_tracking_uri: str = ""):
        """Opens the MLflow parent run and runs the stages under it.

        Args:
            params_yaml: The resolved params as YAML (default: the params it was compiled with).
            mlflow_tracking_uri: MLflow tracking server for every task; empty keeps the image's.
        """
        uri = mlflow_tracking_uri
        parent = placement.base(
            open_mlflow_run(pipeline_name=name, params_yaml=params_yaml, mlflow_tracking_uri=uri)
        )
        parent.set_caching_options(False)  # a new parent run per pipeline run, never a cached one
        stages(params_yaml=params_yaml, parent_run_id=parent.output, mlflow_tracking_uri=uri)

    return pipeline
