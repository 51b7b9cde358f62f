"""Pipeline `vidprior-unic`: Uni-C data and training, one KFP task per `vidprior` stage.

Shape (the MLflow parent run around the stages: `pipelines.tracked`):

    open-mlflow-run ──run id──> vidprior-unic-stages (sub-pipeline)
      exit-handler:
        collect-prompts ─> ParallelFor(shards): generate-images ─> merge-shards (images)
          ─> ParallelFor(shards): generate-videos ─> merge-shards (videos)
          ─> measure-flow ─> judge-videos ─> join-labels ─> validate-unic-data
                                                        │     ─> train-classifier ─> sample-guided
                                                        │          └> register-unic-model ─> evaluate-unic
                                                        │                                   ─> promote-model
                                                        └─> export-review
      exit task: close-mlflow-run (always runs)

Every stage task logs a nested MLflow run; a shard task logs `<stage>[i/n]`. The generation stages
(images, videos) fan out over `unic.shards` shards (GPU tasks on the paper profile); their outputs
are gathered with `dsl.Collected` and merged (manifests, rejects and media) before the next stage.
`evaluate-unic` samples SD->SVD and SD->PIA with and without the new classifier on the same seeds
(Table I's metrics, written as tags of the registered version); `promote-model` moves `champion` to it
when it beats the champion under `mlflow/policies/unic.yaml`, which is embedded when compiling.

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
from components.evaluate.unic_evaluate import evaluate_unic
from components.label.judge import judge_videos
from components.label.labels import join_labels
from components.label.review import export_review
from components.register.promote_model import promote_model
from components.register.unic_model import register_unic_model
from components.train.classifier import train_classifier
from components.validate.unic_data import validate_unic_data
from pipelines import policy_yaml
from pipelines.tracked import Placement, closing_parent_run, tracked_pipeline
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
    place = Placement(params)
    shards = [f"{i}/{params.unic.shards}" for i in range(params.unic.shards)]

    @dsl.pipeline(name=f"{PIPELINE_NAME}-stages")
    def unic_stages(params_yaml: str, parent_run_id: str, mlflow_tracking_uri: str = ""):
        """The Uni-C stages, nested under the MLflow run `parent_run_id`, which is closed on exit.

        Args:
            params_yaml: The resolved params as YAML.
            parent_run_id: The MLflow parent run; every stage logs a run nested under it.
            mlflow_tracking_uri: MLflow tracking server for every task; empty keeps the image's.
        """
        with closing_parent_run(place, parent_run_id, mlflow_tracking_uri, name="unic-stages"):
            stage_args = {
                "params_yaml": params_yaml,
                "parent_run_id": parent_run_id,
                "mlflow_tracking_uri": mlflow_tracking_uri,
            }
            prompts = place.base(collect_prompts(**stage_args))

            with dsl.ParallelFor(shards, name="image-shards") as shard:
                image_shard = place.gpu(
                    generate_images(prompts=prompts.outputs["output"], shard=shard, **stage_args)
                )
            images = place.base(merge_shards(shards=dsl.Collected(image_shard.outputs["output"])))
            images.set_display_name("merge-image-shards")

            with dsl.ParallelFor(shards, name="video-shards") as shard:
                video_shard = place.gpu(
                    generate_videos(images=images.outputs["output"], shard=shard, **stage_args)
                )
            videos = place.base(merge_shards(shards=dsl.Collected(video_shard.outputs["output"])))
            videos.set_display_name("merge-video-shards")

            flow = place.base(measure_flow(videos=videos.outputs["output"], **stage_args))
            judged = place.label(
                judge_videos(videos=videos.outputs["output"], flow=flow.outputs["output"], **stage_args)
            )
            labels = place.base(
                join_labels(
                    images=images.outputs["output"],
                    videos=videos.outputs["output"],
                    flow=flow.outputs["output"],
                    judge=judged.outputs["output"],
                    **stage_args,
                )
            )
            validated = place.base(
                validate_unic_data(
                    images=images.outputs["output"],
                    videos=videos.outputs["output"],
                    flow=flow.outputs["output"],
                    labels=labels.outputs["output"],
                    **stage_args,
                )
            )
            # Training waits for the data suites: a dataset that fails validation trains nothing.
            trained = place.train(
                train_classifier(
                    labels=labels.outputs["output"], images=images.outputs["output"], **stage_args
                ),
                params.unic.train.launcher,
            )
            trained.after(validated)
            place.gpu(
                sample_guided(
                    classifier=trained.outputs["model"], prompts=prompts.outputs["output"], **stage_args
                )
            )
            registered = place.base(register_unic_model(classifier=trained.outputs["model"], **stage_args))
            evaluated = place.gpu(
                evaluate_unic(
                    classifier=trained.outputs["model"],
                    prompts=prompts.outputs["output"],
                    registered=registered.outputs["output"],
                    **stage_args,
                )
            )
            place.base(
                promote_model(
                    family="unic",
                    evaluation=evaluated.outputs["output"],
                    policy_yaml=policy_yaml(params, "unic"),
                    **stage_args,
                )
            )
            place.base(
                export_review(
                    labels=labels.outputs["output"],
                    images=images.outputs["output"],
                    videos=videos.outputs["output"],
                    **stage_args,
                )
            )

    return tracked_pipeline(
        params,
        PIPELINE_NAME,
        "Uni-C: labelled image-video data, the guidance classifier and guided samples.",
        unic_stages,
    )
