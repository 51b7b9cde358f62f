"""Typed params: `params.yaml` (tiny profile) optionally overlaid by more files (`params/paper.yaml`).

Every section forbids unknown keys and loose types, so a typo fails loudly instead of silently
falling back to a default; the error names the dotted key, the file it came from and what was
expected.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, model_validator

from vidprior.evaluate.names import PER_VIDEO_METRICS
from vidprior.models.spec import ModelSpec, StrictModel, TextEmbedderSpec, TinySpec

DEFAULT_PARAMS = Path("params.yaml")


class ParamsError(ValueError):
    """A params file is unreadable or does not match the schema."""


# --------------------------------------------------------------------------- sections


class TrackingParams(StrictModel):
    experiment: str = "vidprior"


class RegistryParams(StrictModel):
    # Where the promotion policies (`<model>.yaml`) are; a relative path is taken from the project root
    # (VIDPRIOR_HOME, else the directory above the cwd holding params.yaml), as images set it.
    policies_dir: str = Field("mlflow/policies", min_length=1)


class ImagesParams(StrictModel):
    base: str = "ghcr.io/vidprior/base:0.1.0"
    train: str = "ghcr.io/vidprior/train:0.1.0"
    label: str = "ghcr.io/vidprior/label:0.1.0"


class ModelsParams(StrictModel):
    sd15: ModelSpec
    svd: ModelSpec
    # PIA's motion adapter (`openmmlab/PIA-condition-adapter`); it animates `sd15`, its base model.
    pia: ModelSpec = ModelSpec(tiny=TinySpec(seed=0))
    # AnimateDiff's motion adapter (`guoyww/animatediff-motion-adapter-v1-5-2`) on `sd15`.
    animatediff: ModelSpec = ModelSpec(tiny=TinySpec(seed=0))
    cogvideox: ModelSpec
    # UDPDiff's Panda-Dense labellers (SPEC "UDPDiff / Dataset"): the re-captioner, the first-frame
    # entity segmenter (a panoptic model: every segment is an entity), SAM2 for video propagation and
    # the per-frame depth estimator. Tiny specs build the same transformers classes, random weights.
    video_llava: ModelSpec = ModelSpec(tiny=TinySpec(seed=0))
    entity_segmenter: ModelSpec = ModelSpec(tiny=TinySpec(seed=0))
    sam2: ModelSpec = ModelSpec(tiny=TinySpec(seed=0))
    depth_anything: ModelSpec = ModelSpec(tiny=TinySpec(seed=0))


class RuleFilterParams(StrictModel):
    english_only: bool = True
    min_words: int = Field(3, ge=1)
    max_words: int = Field(60, ge=1)
    require_motion: bool = True
    # Added to the built-in motion vocabulary (vidprior.unic.prompt_rules.MOTION_WORDS).
    extra_motion_words: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _ordered(self) -> RuleFilterParams:
        if self.max_words < self.min_words:
            raise ValueError("'max_words' must be >= 'min_words'")
        return self


class LLMFilterParams(StrictModel):
    enabled: bool = False
    base_url: str = "http://127.0.0.1:8000/v1"
    model: str = "Qwen/Qwen2.5-72B-Instruct"
    api_key_env: str = "OPENAI_API_KEY"
    max_workers: int = Field(4, ge=1, le=256)
    timeout_s: float = Field(60.0, gt=0)
    max_retries: int = Field(5, ge=0)


class DedupParams(StrictModel):
    threshold: float = Field(0.8, gt=0.0, le=1.0)
    # Rows embedded and checkpointed together; an interrupted run resumes at chunk granularity.
    chunk_size: int = Field(4096, ge=1)


class PromptsParams(StrictModel):
    # "builtin" is the prompt file shipped inside the package; anything else is a path to a
    # VidProM-format parquet or CSV (columns `uuid`, `prompt`).
    sources: list[str] = Field(default_factory=lambda: ["builtin"], min_length=1)
    embedder: TextEmbedderSpec
    rule_filter: RuleFilterParams = RuleFilterParams()
    llm_filter: LLMFilterParams = LLMFilterParams()
    dedup: DedupParams = DedupParams()
    # Keep at most this many prompts (first in input order) after filtering; null keeps all.
    max_prompts: int | None = Field(None, ge=1)


class GenerateImagesParams(StrictModel):
    per_prompt: int = Field(5, ge=1)
    height: int = Field(512, ge=8)
    width: int = Field(512, ge=8)
    steps: int = Field(50, ge=1)
    guidance_scale: float = Field(7.5, ge=0)
    # Images per pipeline call; seeds are per image, so the batch size never changes an image.
    batch_size: int = Field(8, ge=1)


class GenerateVideosParams(StrictModel):
    # "svd" is the paper's labeller; "pia" the alternative of Uni-C Suppl. X (SD 1.5 + PIA adapter).
    model: Literal["svd", "pia"] = "svd"
    frames: int = Field(14, ge=2)
    fps: int = Field(7, ge=1)
    height: int = Field(512, ge=8)
    width: int = Field(512, ge=8)
    steps: int = Field(25, ge=1)
    # SVD conditioning: motion bucket id and noise augmentation of the conditioning image.
    motion_bucket_id: int = Field(127, ge=0, le=255)
    noise_aug_strength: float = Field(0.02, ge=0)
    decode_chunk_size: int = Field(8, ge=1)
    # PIA conditioning: text guidance and its motion preset (0-2 small, 3-5 moderate, 6-8 loop).
    pia_guidance_scale: float = Field(7.5, ge=0)
    pia_motion_scale: int = Field(0, ge=0, le=8)
    batch_size: int = Field(1, ge=1)
    # mp4 quality (x264 CRF): low enough that compression barely moves the flow statistics.
    crf: int = Field(18, ge=0, le=51)


class FlowParams(StrictModel):
    # "dis" (OpenCV DIS, fast) or "farneback"; both CPU. vidprior.flow admits more backends (RAFT).
    backend: Literal["dis", "farneback"] = "dis"
    # Frames are resized to this before flow, so thresholds in pixels mean the same for every video.
    analysis_height: int = Field(256, ge=16)
    analysis_width: int = Field(256, ge=16)


class FlowRuleParams(StrictModel):
    """Uni-C Suppl. VI flow filter; see vidprior.unic.flow_rule for the interpretation."""

    overall_factor: float = Field(1.0, ge=0)  # negative if mean(|w|) < overall_factor * var(|w|)
    axis_factor: float = Field(5.0, ge=0)  # negative if both axes have mean < axis_factor * var
    # Negative if the mean flow magnitude (px at the analysis resolution) is below this floor.
    min_mean_magnitude: float = Field(0.5, ge=0)


class ChatEndpointParams(StrictModel):
    """An OpenAI-compatible chat endpoint (vLLM, TGI, OpenAI); the key is read from `api_key_env`."""

    base_url: str = "http://127.0.0.1:8000/v1"
    model: str = "Video-LLaVA-7B"
    api_key_env: str = "OPENAI_API_KEY"
    max_workers: int = Field(8, ge=1, le=256)
    timeout_s: float = Field(120.0, gt=0)
    max_retries: int = Field(5, ge=0)
    max_tokens: int = Field(300, ge=16)


class JudgeEndpointParams(ChatEndpointParams):
    model: str = "gpt-4o"


class OfflineJudgeParams(StrictModel):
    """Thresholds of the offline approximation of the five criteria (vidprior.unic.offline_judge)."""

    min_object_area: float = Field(0.10, ge=0, le=1)  # criterion 1, the paper's 10%
    min_consistency: float = Field(0.5, ge=-1, le=1)  # criterion 3
    min_motion_px: float = Field(0.5, ge=0)  # criterion 4
    min_residual_px: float = Field(0.5, ge=0)  # criterion 5: object motion beyond the camera's


class JudgeParams(StrictModel):
    # "offline" is the embedded default (no endpoint needed); "llm" calls the vision-LLM endpoint.
    backend: Literal["offline", "llm"] = "offline"
    # Judge the SD image alone, not its video (the paper's Image-Priors ablation).
    image_only: bool = False
    frames: int = Field(4, ge=1)
    # The paper judges only the videos the flow rule kept; false judges every video.
    only_flow_passed: bool = True
    # Answers cached by (content hash, judge prompt version, model) outside the stage output, which
    # DVC deletes before a rerun; a rerun over the same videos then costs no endpoint calls.
    cache_dir: str = ".cache/vidprior/judge"
    endpoint: JudgeEndpointParams = JudgeEndpointParams()
    offline: OfflineJudgeParams = OfflineJudgeParams()


class ReviewParams(StrictModel):
    # Random positives exported for the manual check (the paper: 1,000 checked by experts).
    sample_size: int = Field(1000, ge=1)


class ClassifierParams(StrictModel):
    """Uni-C classifier (Sec. III-D): frozen SD U-Net encoder on z_t, average pooling, binary head."""

    # The text condition of the frozen encoder: the image's prompt, or the empty prompt.
    text_condition: Literal["prompt", "empty"] = "prompt"


class LauncherParams(StrictModel):
    """Where a training stage runs (`vidprior.kube`): inside its own step (`in_process`: the local run,
    DVC and kfp.local, exactly as `vidprior <domain> train`), or as a Kubeflow training job of `nodes` x
    `gpus_per_node` that the step creates, follows and waits for: a PyTorchJob (training-operator v1) or
    a TrainJob (Kubeflow Trainer v2). The job runs the stage's torchrun entry point on `images.train`
    and exchanges inputs and outputs with the step through `kubernetes.checkpoints_pvc`."""

    kind: Literal["in_process", "pytorchjob", "trainjob"] = "in_process"
    nodes: int = Field(1, ge=1, le=512)
    # torchrun --nproc-per-node and each node's `nvidia.com/gpu` limit; 0 runs one CPU process per
    # node (gloo) without GPU placement, to smoke-test a cluster.
    gpus_per_node: int = Field(1, ge=0, le=16)
    # null: the step's own namespace (its service account's), "default" outside a cluster.
    namespace: str | None = Field(None, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=63)
    # null: the namespace's default service account.
    service_account: str | None = Field(None, min_length=1)
    # Requests and limits of each node besides its GPUs; null leaves them to the namespace defaults.
    cpu_per_node: str | None = Field(None, pattern=r"^[0-9]+(\.[0-9]+)?m?$")
    memory_per_node: str | None = Field(None, pattern=r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|K|M|G|T)?$")
    # The job's deadline (activeDeadlineSeconds, so the cluster frees its GPUs even when nobody waits)
    # and how long the step waits for it; the step polls status and logs every `poll_s`.
    timeout_s: float = Field(7 * 24 * 3600.0, gt=0)
    poll_s: float = Field(10.0, gt=0)
    # Each job's inputs, params and outputs, relative to `kubernetes.checkpoints_pvc.mount_path`.
    work_dir: str = Field("vidprior-jobs", pattern=r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$")
    # TrainJob: the ClusterTrainingRuntime it instantiates.
    runtime: str = Field("torch-distributed", min_length=1)
    # A finished job and its pods (their logs) are deleted this long after it ends; null keeps them.
    ttl_s: int | None = Field(86_400, ge=0)
    # Lines of the master pod's log quoted when the job fails or times out.
    log_tail_lines: int = Field(50, ge=1)


class ClassifierTrainParams(StrictModel):
    steps: int = Field(20_000, ge=1)
    lr: float = Field(1e-5, gt=0)
    # DeepSpeed: ZeRO stage and precision ("auto": bf16 on GPU, fp32 on CPU).
    zero_stage: int = Field(0, ge=0, le=3)
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    micro_batch: int = Field(8, ge=1)
    grad_accum: int = Field(1, ge=1)
    checkpoint_every: int = Field(1000, ge=1)
    eval_every: int = Field(1000, ge=1)
    # Share of labelled images held out (by prompt, so one prompt's images never straddle the split).
    eval_fraction: float = Field(0.1, gt=0, lt=1)
    # Held-out accuracy and AUC are reported per bucket of diffusion timesteps.
    timestep_buckets: int = Field(4, ge=1, le=1000)
    launcher: LauncherParams = LauncherParams()


class SampleParams(StrictModel):
    """Stage `unic.sample`: guided generation with a trained classifier (Uni-C Sec. IV)."""

    # sd: SD images only; sd-svd / sd-pia: guided SD images animated by SVD / PIA; animatediff: T2V.
    workflow: Literal["sd", "sd-svd", "sd-pia", "animatediff"] = "sd-svd"
    # Prompts taken (in manifest order) from the prompts input; one sample per prompt.
    max_prompts: int = Field(8, ge=1)
    # Guidance strength; null takes the workflow's task from `unic.lambdas` (sd and sd-svd: sd_svd).
    lambda_: float | None = Field(None, ge=0)
    # Also sample without guidance (same seeds), so every run reports guided vs unguided.
    with_baseline: bool = True


# Per-video metric names of `vidprior.evaluate` (fvd and depth_* are set metrics), from their one list.
VideoMetric = Literal[PER_VIDEO_METRICS]


def _distinct(name: str, values: list) -> None:
    if len(set(values)) != len(values):
        raise ValueError(f"'{name}' lists a value twice: {values}")


class UnicEvaluateParams(StrictModel):
    """Stage `unic.evaluate`: each workflow guided and unguided on the same prompts and seeds (Table I)."""

    workflows: list[Literal["sd-svd", "sd-pia", "animatediff"]] = Field(
        default_factory=lambda: ["sd-svd", "sd-pia"], min_length=1
    )
    # The first prompts of the prompts input (manifest order); each is sampled per workflow and variant.
    max_prompts: int = Field(4, ge=1)
    metrics: list[VideoMetric] = Field(
        default_factory=lambda: ["dynamic_degree", "aesthetic_quality", "imaging_quality"], min_length=1
    )
    # Videos per checkpointed batch of a resumable run.
    batch_size: int = Field(8, ge=1)
    # Generation size, steps and frames of the evaluation; null keeps unic.images / unic.videos (the
    # paper profile), so the evaluated videos are the ones `unic.sample` makes. The tiny run goes smaller.
    height: int | None = Field(None, ge=8)
    width: int | None = Field(None, ge=8)
    image_steps: int | None = Field(None, ge=1)
    video_steps: int | None = Field(None, ge=1)
    frames: int | None = Field(None, ge=2)

    @model_validator(mode="after")
    def _no_repeats(self) -> UnicEvaluateParams:
        _distinct("workflows", self.workflows)
        _distinct("metrics", self.metrics)
        return self


class GuidanceParams(StrictModel):
    """Where in the sampling trajectory the classifier guides (fractions of the steps, start < end)."""

    start: float = Field(0.0, ge=0, le=1)
    end: float = Field(1.0, ge=0, le=1)

    @model_validator(mode="after")
    def _ordered(self) -> GuidanceParams:
        if self.end <= self.start:
            raise ValueError("'end' must be > 'start'")
        return self


class GuidanceLambdas(StrictModel):
    """Guidance strength per task (Uni-C Suppl. Table III)."""

    sd_svd: float = 8.0
    sd_pia: float = 8.0
    animatediff: float = 2.0
    lavie: float = 1.0
    sd_sv3d: float = 6.0
    sd_imagedream: float = 6.0
    mvdream: float = 8.0


class UnicParams(StrictModel):
    prompts: PromptsParams
    # Shards the generation stages (images, videos) are split into on Kubeflow (`dsl.ParallelFor`).
    shards: int = Field(1, ge=1, le=1024)
    images: GenerateImagesParams = GenerateImagesParams()
    videos: GenerateVideosParams = GenerateVideosParams()
    flow: FlowParams = FlowParams()
    flow_rule: FlowRuleParams = FlowRuleParams()
    judge: JudgeParams = JudgeParams()
    review: ReviewParams = ReviewParams()
    classifier: ClassifierParams = ClassifierParams()
    train: ClassifierTrainParams = ClassifierTrainParams()
    guidance: GuidanceParams = GuidanceParams()
    sample: SampleParams = SampleParams()
    evaluate: UnicEvaluateParams = UnicEvaluateParams()
    lambdas: GuidanceLambdas = GuidanceLambdas()


class SyntheticDenseParams(StrictModel):
    """Stage `udpdiff.synthetic`: Panda-70M-shaped source of moving textured shapes whose entity masks
    and depth are known exactly (feeds the local run and the tests)."""

    videos: int = Field(6, ge=1)
    clips_per_video: int = Field(2, ge=1)
    frames: int = Field(17, ge=2)
    height: int = Field(64, ge=16)
    width: int = Field(64, ge=16)
    fps: int = Field(8, ge=1)
    max_entities: int = Field(3, ge=1, le=32)


class PandaParams(StrictModel):
    """Stage `udpdiff.clips`: Panda-70M CSV over local clips, quality/motion filter, normalised clips."""

    # Where the Kubeflow pipeline imports the source directory (CSV + clips) from, e.g. an object-store
    # URI; null generates the synthetic source (`udpdiff.synthetic`) instead. DVC reads data/udpdiff/source.
    source_uri: str | None = None
    # Both relative to the source directory (or absolute).
    csv: str = "panda70m.csv"
    clips_dir: str = "clips"
    # Keep at most this many clips (CSV order) after expansion; null keeps all.
    max_clips: int | None = Field(None, ge=1)
    min_matching_score: float = Field(0.0)
    # Every kept clip is re-timed and resized to this (CogVideoX: 49 frames at 480x720, 8 fps).
    frames: int = Field(49, ge=2)
    height: int = Field(480, ge=16)
    width: int = Field(720, ge=16)
    fps: int = Field(8, ge=1)
    # Quality: source resolution floor and sharpness (variance of the Laplacian, mean over frames).
    min_source_height: int = Field(0, ge=0)
    min_source_width: int = Field(0, ge=0)
    min_sharpness: float = Field(0.0, ge=0)
    # Motion score: mean flow magnitude (px at the flow analysis size) must lie in [min, max].
    flow: FlowParams = FlowParams()
    min_motion: float = Field(0.5, ge=0)
    max_motion: float = Field(40.0, gt=0)


class CaptionParams(StrictModel):
    """Stage `udpdiff.captions`: the long caption; Panda-70M's short caption is always kept.

    "panda" keeps the short caption as the long one (no re-captioning, recorded as such);
    "video_llava" runs `models.video_llava` through transformers; "endpoint" asks a served model.
    """

    backend: Literal["panda", "video_llava", "endpoint"] = "panda"
    # Frames shown to the captioner, sampled at regular intervals from first to last (Video-LLaVA: 8).
    frames: int = Field(8, ge=1)
    # What the captioner is asked; part of the endpoint cache key, so a changed text asks again.
    instruction: str = Field(
        "Describe this video in detail: the main objects and what they look like, what they do and "
        "how they move, the background, and how the camera moves.",
        min_length=1,
    )
    # Video-LLaVA's generation budget (greedy); the endpoint uses `endpoint.max_tokens`.
    max_new_tokens: int = Field(120, ge=1)
    # Clips captioned and checkpointed together (one `generate` call for Video-LLaVA).
    batch_size: int = Field(8, ge=1)
    endpoint: ChatEndpointParams = ChatEndpointParams()
    # Endpoint answers, keyed by (clip sha256, model, instruction, frame count), outside the stage
    # output that DVC deletes before a rerun; a rerun over the same clips then costs no calls.
    cache_dir: str = ".cache/vidprior/captions"


class ClassicalSegmentParams(StrictModel):
    """The weight-free `udpdiff.segment` baseline (see `vidprior.udpdiff.segment`); colours are
    measured in the chroma plane of RGB (RGB units, luminance removed)."""

    # A colour mode this far (or farther) from the background's colour is an entity colour.
    min_chroma: float = Field(40.0, gt=0)
    # Mean-shift radius of a colour mode; modes closer than this are one colour, and a mode within
    # this of the segment between two other colours is their blend (an edge), not a colour.
    colour_radius: float = Field(16.0, gt=0)
    # Pixels whose 3x3 neighbourhood spans at most this chroma range are "flat" (region interiors):
    # only they seed colours, the others are edges resolved as blends of neighbouring colours.
    flat_range: float = Field(16.0, gt=0)
    # A colour needs at least this share of the frame in flat pixels.
    min_colour_area: float = Field(0.002, gt=0, le=1)
    # A region of an entity's colour joins that entity only within this share of the frame diagonal
    # of where the flow put it; farther it is something new, and background.
    snap_radius: float = Field(0.05, ge=0, le=1)


class SegmentParams(StrictModel):
    """Stage `udpdiff.segment`: first-frame entities propagated through the clip, then cleaned.

    "models": `models.entity_segmenter` (panoptic) on frame 0, `models.sam2` propagation;
    "classical": colour clustering on frame 0, optical-flow label warping (no weights; a baseline
    for the synthetic source, which the tiny profile uses, and simple footage).
    """

    backend: Literal["models", "classical"] = "models"
    # Holes (background pockets inside one entity) up to this share of the frame are filled.
    max_hole_area: float = Field(0.002, ge=0, le=1)
    # Entity regions (connected components) smaller than this share of the frame become background.
    min_region_area: float = Field(0.001, ge=0, le=1)
    # The largest this many first-frame entities (by area) are kept.
    max_entities: int = Field(64, ge=1, le=4096)
    # Panoptic score threshold of the first-frame segmenter.
    score_threshold: float = Field(0.5, ge=0, le=1)
    # Optical flow of the classical backend's label warping.
    flow: FlowParams = FlowParams()
    classical: ClassicalSegmentParams = ClassicalSegmentParams()


class ParallaxParams(StrictModel):
    """The "parallax" depth backend: a multi-frame search of each pixel's image speed along the camera's
    motion direction (see vidprior.udpdiff.depth); sizes in pixels at `depth.flow`'s analysis size."""

    speeds: int = Field(48, ge=4)  # candidate speeds, evenly spaced up to 1.5x the 99th-percentile flow
    neighbours: int = Field(8, ge=1)  # frames matched on each side of a frame (occlusion: the better side)
    truncation: float = Field(20.0, gt=0)  # per-pixel matching cost cap (|luma difference|, 0..255)
    support_radius: int = Field(3, ge=0)  # colour-adaptive aggregation window: (2r + 1)^2 pixels
    colour_sigma: float = Field(20.0, gt=0)  # support weight exp(-|colour diff| / this - distance / ...)
    distance_sigma: float = Field(3.0, gt=0)


class DepthParams(StrictModel):
    """Stage `udpdiff.depth`. The paper uses DepthCrafter (a video diffusion depth model, not in
    transformers; registers as another estimator); "depth_anything" is its per-frame baseline (Depth
    Anything V2, `models.depth_anything`); "parallax" is image speed under a translating camera (no
    weights; recovers the depth order of the synthetic source, which the tiny profile uses)."""

    backend: Literal["depth_anything", "parallax"] = "depth_anything"
    batch_frames: int = Field(8, ge=1)  # frames per Depth Anything forward pass
    # Each frame's disparity is scale/shift aligned (least squares) to the mean of its already aligned
    # predecessors in the window, then reduced over a centred window of this many frames; 1 = off.
    temporal_window: int = Field(1, ge=1)
    temporal_reduce: Literal["median", "mean"] = "median"
    # Per-clip normalisation to [0, 1] between these percentiles of the clip's values (clipped beyond).
    low_percentile: float = Field(1.0, ge=0.0, lt=50.0)
    high_percentile: float = Field(99.0, gt=50.0, le=100.0)
    # flat_depth when high - low <= flat_epsilon * max(|low|, |high|): relative, as estimates are up to scale.
    flat_epsilon: float = Field(1e-3, gt=0.0, lt=1.0)
    flow: FlowParams = FlowParams()
    parallax: ParallaxParams = ParallaxParams()


class UDPDiffModelParams(StrictModel):
    """The 32-channel CogVideoX (Sec. 3.3-3.4) built on `models.cogvideox`."""

    # New input/output channels: copies of the pretrained 16 (the paper) or random (its ablation).
    dense_init: Literal["duplicate", "random"] = "duplicate"


class UDPDiffEncodeParams(StrictModel):
    """Stage `udpdiff.encode`: VAE latents of clip + both Pixelplanes and T5 embeddings, computed once."""

    # T5 tokens per caption, padded or truncated as `CogVideoXPipeline.encode_prompt` does (226 for
    # CogVideoX; a 2B-style sin-cos model needs exactly its `max_text_seq_length`).
    max_text_tokens: int = Field(226, ge=8)
    # Clips encoded and checkpointed together.
    batch_size: int = Field(8, ge=1)
    # Stored latents/embeddings; bfloat16 halves the ~20 MB per 49x480x720 clip of float32.
    storage_dtype: Literal["float32", "bfloat16"] = "float32"


class UDPDiffTrainParams(StrictModel):
    """Stage `udpdiff.train`: full fine-tune of the UDPDiff transformer under DeepSpeed (Sec. 3.4)."""

    steps: int = Field(40_000, ge=1)
    lr: float = Field(1e-5, gt=0)
    zero_stage: int = Field(2, ge=0, le=3)
    # ZeRO-Offload of optimizer states (ZeRO >= 1) and, with ZeRO-3 only, parameters to CPU memory.
    offload_optimizer: bool = False
    offload_params: bool = False
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    micro_batch: int = Field(1, ge=1)
    grad_accum: int = Field(1, ge=1)
    gradient_checkpointing: bool = True
    # Tasks drawn 50/50 (segmentation, depth); the long caption with probability 0.8.
    segmentation_probability: float = Field(0.5, ge=0, le=1)
    long_caption_probability: float = Field(0.8, ge=0, le=1)
    checkpoint_every: int = Field(1000, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    launcher: LauncherParams = LauncherParams()

    @model_validator(mode="after")
    def _offload_fits_stage(self) -> UDPDiffTrainParams:
        if self.offload_params and self.zero_stage != 3:
            raise ValueError("'offload_params' needs 'zero_stage: 3' (only ZeRO-3 partitions parameters)")
        if self.offload_optimizer and self.zero_stage == 0:
            raise ValueError("'offload_optimizer' needs 'zero_stage' >= 1 (ZeRO-Offload)")
        return self


class UDPDiffSampleParams(StrictModel):
    """Stage `udpdiff.sample`: text + task id -> video and its dense map."""

    # "auto": DPM++ (CogVideoXDPMScheduler) for 5B, DDIM for 2B, as the paper.
    scheduler: Literal["auto", "dpm++", "ddim"] = "auto"
    steps: int = Field(50, ge=1)
    frames: int = Field(49, ge=1)
    height: int = Field(480, ge=8)
    width: int = Field(720, ge=8)
    fps: int = Field(8, ge=1)
    guidance_scale: float = Field(6.0, ge=0)
    # Captions (long) of the dataset's first `max_prompts` clips are the prompts.
    max_prompts: int = Field(4, ge=1)
    tasks: list[Literal["segmentation", "depth"]] = Field(
        default_factory=lambda: ["segmentation", "depth"], min_length=1
    )
    # Samples per pipeline call, and per checkpoint of a resumable run.
    batch_size: int = Field(1, ge=1)
    # Generated segmentation: an entity colour must gather this share of the clip's pixels.
    min_entity_fraction: float = Field(1e-3, gt=0, lt=1)
    # Generated depth: `pixelplanes.decode_depth`'s denoising ("median": 3x3 per frame).
    depth_denoise: Literal["none", "median"] = "none"

    @model_validator(mode="after")
    def _distinct_tasks(self) -> UDPDiffSampleParams:
        if len(set(self.tasks)) != len(self.tasks):
            raise ValueError(f"'tasks' lists a task twice: {self.tasks}")
        return self


class UDPDiffEvaluateParams(StrictModel):
    """Stage `udpdiff.evaluate`: the base CogVideoX vs UDPDiff on the samples' prompts and seeds."""

    metrics: list[VideoMetric] = Field(
        default_factory=lambda: ["subject_consistency", "background_consistency", "motion_smoothness"],
        min_length=1,
    )
    # FVD of each set (CogVideoX, UDPDiff per task) against the dataset's clips.
    fvd: bool = True
    # The reference set of FVD: the dataset's first clips by id (all of them when fewer).
    max_reference_clips: int = Field(1024, ge=1)
    # Base-model videos per pipeline call, and per checkpoint of a resumable run.
    batch_size: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _no_repeats(self) -> UDPDiffEvaluateParams:
        _distinct("metrics", self.metrics)
        return self


class UDPDiffParams(StrictModel):
    synthetic: SyntheticDenseParams = SyntheticDenseParams()
    panda: PandaParams = PandaParams()
    captions: CaptionParams = CaptionParams()
    segment: SegmentParams = SegmentParams()
    depth: DepthParams = DepthParams()
    model: UDPDiffModelParams = UDPDiffModelParams()
    encode: UDPDiffEncodeParams = UDPDiffEncodeParams()
    train: UDPDiffTrainParams = UDPDiffTrainParams()
    sample: UDPDiffSampleParams = UDPDiffSampleParams()
    evaluate: UDPDiffEvaluateParams = UDPDiffEvaluateParams()


class PvcParams(StrictModel):
    """A PersistentVolumeClaim mounted into tasks; `create: true` makes the pipeline create it first
    (kfp-kubernetes `CreatePVC`), otherwise it must already exist in the run's namespace."""

    name: str = Field(min_length=1, max_length=253, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    mount_path: str = Field(pattern=r"^/")
    create: bool = False
    # Only read when `create` is true.
    size: str = Field("1Ti", pattern=r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|K|M|G|T|P)?$")
    access_modes: list[Literal["ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany", "ReadWriteOncePod"]] = Field(
        default_factory=lambda: ["ReadWriteMany"], min_length=1
    )
    # Required with `create`: kfp's CreatePVC sends "" for an unnamed class, which Kubernetes reads as
    # "no class" (bind a pre-made volume), not as the cluster's default StorageClass.
    storage_class: str | None = None

    @model_validator(mode="after")
    def _created_needs_class(self) -> PvcParams:
        if self.create and not self.storage_class:
            raise ValueError("'create: true' needs 'storage_class' (the StorageClass that provisions it)")
        return self


class SecretEnvParams(StrictModel):
    """A Kubernetes secret whose data keys become environment variables of a task (key -> env var)."""

    name: str = Field(min_length=1, max_length=253, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    env: dict[str, str] = Field(min_length=1)
    # false: a pod whose secret is missing does not start (the run fails at once, naming the secret).
    optional: bool = False


class MlflowSecretParams(SecretEnvParams):
    """The MLflow tracking server's login and the artifact store's S3 keys (every task)."""

    name: str = Field("vidprior-mlflow", min_length=1, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    env: dict[str, str] = Field(
        default_factory=lambda: {
            "username": "MLFLOW_TRACKING_USERNAME",
            "password": "MLFLOW_TRACKING_PASSWORD",
            "aws-access-key-id": "AWS_ACCESS_KEY_ID",
            "aws-secret-access-key": "AWS_SECRET_ACCESS_KEY",
        },
        min_length=1,
    )


class EndpointSecretParams(StrictModel):
    """The secret holding the OpenAI-compatible endpoints' API key. The env var it is exposed as is
    not set here: each client task gets the `api_key_env` of the endpoint it calls (judge, captioner,
    prompt LLM filter), so the two can never disagree."""

    name: str = Field("vidprior-llm-endpoint", min_length=1, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    key: str = Field("api-key", min_length=1)
    # true: a client task also starts without it (a keyless local vLLM, or an offline judge chosen at
    # submission); the client then names the unset variable if the endpoint asks for a key.
    optional: bool = True


class TolerationParams(StrictModel):
    key: str = "nvidia.com/gpu"
    operator: Literal["Exists", "Equal"] = "Exists"
    value: str | None = None  # only with operator Equal
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = "NoSchedule"

    @model_validator(mode="after")
    def _value_needs_equal(self) -> TolerationParams:
        if self.operator == "Exists" and self.value is not None:
            raise ValueError("'value' must be null with operator 'Exists' (Exists matches any value)")
        return self


class KubernetesParams(StrictModel):
    """Cluster placement of the KFP tasks (kfp-kubernetes platform config, see pipelines.tracked)."""

    # null follows the profile: on for "paper", off for "tiny" (kfp.local runs the tiny pipelines).
    enabled: bool | None = None
    # GPU tasks run on nodes whose label `gpu_product_key` is one of `gpu_products` (GPU feature
    # discovery's label): one product compiles to a node selector, several to a node affinity `In`.
    gpu_product_key: str = "nvidia.com/gpu.product"
    gpu_products: list[str] = Field(
        default_factory=lambda: ["NVIDIA-A100-SXM4-80GB", "NVIDIA-H100-80GB-HBM3"], min_length=1
    )
    gpu_tolerations: list[TolerationParams] = Field(default_factory=lambda: [TolerationParams()])
    gpus_per_task: int = Field(1, ge=1, le=16)
    # /dev/shm of GPU tasks: a memory-backed emptyDir (the container default of 64 MiB starves NCCL
    # and DataLoader workers).
    shm_size: str | None = Field("32Gi", pattern=r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|K|M|G|T)?$")
    # Datasets (VidProM, Panda-70M clips, the Hugging Face cache): every task. Checkpoints: GPU tasks.
    datasets_pvc: PvcParams = PvcParams(name="vidprior-datasets", mount_path="/mnt/datasets")
    checkpoints_pvc: PvcParams = PvcParams(name="vidprior-checkpoints", mount_path="/mnt/checkpoints")
    mlflow_secret: MlflowSecretParams = MlflowSecretParams()
    endpoint_secret: EndpointSecretParams = EndpointSecretParams()
    # HF_HOME of every task: pretrained weights are downloaded once to the datasets volume, not per pod.
    hf_home: str | None = Field("/mnt/datasets/huggingface", pattern=r"^/")

    def applies(self, profile: str) -> bool:
        """Whether tasks get cluster placement: `enabled`, or when null, the paper profile."""
        return self.enabled if self.enabled is not None else profile == "paper"


class DynamicDegreeParams(StrictModel):
    """VBench Dynamic Degree (vidprior.evaluate.dynamic_degree); defaults are VBench's."""

    # Every round(fps / target_fps)-th frame is kept, so every video is judged at about this rate.
    target_fps: float = Field(8.0, gt=0)
    # Per frame pair: the mean of the largest `top_fraction` of flow magnitudes.
    top_fraction: float = Field(0.05, gt=0, le=1)
    # A pair moves when that mean exceeds threshold_px * min(H, W) / reference_side (px at the video's size).
    threshold_px: float = Field(6.0, gt=0)
    reference_side: int = Field(256, ge=1)
    # A video is dynamic when at least round(moving_pairs_per_16_frames * frames / 16) pairs move.
    moving_pairs_per_16_frames: float = Field(4.0, gt=0)
    # VBench uses RAFT; any vidprior.flow backend plugs in (a registered RAFT too).
    flow_backend: str = "dis"


class MotionSmoothnessParams(StrictModel):
    """VBench Motion Smoothness (vidprior.evaluate.motion_smoothness). VBench interpolates with AMT-S;
    "flow_midpoint" is its stand-in here: bidirectional optical flow, both neighbours warped to the
    midpoint and blended."""

    interpolator: Literal["flow_midpoint"] = "flow_midpoint"
    flow_backend: str = "dis"


class ImagingQualityParams(StrictModel):
    # VBench's "longer" preprocessing: frames whose long side exceeds this are shrunk to it for MUSIQ.
    max_side: int = Field(512, ge=16)


class FVDParams(StrictModel):
    # Frames sampled evenly over each video for the video backbone; null: the backbone's own count (16).
    frames: int | None = Field(None, ge=1)
    # Added to both covariance diagonals: a set smaller than the feature width has a singular covariance.
    eps: float = Field(1e-6, ge=0)


class EvaluateParams(StrictModel):
    """Metrics of vidprior.evaluate (SPEC "Evaluation metrics"); the paper profile names VBench's models."""

    # Aesthetic Quality: CLIP ViT-L/14 image tower + the LAION linear head (sa_0_4_vit_l_14_linear,
    # a file: local path, or <hub repo id>/<file>).
    aesthetic_clip: ModelSpec = ModelSpec(tiny=TinySpec(seed=0))
    aesthetic_head: ModelSpec = ModelSpec(tiny=TinySpec(seed=0))
    # Imaging Quality: MUSIQ weights in pyiqa's layout (a file: local path, or <hub repo id>/<file>).
    musiq: ModelSpec = ModelSpec(tiny=TinySpec(seed=0))
    # Subject Consistency: DINO ViT-B/16 (facebook/dino-vitb16).
    dino: ModelSpec = ModelSpec(tiny=TinySpec(seed=0))
    # Background Consistency and CLIP score: CLIP ViT-B/32 (openai/clip-vit-base-patch32).
    clip: ModelSpec = ModelSpec(tiny=TinySpec(seed=0))
    # FVD's video features: VideoMAE (MCG-NJU/videomae-base-finetuned-kinetics).
    videomae: ModelSpec = ModelSpec(tiny=TinySpec(seed=1))
    # Frames per forward pass of the image backbones.
    batch_frames: int = Field(16, ge=1)
    dynamic_degree: DynamicDegreeParams = DynamicDegreeParams()
    motion_smoothness: MotionSmoothnessParams = MotionSmoothnessParams()
    imaging_quality: ImagingQualityParams = ImagingQualityParams()
    fvd: FVDParams = FVDParams()
    # Depth delta1/RMSE: "scale_shift" fits the prediction to the reference (least squares, per video)
    # first, the affine-invariant protocol of relative depth; "none" compares the values as they are.
    depth_align: Literal["none", "scale_shift"] = "scale_shift"


class Params(StrictModel):
    profile: Literal["tiny", "paper"]
    seed: int = Field(0, ge=0)
    tracking: TrackingParams = TrackingParams()
    registry: RegistryParams = RegistryParams()
    images: ImagesParams = ImagesParams()
    kubernetes: KubernetesParams = KubernetesParams()
    models: ModelsParams
    unic: UnicParams
    udpdiff: UDPDiffParams = UDPDiffParams()
    evaluate: EvaluateParams = EvaluateParams()

    def section(self, dotted: str) -> Any:
        node: Any = self
        for part in dotted.split("."):
            node = getattr(node, part)
        return node

    def digest(self) -> str:
        """Short content hash of the resolved params, for lineage tags."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- loading


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ParamsError(f"{path}: params file not found") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def _merge(base: dict, overlay: dict, origin: dict[tuple, str], source: str, prefix: tuple = ()) -> dict:
    """Deep-merge `overlay` into `base`; remember which file each key came from."""
    merged = dict(base)
    for key, value in overlay.items():
        path = (*prefix, key)
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value, origin, source, path)
        else:
            merged[key] = value
            for known in [p for p in origin if p[: len(path)] == path]:
                del origin[known]
        origin[path] = source
    return merged


def _file_for(loc: tuple, origin: dict[tuple, str], files: Sequence[str]) -> str:
    for n in range(len(loc), 0, -1):
        if loc[:n] in origin:
            return origin[loc[:n]]
    return " + ".join(files)


def _allowed_keys(loc: tuple) -> list[str] | None:
    """Field names of the model that owns the last element of `loc`, for 'unknown key' errors."""
    model: Any = Params
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part) if isinstance(model, type) else None
        if field is None:
            return None
        model = _model_in(field.annotation)
        if model is None:
            return None
    return sorted(model.model_fields)


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _describe(error: dict, origin: dict[tuple, str], files: Sequence[str]) -> str:
    loc = tuple(error["loc"])
    key = ".".join(str(p) for p in loc) or "<top level>"
    where = _file_for(loc, origin, files)
    if error["type"] == "extra_forbidden":
        allowed = _allowed_keys(loc)
        hint = f" (expected one of: {', '.join(allowed)})" if allowed else ""
        return f"{where}: unknown key '{key}'{hint}"
    if error["type"] == "missing":
        return f"{where}: missing required key '{key}'"
    got = error.get("input")
    return f"{where}: key '{key}': {error['msg']}; got {got!r} ({type(got).__name__})"


def load_params(paths: Iterable[Path | str] = (DEFAULT_PARAMS,)) -> Params:
    """Load and validate params files, later files overriding earlier ones key by key."""
    files = [str(p) for p in paths]
    if not files:
        raise ParamsError("no params file given")
    merged: dict[str, Any] = {}
    origin: dict[tuple, str] = {}
    for name in files:
        merged = _merge(merged, _read_yaml(Path(name)), origin, name)
    return params_from_dict(merged, origin=origin, files=files)


def params_from_dict(
    data: dict[str, Any], *, origin: dict[tuple, str] | None = None, files: Sequence[str] = ("<params>",)
) -> Params:
    try:
        return Params.model_validate(data)
    except ValidationError as exc:
        lines = [_describe(e, origin or {}, files) for e in exc.errors()]
        raise ParamsError("invalid params:\n  " + "\n  ".join(lines)) from None


def params_to_yaml(params: Params) -> str:
    return yaml.safe_dump(params.model_dump(mode="json"), sort_keys=False)


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted-key view of nested params, for MLflow's flat param namespace."""
    if isinstance(data, BaseModel):
        data = data.model_dump(mode="json")
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): data}
