"""`vidprior <domain> <stage>` and the ops commands around them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import typer

from vidprior.config import DEFAULT_PARAMS, Params, ParamsError, load_params, params_to_yaml
from vidprior.stages import STAGES

app = typer.Typer(
    help="Uni-C and UDPDiff as reproducible pipelines.",
    epilog="Stages: " + ", ".join(f"vidprior {name.replace('.', ' ')}" for name in STAGES),
    no_args_is_help=True,
)
unic_app = typer.Typer(
    help="Uni-C: video-prior labels and a plug-and-play guidance classifier.", no_args_is_help=True
)
udpdiff_app = typer.Typer(
    help="UDPDiff: Panda-Dense data and CogVideoX generating video with segmentation or depth.",
    no_args_is_help=True,
)
params_app = typer.Typer(help="Inspect and check params files.", no_args_is_help=True)
io_app = typer.Typer(help="Manifest utilities (shard merge).", no_args_is_help=True)
pipelines_app = typer.Typer(help="Kubeflow pipelines: compile, submit, schedule.", no_args_is_help=True)
local_app = typer.Typer(help="The local pipeline (DVC) under one MLflow parent run.", no_args_is_help=True)
registry_app = typer.Typer(help="MLflow model registry: champion/challenger promotion.", no_args_is_help=True)
app.add_typer(unic_app, name="unic")
app.add_typer(udpdiff_app, name="udpdiff")
app.add_typer(params_app, name="params")
app.add_typer(io_app, name="io")
app.add_typer(pipelines_app, name="pipelines")
app.add_typer(local_app, name="local")
app.add_typer(registry_app, name="registry")

ParamsOption = typer.Option(
    [DEFAULT_PARAMS], "--params", "-p", help="Params file; repeat to overlay (e.g. params/paper.yaml)."
)


def _load(paths: list[Path]) -> Params:
    try:
        return load_params(paths)
    except ParamsError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None


def _execute(
    stage: str,
    params_files: list[Path],
    inputs,
    output: Path,
    metrics: Path | None,
    track: bool,
    shard: str | None = None,
):
    from vidprior.io.shards import Shard
    from vidprior.stages import execute

    params = _load(params_files)
    try:
        parsed_shard = Shard.parse(shard) if shard else None
        result = execute(
            stage, params, inputs or None, output, shard=parsed_shard, metrics_path=metrics, track=track
        )
    except (ValueError, RuntimeError, OSError) as exc:
        typer.echo(f"{stage}: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(json.dumps(result, indent=2, sort_keys=True))


@unic_app.command("prompts")
def unic_prompts(
    params: list[Path] = ParamsOption,
    input: list[str] = typer.Option(
        [], "--input", "-i", help="VidProM parquet/CSV ('builtin' = shipped file); default: params sources."
    ),
    output: Path = typer.Option(..., "--output", "-o", help="Output directory (manifest + rejects)."),
    metrics: Path | None = typer.Option(None, help="Write the stage metrics as JSON here."),
    track: bool = typer.Option(True, help="Log the stage as an MLflow run."),
):
    """Collect, filter and de-duplicate prompts (Uni-C data, step 1)."""
    _execute("unic.prompts", params, input, output, metrics, track)


OutputOption = typer.Option(..., "--output", "-o", help="Output directory (manifest + rejects + media).")
MetricsOption = typer.Option(None, help="Write the stage metrics as JSON here.")
TrackOption = typer.Option(True, help="Log the stage as an MLflow run.")
ShardOption = typer.Option(
    None, "--shard", help="Process only shard i of n ('i/n'); merge with `io merge-shards`."
)


def _dir(help_text: str):
    return typer.Option(..., exists=True, file_okay=False, help=help_text)


@unic_app.command("images")
def unic_images(
    prompts: Path = _dir("Output of `unic prompts`."),
    output: Path = OutputOption,
    shard: str | None = ShardOption,
    params: list[Path] = ParamsOption,
    metrics: Path | None = MetricsOption,
    track: bool = TrackOption,
):
    """Stable Diffusion images, `unic.images.per_prompt` per prompt, one recorded seed each."""
    _execute("unic.images", params, [prompts], output, metrics, track, shard)


@unic_app.command("videos")
def unic_videos(
    images: Path = _dir("Output of `unic images`."),
    output: Path = OutputOption,
    shard: str | None = ShardOption,
    params: list[Path] = ParamsOption,
    metrics: Path | None = MetricsOption,
    track: bool = TrackOption,
):
    """Image-to-video (SVD, or PIA with `unic.videos.model: pia`) for every image, as H.264 mp4."""
    _execute("unic.videos", params, [images], output, metrics, track, shard)


@unic_app.command("flow")
def unic_flow(
    videos: Path = _dir("Output of `unic videos`."),
    output: Path = OutputOption,
    params: list[Path] = ParamsOption,
    metrics: Path | None = MetricsOption,
    track: bool = TrackOption,
):
    """Optical-flow statistics per video and the paper's flow rule."""
    _execute("unic.flow", params, [videos], output, metrics, track)


@unic_app.command("judge")
def unic_judge(
    videos: Path | None = typer.Option(None, exists=True, file_okay=False, help="Output of `unic videos`."),
    flow: Path | None = typer.Option(None, exists=True, file_okay=False, help="Output of `unic flow`."),
    images: Path | None = typer.Option(
        None,
        exists=True,
        file_okay=False,
        help="Output of `unic images` (image-only mode, instead of videos).",
    ),
    output: Path = OutputOption,
    params: list[Path] = ParamsOption,
    metrics: Path | None = MetricsOption,
    track: bool = TrackOption,
):
    """The five criteria (vision-LLM endpoint, or the offline judge) for videos the flow rule kept."""
    if images is not None and (videos is not None or flow is not None):
        typer.echo("unic.judge: give --images (image-only mode) or --videos and --flow, not both", err=True)
        raise typer.Exit(2)
    _execute("unic.judge", params, [images] if images else [videos, flow], output, metrics, track)


@unic_app.command("labels")
def unic_labels(
    images: Path = _dir("Output of `unic images`."),
    judge: Path = _dir("Output of `unic judge`."),
    videos: Path | None = typer.Option(None, exists=True, file_okay=False, help="Output of `unic videos`."),
    flow: Path | None = typer.Option(None, exists=True, file_okay=False, help="Output of `unic flow`."),
    output: Path = OutputOption,
    params: list[Path] = ParamsOption,
    metrics: Path | None = MetricsOption,
    track: bool = TrackOption,
):
    """The training table: one label per image, decided by the flow rule or the judge."""
    inputs = [images, judge] if videos is None and flow is None else [images, videos, flow, judge]
    _execute("unic.labels", params, inputs, output, metrics, track)


@unic_app.command("validate")
def unic_validate(
    images: Path = _dir("Output of `unic images`."),
    videos: Path = _dir("Output of `unic videos`."),
    flow: Path = _dir("Output of `unic flow`."),
    labels: Path = _dir("Output of `unic labels`."),
    output: Path = OutputOption,
    params: list[Path] = ParamsOption,
    metrics: Path | None = MetricsOption,
    track: bool = TrackOption,
):
    """Great Expectations suites on the flow statistics and the labels; exit 1 if one fails."""
    _execute("unic.validate", params, [images, videos, flow, labels], output, metrics, track)


@unic_app.command("review")
def unic_review(
    labels: Path = _dir("Output of `unic labels`."),
    images: Path = _dir("Output of `unic images`."),
    videos: Path | None = typer.Option(None, exists=True, file_okay=False, help="Output of `unic videos`."),
    output: Path = OutputOption,
    params: list[Path] = ParamsOption,
    metrics: Path | None = MetricsOption,
    track: bool = TrackOption,
):
    """An HTML page of random positives (frame strips + verdicts) for the manual check."""
    _execute("unic.review", params, [labels, images] + ([videos] if videos else []), output, metrics, track)


@unic_app.command("train")
def unic_train(
    labels: Path = _dir("Output of `unic labels`."),
    images: Path = _dir("Output of `unic images`."),
    output: Path = OutputOption,
    params: list[Path] = ParamsOption,
    metrics: Path | None = MetricsOption,
    track: bool = TrackOption,
):
    """Train the Uni-C classifier head with DeepSpeed (one process; for several ranks run
    `torchrun --nproc_per_node N -m vidprior.unic.train LABELS IMAGES --output DIR`)."""
    _execute("unic.train", params, [labels, images], output, metrics, track)


@unic_app.command("sample")
def unic_sample(
    classifier: Path = _dir("Output of `unic train` (holds head.safetensors)."),
    output: Path = OutputOption,
    prompts: Path | None = typer.Option(
        None, exists=True, file_okay=False, help="A manifest dir with `id`, `prompt` (and optional `seed`)."
    ),
    prompt: list[str] = typer.Option(
        [], "--prompt", help="A prompt to sample (repeat); instead of --prompts."
    ),
    seed: list[int] = typer.Option(
        [], "--seed", help="The seed of each --prompt, in order (default: derived)."
    ),
    workflow: str | None = typer.Option(None, help="sd, sd-svd, sd-pia or animatediff (default: params)."),
    lambda_: float | None = typer.Option(
        None, "--lambda", help="Guidance strength (default: the task table)."
    ),
    params: list[Path] = ParamsOption,
    metrics: Path | None = MetricsOption,
    track: bool = TrackOption,
):
    """Guided sampling with the trained head (`unic.sample`), plus the same seeds unguided."""
    import tempfile

    import pandas as pd

    from vidprior.config import params_from_dict
    from vidprior.io.manifest import write_manifest

    if (prompts is None) == (not prompt):
        typer.echo("unic.sample: give --prompts DIR or one or more --prompt TEXT", err=True)
        raise typer.Exit(2)
    if seed and len(seed) != len(prompt):
        typer.echo(
            f"unic.sample: {len(seed)} --seed for {len(prompt)} --prompt; give one per prompt", err=True
        )
        raise typer.Exit(2)
    resolved = _load(params).model_dump(mode="json")
    overrides = {"workflow": workflow, "lambda_": lambda_}
    resolved["unic"]["sample"].update({k: v for k, v in overrides.items() if v is not None})
    if prompt:
        resolved["unic"]["sample"]["max_prompts"] = len(prompt)
    try:
        resolved_params = params_from_dict(resolved)
    except ParamsError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None
    with tempfile.TemporaryDirectory() as scratch:
        if prompt:
            table = pd.DataFrame({"id": [f"cli-{i}" for i in range(len(prompt))], "prompt": prompt})
            if seed:
                table["seed"] = seed
            prompts = write_manifest(table, Path(scratch)).parent
        params_file = Path(scratch) / "params.yaml"
        params_file.write_text(params_to_yaml(resolved_params))
        _execute("unic.sample", [params_file], [classifier, prompts], output, metrics, track)


@unic_app.command("register")
def unic_register(
    classifier: Path = _dir("Output of `unic train` (holds head.safetensors)."),
    output: Path = OutputOption,
    params: list[Path] = ParamsOption,
    metrics: Path | None = MetricsOption,
    track: bool = TrackOption,
):
    """Register the classifier as MLflow model `unic` (new version, alias `challenger`, lineage tags)."""
    _execute("unic.register", params, [classifier], output, metrics, track)


@unic_app.command("evaluate")
def unic_evaluate(
    classifier: Path = _dir("Output of `unic train` (holds head.safetensors)."),
    prompts: Path = _dir("Output of `unic prompts`; its first `unic.evaluate.max_prompts` are sampled."),
    registered: Path = _dir("Output of `unic register` (model.json): the version the results tag."),
    output: Path = OutputOption,
    params: list[Path] = ParamsOption,
    metrics: Path | None = MetricsOption,
    track: bool = TrackOption,
):
    """Uni-C Table I: each workflow guided and unguided on the same seeds, scored, tagged on the version."""
    _execute("unic.evaluate", params, [classifier, prompts, registered], output, metrics, track)


@unic_app.command("promote")
def unic_promote(
    evaluation: Path = _dir("Output of `unic evaluate` (holds evaluation.json: model and version)."),
    output: Path = OutputOption,
    params: list[Path] = ParamsOption,
    metrics: Path | None = MetricsOption,
    track: bool = TrackOption,
):
    """Alias `champion` to the evaluated version if it beats the champion (mlflow/policies/unic.yaml);
    a refusal is recorded in promotion.json (metric `promoted` = 0), not a failure."""
    _execute("unic.promote", params, [evaluation], output, metrics, track)


@udpdiff_app.command("synthetic")
def udpdiff_synthetic(
    output: Path = OutputOption,
    params: list[Path] = ParamsOption,
    metrics: Path | None = MetricsOption,
    track: bool = TrackOption,
):
    """A Panda-70M-shaped source (CSV + clips) of moving shapes with exact masks and depth."""
    _execute("udpdiff.synthetic", params, [], output, metrics, track)


@udpdiff_app.command("clips")
def udpdiff_clips(
    source: Path = _dir("Directory with the Panda-70M CSV and its clips (`udpdiff.panda.csv`, `clips_dir`)."),
    output: Path = OutputOption,
    params: list[Path] = ParamsOption,
    metrics: Path | None = MetricsOption,
    track: bool = TrackOption,
):
    """Read Panda-70M clips, filter by quality and motion, write normalised clips."""
    _execute("udpdiff.clips", params, [source], output, metrics, track)


@udpdiff_app.command("captions")
def udpdiff_captions(
    clips: Path = _dir("Output of `udpdiff clips`."),
    output: Path = OutputOption,
    params: list[Path] = ParamsOption,
    metrics: Path | None = MetricsOption,
    track: bool = TrackOption,
):
    """Long captions (Video-LLaVA, an endpoint, or Panda's own) beside the short Panda caption."""
    _execute("udpdiff.captions", params, [clips], output, metrics, track)


@udpdiff_app.command("segment")
def udpdiff_segment(
    clips: Path = _dir("Output of `udpdiff clips`."),
    output: Path = OutputOption,
    params: list[Path] = ParamsOption,
    metrics: Path | None = MetricsOption,
    track: bool = TrackOption,
):
    """Entity segmentation of frame 0 propagated through each clip, as Pixelplanes videos."""
    _execute("udpdiff.segment", params, [clips], output, metrics, track)


@udpdiff_app.command("depth")
def udpdiff_depth(
    clips: Path = _dir("Output of `udpdiff clips`."),
    output: Path = OutputOption,
    params: list[Path] = ParamsOption,
    metrics: Path | None = MetricsOption,
    track: bool = TrackOption,
):
    """Video depth of each clip, as Pixelplanes (Spectral) videos."""
    _execute("udpdiff.depth", params, [clips], output, metrics, track)


@udpdiff_app.command("dataset")
def udpdiff_dataset(
    clips: Path = _dir("Output of `udpdiff clips`."),
    captions: Path = _dir("Output of `udpdiff captions`."),
    segment: Path = _dir("Output of `udpdiff segment`."),
    depth: Path = _dir("Output of `udpdiff depth`."),
    output: Path = OutputOption,
    params: list[Path] = ParamsOption,
    metrics: Path | None = MetricsOption,
    track: bool = TrackOption,
):
    """Join clips, captions, segmentation and depth into Panda-Dense; validate it (Great Expectations)."""
    _execute("udpdiff.dataset", params, [clips, captions, segment, depth], output, metrics, track)


@udpdiff_app.command("encode")
def udpdiff_encode(
    dataset: Path = _dir("Output of `udpdiff dataset`."),
    output: Path = OutputOption,
    params: list[Path] = ParamsOption,
    metrics: Path | None = MetricsOption,
    track: bool = TrackOption,
):
    """Precompute VAE latents (clip, segmentation, depth) and T5 embeddings (long, short caption)."""
    _execute("udpdiff.encode", params, [dataset], output, metrics, track)


@udpdiff_app.command("train")
def udpdiff_train(
    latents: Path = _dir("Output of `udpdiff encode`."),
    output: Path = OutputOption,
    params: list[Path] = ParamsOption,
    metrics: Path | None = MetricsOption,
    track: bool = TrackOption,
):
    """Fine-tune the 32-channel CogVideoX with DeepSpeed (one process; for several ranks run
    `torchrun --nproc_per_node N -m vidprior.udpdiff.train`)."""
    _execute("udpdiff.train", params, [latents], output, metrics, track)


@udpdiff_app.command("sample")
def udpdiff_sample(
    model: Path = _dir("Output of `udpdiff train` (holds transformer/)."),
    dataset: Path = _dir("Output of `udpdiff dataset`: its long captions are the prompts."),
    output: Path = OutputOption,
    params: list[Path] = ParamsOption,
    metrics: Path | None = MetricsOption,
    track: bool = TrackOption,
):
    """Generate video + segmentation or depth per prompt and task; decode the dense maps."""
    _execute("udpdiff.sample", params, [model, dataset], output, metrics, track)


@udpdiff_app.command("register")
def udpdiff_register(
    model: Path = _dir("Output of `udpdiff train` (holds transformer/)."),
    output: Path = OutputOption,
    params: list[Path] = ParamsOption,
    metrics: Path | None = MetricsOption,
    track: bool = TrackOption,
):
    """Register the fine-tuned transformer as MLflow model `udpdiff` (alias `challenger`)."""
    _execute("udpdiff.register", params, [model], output, metrics, track)


@udpdiff_app.command("evaluate")
def udpdiff_evaluate(
    samples: Path = _dir("Output of `udpdiff sample`: the prompts, seeds and videos to compare."),
    dataset: Path = _dir("Output of `udpdiff dataset`: reference clips (FVD) and depth labels."),
    registered: Path = _dir("Output of `udpdiff register` (model.json): the version the results tag."),
    output: Path = OutputOption,
    params: list[Path] = ParamsOption,
    metrics: Path | None = MetricsOption,
    track: bool = TrackOption,
):
    """Base CogVideoX vs UDPDiff on the same prompts and seeds: SC/BC/MS, FVD, depth; tags the version."""
    _execute("udpdiff.evaluate", params, [samples, dataset, registered], output, metrics, track)


@udpdiff_app.command("promote")
def udpdiff_promote(
    evaluation: Path = _dir("Output of `udpdiff evaluate` (holds evaluation.json: model and version)."),
    output: Path = OutputOption,
    params: list[Path] = ParamsOption,
    metrics: Path | None = MetricsOption,
    track: bool = TrackOption,
):
    """Alias `champion` to the evaluated version if it beats the champion (mlflow/policies/udpdiff.yaml);
    a refusal is recorded in promotion.json (metric `promoted` = 0), not a failure."""
    _execute("udpdiff.promote", params, [evaluation], output, metrics, track)


@registry_app.command("promote")
def registry_promote(
    model: str = typer.Argument(..., help="Registered model name (unic, udpdiff)."),
    policy: Path | None = typer.Option(
        None, "--policy", help="Promotion policy (default: mlflow/policies/MODEL.yaml of the project root)."
    ),
    tracking_uri: str | None = typer.Option(
        None, "--tracking-uri", help="MLflow tracking server (default: MLFLOW_TRACKING_URI, else embedded)."
    ),
    version: str | None = typer.Option(
        None, "--version", help="Promote only if the challenger alias still holds this version."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the decision as JSON."),
):
    """Move alias `champion` to the `challenger` version if it beats the champion under the policy.

    Exit 0: promoted or already champion. 1: refused (the reason is printed). 2: bad policy, unknown model.
    """
    from vidprior.registry.promote import PolicyError, PromotionError, load_policy, policy_path, promote
    from vidprior.registry.promote import registry_client as make_client

    try:
        chosen = load_policy(policy if policy is not None else policy_path(model))
        decision = promote(model, chosen, make_client(tracking_uri), version=version)
    except (PolicyError, PromotionError) as exc:
        typer.echo(f"registry promote: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(json.dumps(decision.to_dict(), indent=2, sort_keys=True) if as_json else decision.summary())
    if not decision.ok:
        typer.echo(f"refused: {decision.reason}", err=True)
        raise typer.Exit(1)


@params_app.command("show")
def params_show(params: list[Path] = ParamsOption):
    """Print the resolved params (all files merged, defaults filled in)."""
    typer.echo(params_to_yaml(_load(params)), nl=False)


@params_app.command("check")
def params_check(params: list[Path] = ParamsOption):
    """Validate params files; exit 2 with the offending key and file on error."""
    resolved = _load(params)
    typer.echo(f"ok: profile={resolved.profile} digest={resolved.digest()}")


@io_app.command("merge-shards")
def io_merge_shards(
    shards: list[Path] = typer.Argument(..., help="Shard output directories."),
    output: Path = typer.Option(..., "--output", "-o"),
):
    """Join shard outputs (manifests and rejects); duplicate ids across shards are an error."""
    from vidprior.io.shards import merge_shards

    typer.echo(json.dumps(merge_shards(shards, output)))


@pipelines_app.command("compile")
def pipelines_compile(
    output_dir: Path = typer.Option(Path("pipelines/compiled"), "--output-dir"),
    params: list[Path] = ParamsOption,
):
    """Compile every pipeline to KFP IR YAML (run from the repository root)."""
    from vidprior.registry.tracking import project_root

    # pipelines/ and components/ are compile-time code at the repository root, not installed modules.
    sys.path.insert(0, str(project_root()))
    from pipelines.compile import compile_all

    for path in compile_all(_load(params), output_dir):
        typer.echo(str(path))


def _kfp_submission(pipeline: str, params: list[Path], overrides: list[str], package: Path | None, **fields):
    """Params (files + `--set`) validated before anything is compiled or sent; exit 2 naming the key."""
    from vidprior.registry.tracking import project_root

    sys.path.insert(0, str(project_root()))
    from pipelines.submit import Submission, resolve_params

    try:
        return Submission(
            pipeline=pipeline, params=resolve_params(params, overrides), package=package, **fields
        )
    except ValueError as exc:  # ParamsError included
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None


KfpPipeline = typer.Argument(..., help="Pipeline: unic or udpdiff.")
KfpSet = typer.Option([], "--set", help="Params override KEY=VALUE (dotted key, YAML value); repeatable.")
KfpPackage = typer.Option(
    None, "--package", help="A compiled pipeline YAML (default: compile with the params)."
)
KfpHost = typer.Option(None, "--host", envvar="KF_PIPELINES_ENDPOINT", help="KFP API endpoint.")
KfpNamespace = typer.Option(None, "--namespace", envvar="KF_PIPELINES_NAMESPACE", help="Profile namespace.")
KfpToken = typer.Option(
    None, "--token", envvar="KF_PIPELINES_TOKEN", help="Bearer token (else the pod's SA)."
)
KfpExperiment = typer.Option(None, "--experiment", help="KFP experiment (default: tracking.experiment).")
KfpName = typer.Option(None, "--name", help="Run name (default: pipeline, profile and params digest).")
KfpTracking = typer.Option(None, "--mlflow-tracking-uri", help="MLflow server the tasks log to.")
KfpServiceAccount = typer.Option(None, "--service-account", help="Kubernetes service account of the run.")


@pipelines_app.command("submit")
def pipelines_submit(
    pipeline: str = KfpPipeline,
    params: list[Path] = ParamsOption,
    overrides: list[str] = KfpSet,
    package: Path | None = KfpPackage,
    host: str | None = KfpHost,
    namespace: str | None = KfpNamespace,
    token: str | None = KfpToken,
    experiment: str | None = KfpExperiment,
    name: str | None = KfpName,
    mlflow_tracking_uri: str | None = KfpTracking,
    service_account: str | None = KfpServiceAccount,
):
    """Create one KFP run; the params (files + --set) become its `params_yaml` argument."""
    submission = _kfp_submission(
        pipeline,
        params,
        overrides,
        package,
        experiment=experiment,
        name=name,
        mlflow_tracking_uri=mlflow_tracking_uri,
        service_account=service_account,
    )
    from pipelines.submit import KFP_ERRORS, connect, submit_run

    try:
        run_id = submit_run(connect(host, namespace, token), submission)
    except KFP_ERRORS as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None
    typer.echo(json.dumps({"run_id": run_id, "name": submission.display_name()}))


@pipelines_app.command("schedule")
def pipelines_schedule(
    pipeline: str = KfpPipeline,
    cron: str = typer.Option(
        ..., "--cron", help="5-field cron (or KFP's 6, seconds first), e.g. '0 3 * * SUN'."
    ),
    params: list[Path] = ParamsOption,
    overrides: list[str] = KfpSet,
    package: Path | None = KfpPackage,
    host: str | None = KfpHost,
    namespace: str | None = KfpNamespace,
    token: str | None = KfpToken,
    experiment: str | None = KfpExperiment,
    name: str | None = KfpName,
    mlflow_tracking_uri: str | None = KfpTracking,
    service_account: str | None = KfpServiceAccount,
):
    """Create an enabled KFP recurring run (scheduled retraining): one at a time, no catch-up."""
    submission = _kfp_submission(
        pipeline,
        params,
        overrides,
        package,
        experiment=experiment,
        name=name,
        mlflow_tracking_uri=mlflow_tracking_uri,
        service_account=service_account,
    )
    from pipelines.submit import KFP_ERRORS, connect, kfp_cron, schedule_run

    try:
        cron_expression = kfp_cron(cron)  # before connecting: a bad schedule never reaches the server
        recurring_id = schedule_run(connect(host, namespace, token), submission, cron_expression)
    except KFP_ERRORS as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None
    typer.echo(
        json.dumps(
            {"recurring_run_id": recurring_id, "name": submission.display_name(), "cron": cron_expression}
        )
    )


@local_app.command("repro")
def local_repro(
    dvc_args: list[str] = typer.Argument(None, help="Extra arguments for `dvc repro`."),
    params: list[Path] = ParamsOption,
):
    """Run `dvc repro` inside one MLflow parent run; each stage nests its own run under it."""
    from vidprior.registry.tracking import pipeline_run

    resolved = _load(params)
    with pipeline_run("local-dvc", resolved.tracking.experiment, {"vidprior.profile": resolved.profile}):
        code = subprocess.call(["dvc", "repro", *(dvc_args or [])], env=os.environ.copy())
    if code:
        raise typer.Exit(code)


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
