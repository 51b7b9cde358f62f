"""Pipeline `vidprior-udpdiff`: Panda-Dense labelling and the UDPDiff model, one KFP task per stage.

Shape (the MLflow parent run around the stages: `pipelines.tracked`):

    open-mlflow-run ──run id──> vidprior-udpdiff-stages (sub-pipeline)
      exit-handler:
        import-panda-source | make-synthetic-panda ─> select-panda-clips
          ─> caption-clips ──┐
          ─> segment-entities ├─> build-dense-dataset ─> encode-latents ─> train-udpdiff ─> sample-udpdiff
          ─> estimate-depth ─┘                                                    └> register-udpdiff-model
        sample-udpdiff + register-udpdiff-model ─> evaluate-udpdiff ─> promote-model
      exit task: close-mlflow-run (always runs)

The source is chosen when the pipeline is compiled: `udpdiff.panda.source_uri` (e.g. an object-store
prefix holding the Panda-70M CSV and its downloaded clips) is imported as a Dataset artifact; null
generates the synthetic source (moving shapes with exact masks and depth) instead, as the local run does.
The three labellers read the same clips and run side by side. Training waits for the dense-data suites
(`build-dense-dataset` fails on a failed suite). On the paper profile every model task gets one GPU and
the labellers run in the label image. Training follows `udpdiff.train.launcher`: in process (the tiny
profile) or, on the paper profile, a PyTorchJob of 1 node x 8 GPUs (the paper's 8 x A100) that the
train step creates, follows and waits for (`vidprior.kube`). `evaluate-udpdiff` samples the base
CogVideoX on the UDPDiff samples' prompts and seeds and scores both (SC, BC, MS, FVD, depth delta1/RMSE,
written as tags of the registered version); `promote-model` moves `champion` to the version when it
beats the champion under `mlflow/policies/udpdiff.yaml`, embedded when compiling.
"""

from kfp import dsl
from kfp.dsl import Dataset, graph_component

from components.data.panda_clips import select_panda_clips
from components.data.synthetic_panda import make_synthetic_panda
from components.evaluate.udpdiff_evaluate import evaluate_udpdiff
from components.evaluate.udpdiff_sample import sample_udpdiff
from components.label.captions import caption_clips
from components.label.depth import estimate_depth
from components.label.segment import segment_entities
from components.register.promote_model import promote_model
from components.register.udpdiff_model import register_udpdiff_model
from components.train.udpdiff import train_udpdiff
from components.train.udpdiff_latents import encode_latents
from components.validate.dense_dataset import build_dense_dataset
from pipelines import policy_yaml
from pipelines.tracked import Placement, closing_parent_run, tracked_pipeline
from vidprior.config import Params

PIPELINE_NAME = "vidprior-udpdiff"


def build_udpdiff_pipeline(params: Params) -> graph_component.GraphComponent:
    """Builds the `vidprior-udpdiff` pipeline for `params`.

    Args:
        params: Resolved params. They become the default of the `params_yaml` argument; the images
            come from `params.images` and the data source from `udpdiff.panda.source_uri`.

    Returns:
        The pipeline, ready for `kfp.compiler.Compiler().compile` or a `kfp.local` run.
    """
    place = Placement(params)
    source_uri = params.udpdiff.panda.source_uri

    @dsl.pipeline(name=f"{PIPELINE_NAME}-stages")
    def udpdiff_stages(params_yaml: str, parent_run_id: str, mlflow_tracking_uri: str = ""):
        """The UDPDiff stages, nested under the MLflow run `parent_run_id`, which is closed on exit.

        Args:
            params_yaml: The resolved params as YAML.
            parent_run_id: The MLflow parent run; every stage logs a run nested under it.
            mlflow_tracking_uri: MLflow tracking server for every task; empty keeps the image's.
        """
        with closing_parent_run(place, parent_run_id, mlflow_tracking_uri, name="udpdiff-stages"):
            stage_args = {
                "params_yaml": params_yaml,
                "parent_run_id": parent_run_id,
                "mlflow_tracking_uri": mlflow_tracking_uri,
            }
            if source_uri:
                source = dsl.importer(artifact_uri=source_uri, artifact_class=Dataset, reimport=False)
                source.set_display_name("import-panda-source")
                source_output = source.output
            else:
                source_output = place.base(make_synthetic_panda(**stage_args)).outputs["output"]
            clips = place.base(select_panda_clips(source=source_output, **stage_args)).outputs["output"]

            captions = place.gpu(caption_clips(clips=clips, **stage_args), params.images.label)
            segment = place.gpu(segment_entities(clips=clips, **stage_args), params.images.label)
            depth = place.gpu(estimate_depth(clips=clips, **stage_args), params.images.label)
            dataset = place.base(
                build_dense_dataset(
                    clips=clips,
                    captions=captions.outputs["output"],
                    segment=segment.outputs["output"],
                    depth=depth.outputs["output"],
                    **stage_args,
                )
            ).outputs["output"]

            latents = place.gpu(encode_latents(dataset=dataset, **stage_args))
            trained = place.train(
                train_udpdiff(latents=latents.outputs["output"], **stage_args), params.udpdiff.train.launcher
            )
            model = trained.outputs["model"]
            samples = place.gpu(sample_udpdiff(model=model, dataset=dataset, **stage_args))
            registered = place.base(register_udpdiff_model(model=model, **stage_args))
            evaluated = place.gpu(
                evaluate_udpdiff(
                    samples=samples.outputs["output"],
                    dataset=dataset,
                    registered=registered.outputs["output"],
                    **stage_args,
                )
            )
            place.base(
                promote_model(
                    family="udpdiff",
                    evaluation=evaluated.outputs["output"],
                    policy_yaml=policy_yaml(params, "udpdiff"),
                    **stage_args,
                )
            )

    return tracked_pipeline(
        params,
        PIPELINE_NAME,
        "UDPDiff: Panda-Dense (captions, entity segmentation, depth) and CogVideoX generating video "
        "with its segmentation or depth.",
        udpdiff_stages,
    )
