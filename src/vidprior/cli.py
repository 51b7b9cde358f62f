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
params_app = typer.Typer(help="Inspect and check params files.", no_args_is_help=True)
io_app = typer.Typer(help="Manifest utilities (shard merge).", no_args_is_help=True)
pipelines_app = typer.Typer(help="Kubeflow pipelines: compile.", no_args_is_help=True)
local_app = typer.Typer(help="The local pipeline (DVC) under one MLflow parent run.", no_args_is_help=True)
app.add_typer(unic_app, name="unic")
app.add_typer(params_app, name="params")
app.add_typer(io_app, name="io")
app.add_typer(pipelines_app, name="pipelines")
app.add_typer(local_app, name="local")

ParamsOption = typer.Option(
    [DEFAULT_PARAMS], "--params", "-p", help="Params file; repeat to overlay (e.g. params/paper.yaml)."
)


def _load(paths: list[Path]) -> Params:
    try:
        return load_params(paths)
    except ParamsError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None


def _execute(stage: str, params_files: list[Path], inputs, output: Path, metrics: Path | None, track: bool):
    from vidprior.stages import execute

    params = _load(params_files)
    try:
        result = execute(stage, params, inputs or None, output, metrics_path=metrics, track=track)
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
