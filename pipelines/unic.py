"""Pipeline `vidprior-unic`: Uni-C data and training, one KFP task per `vidprior` stage.

Shape:

    open-mlflow-run ──run id──> vidprior-unic-stages (sub-pipeline)
      exit-handler:
        collect-prompts ─> ParallelFor(shards): generate-images ─> merge-shards (images)
          ─> ParallelFor(shards): generate-videos ─> merge-shards (videos)
          ─> measure-flow ─> judge-videos ─> join-labels ─> validate-unic-data
                                                        │     ─> train-classifier ─> sample-guided
                                                        │                         └> register-unic-model
                                                        └─> export-review
      exit task: close-mlflow-run (always runs)

Every stage task logs a nested MLflow run; a shard task logs `<stage>[i/n]`. The generation stages
(images, videos) fan out over `unic.shards` shards (GPU tasks on the paper profile); their outputs
are gathered with `dsl.Collected` and merged (manifests, rejects and media) before the next stage.

The parent MLflow run is opened first and closed by an exit handler's exit task, so it is closed
(FINISHED, or FAILED when a stage failed) whatever happens to the stages. KFP forbids an exit
task to consume another task's output, so the stages and the exit handler live in a sub-pipeline
that receives the run id as an input parameter, which an exit task may read.

Extend it by adding stage tasks inside the exit handler of `unic_stages`, in stage order.
"""

from kfp import dsl
from kfp.dsl import graph_component

from components.data.flow import measure_flow
from components.data.images import generate_images
from components.data.merge_shards import merge_shards
from components.data.prompts import collect_prompts
from components.data.videos import generate_videos
from components.evaluate.sample import sample_guided
from components.label.judge import judge_videos
from components.label.labels import join_labels
from components.label.review import export_review
from components.register.mlflow_run import close_mlflow_run, open_mlflow_run
from components.register.unic_model import register_unic_model
from components.train.classifier import train_classifier
from components.validate.unic_data import validate_unic_data
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
    label_image = params.images.label
    shards = [f"{i}/{params.unic.shards}" for i in range(params.unic.shards)]
    on_gpu = params.profile == "paper"

    def on_base(task: dsl.PipelineTask) -> dsl.PipelineTask:
        return task.set_container_image(base_image)

    def generation(task: dsl.PipelineTask) -> dsl.PipelineTask:
        on_base(task)
        if on_gpu:  # diffusion sampling; the tiny profile runs on CPU
            task.set_accelerator_type("nvidia.com/gpu").set_accelerator_limit(1)
        return task

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
            prompts = on_base(collect_prompts(**stage_args))

            with dsl.ParallelFor(shards, name="image-shards") as shard:
                image_shard = generation(
                    generate_images(prompts=prompts.outputs["output"], shard=shard, **stage_args)
                )
            images = on_base(merge_shards(shards=dsl.Collected(image_shard.outputs["output"])))
            images.set_display_name("merge-image-shards")

            with dsl.ParallelFor(shards, name="video-shards") as shard:
                video_shard = generation(
                    generate_videos(images=images.outputs["output"], shard=shard, **stage_args)
                )
            videos = on_base(merge_shards(shards=dsl.Collected(video_shard.outputs["output"])))
            videos.set_display_name("merge-video-shards")

            flow = on_base(measure_flow(videos=videos.outputs["output"], **stage_args))
            judged = judge_videos(videos=videos.outputs["output"], flow=flow.outputs["output"], **stage_args)
            judged.set_container_image(label_image)
            labels = on_base(
                join_labels(
                    images=images.outputs["output"],
                    videos=videos.outputs["output"],
                    flow=flow.outputs["output"],
                    judge=judged.outputs["output"],
                    **stage_args,
                )
            )
            validated = on_base(
                validate_unic_data(
                    images=images.outputs["output"],
                    videos=videos.outputs["output"],
                    flow=flow.outputs["output"],
                    labels=labels.outputs["output"],
                    **stage_args,
                )
            )
            # Training waits for the data suites: a dataset that fails validation trains nothing.
            trained = generation(
                train_classifier(
                    labels=labels.outputs["output"], images=images.outputs["output"], **stage_args
                )
            )
            trained.set_container_image(params.images.train)
            trained.after(validated)
            generation(
                sample_guided(
                    classifier=trained.outputs["model"], prompts=prompts.outputs["output"], **stage_args
                )
            )
            on_base(register_unic_model(classifier=trained.outputs["model"], **stage_args))
            on_base(
                export_review(
                    labels=labels.outputs["output"],
                    images=images.outputs["output"],
                    videos=videos.outputs["output"],
                    **stage_args,
                )
            )

    @dsl.pipeline(
        name=PIPELINE_NAME,
        description="Uni-C: labelled image-video data, the guidance classifier and guided samples.",
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
