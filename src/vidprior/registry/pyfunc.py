"""Registering a vidprior model: an MLflow pyfunc stored as code, its lineage tags, and an alias.

Shared by the Uni-C and UDPDiff models. A model version holds:

- the python model as *code* (MLflow "models from code"): a short script that imports the model class
  from the installed `vidprior` package and hands an instance to `mlflow.models.set_model`, so loading
  needs `vidprior` installed (it is in the model's requirements), never a pickled class or closure;
- a JSON config (`config` artifact) with what `load_context` rebuilds: the base model as a `ModelSpec`
  (hub id + revision, or a tiny seed; base weights are never copied into the registry) and the defaults;
- the trained weights as further artifacts (a head file, a transformer directory).

`log_code_model` logs it into a run (a new run named after the register stage unless one is given,
nested under `VIDPRIOR_PARENT_RUN_ID` when set), registers it as a new version, tags the version with
its lineage (`git_commit`, `dvc_data_hash`, `params_digest`, `base_model`) and points an alias (default
`challenger`) at it. Registry stages are deprecated in MLflow and are not used.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow

if TYPE_CHECKING:
    from vidprior.config import Params

CHALLENGER = "challenger"
CONFIG_ARTIFACT = "config"
REGISTERED_FILE = "model.json"  # what a register stage writes: name, version, URIs, tags

# Runtime dependencies of the models (pinned to the installed versions at log time); the rest of vidprior's
# pins (kfp, dvc, deepspeed, ...) are pipeline tooling the models never import.
RUNTIME_DISTRIBUTIONS = (
    "torch",
    "diffusers",
    "transformers",
    "tokenizers",
    "safetensors",
    "huggingface_hub",
    "accelerate",
    "numpy",
    "pandas",
    "pillow",
    "pydantic",
    "PyYAML",
)


def code_model_script(module: str, class_name: str) -> str:
    """The models-from-code script for `module.class_name`."""
    return (
        f'"""The {class_name} pyfunc as MLflow model-from-code (written by vidprior.registry.pyfunc)."""\n\n'
        f"import mlflow\n\nfrom {module} import {class_name}\n\nmlflow.models.set_model({class_name}())\n"
    )


def read_config(config_file: Path, expected_format: int) -> dict[str, Any]:
    config = json.loads(Path(config_file).read_text(encoding="utf-8"))
    if config.get("format") != expected_format:
        raise ValueError(
            f"{config_file}: unsupported config format {config.get('format')!r} (expected {expected_format})"
        )
    return config


def merged_params(
    specs: Sequence[tuple[str, str, Any]], params: Mapping[str, Any] | None, *, keep_null: Sequence[str] = ()
) -> dict[str, Any]:
    """A predict call's params: the signature's defaults (`specs`: name, type, default), overridden by
    the given non-null values (or null too, for the names in `keep_null`); unknown names are an error.

    MLflow fills every missing param with its schema default before `predict` sees it, so a param
    whose "not given" must be told apart needs a null default.
    """
    chosen = {name: default for name, _, default in specs}
    unknown = set(params or {}) - set(chosen)
    if unknown:
        raise ValueError(f"unknown params {sorted(unknown)}; known: {sorted(chosen)}")
    chosen.update({k: v for k, v in (params or {}).items() if v is not None or k in keep_null})
    return chosen


def row_seeds(frame, run_seed: int, purpose: str) -> list[int]:
    """Each input row's `seed`, or, where it has none, one derived from (run seed, the row's prompt):
    the same prompt always gets the same seed."""
    import pandas as pd

    from vidprior.seeding import item_seed

    given = frame["seed"].tolist() if "seed" in frame.columns else [None] * len(frame)
    return [
        item_seed(int(run_seed), purpose, str(prompt)) if seed is None or pd.isna(seed) else int(seed)
        for prompt, seed in zip(frame["prompt"].tolist(), given, strict=True)
    ]


@dataclass(frozen=True)
class RegisteredModel:
    """What `log_code_model` registered: `models:/<name>/<version>`, and the alias that now points at it."""

    name: str
    version: str
    run_id: str
    model_uri: str
    alias: str
    model_id: str | None = None
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def alias_uri(self) -> str:
        return f"models:/{self.name}@{self.alias}"


def dvc_out_hash(lock_path: Path | str, out_path: str) -> str:
    """The md5 DVC recorded in `dvc.lock` for the output `out_path` ("<md5>.dir" for a directory), or ""."""
    import yaml

    lock_path = Path(lock_path)
    if not lock_path.is_file():
        return ""
    data = yaml.safe_load(lock_path.read_text(encoding="utf-8")) or {}
    wanted = Path(out_path).as_posix().rstrip("/")
    for stage in (data.get("stages") or {}).values():
        for out in (stage or {}).get("outs") or []:
            if isinstance(out, dict) and str(out.get("path", "")).rstrip("/") == wanted:
                return str(out.get("md5") or "")
    return ""


def model_pip_requirements(distributions: Sequence[str] = RUNTIME_DISTRIBUTIONS) -> list[str]:
    """The model's runtime dependencies pinned to the installed versions (no resolution, no network)."""
    from packaging.version import Version

    import vidprior

    def pin(dist: str, version: str) -> str:
        # The public version: a local label (torch's "+cpu") is not on PyPI and would not install.
        return f"{dist}=={Version(version).public}"

    reqs = [pin("mlflow", mlflow.__version__), pin("vidprior", vidprior.__version__)]
    for dist in distributions:
        try:
            reqs.append(pin(dist, importlib_metadata.version(dist)))
        except importlib_metadata.PackageNotFoundError:
            continue
    return reqs


def lineage_tags(
    params: Params, lineage: Mapping[str, str] | None, *, data_out: str, base_model: str
) -> dict[str, str]:
    """Version tags: git commit, the dvc.lock hash of the training data `data_out`, params digest, base
    model id; `lineage` overrides or adds entries."""
    from vidprior.registry.tracking import git_commit, project_root

    given = dict(lineage or {})
    tags = {
        "git_commit": given.pop("git_commit", None) or git_commit(),
        "dvc_data_hash": given.pop("dvc_data_hash", None)
        if "dvc_data_hash" in given
        else dvc_out_hash(project_root() / "dvc.lock", data_out),
        "params_digest": given.pop("params_digest", None) or params.digest(),
        "base_model": given.pop("base_model", None) or base_model,
    }
    tags.update(given)
    return {k: str(v if v is not None else "") for k, v in tags.items()}


def log_code_model(
    *,
    params: Params,
    model_type: str,
    register_stage: str,
    code: str,
    config: Mapping[str, Any],
    config_file: str,
    artifacts: Mapping[str, Path],
    signature,
    tags: Mapping[str, str],
    metadata: Mapping[str, Any],
    registered_name: str,
    alias: str = CHALLENGER,
    run_id: str | None = None,
) -> RegisteredModel:
    """Log the pyfunc, register it as a new version of `registered_name`, tag its lineage, move `alias`.

    `artifacts` are files or directories; the config is written as `config_file` and added as the
    `config` artifact. `run_id`: an existing run to attach the model to (left as it is); by default a new
    run named `register_stage` in the params' experiment, nested under `VIDPRIOR_PARENT_RUN_ID` when set.
    """
    from mlflow.models import Model

    from vidprior.registry.tracking import PARENT_RUN_ENV, use_experiment

    for name, path in artifacts.items():
        if not Path(path).exists():
            raise FileNotFoundError(f"{path}: artifact {name!r} of model {registered_name!r} does not exist")
    experiment_id = use_experiment(params.tracking.experiment)
    client = mlflow.MlflowClient()

    own_run = run_id is None
    if own_run:
        run_tags = {"vidprior.stage": register_stage, **{f"vidprior.{k}": v for k, v in tags.items()}}
        if os.environ.get(PARENT_RUN_ENV):
            run_tags["mlflow.parentRunId"] = os.environ[PARENT_RUN_ENV]
        run_id = client.create_run(experiment_id, run_name=register_stage, tags=run_tags).info.run_id
    status = "FAILED"
    try:
        with tempfile.TemporaryDirectory(prefix=f"{model_type}_model_") as tmp:
            code_path = Path(tmp) / f"{model_type}_pyfunc.py"
            code_path.write_text(code, encoding="utf-8")
            config_path = Path(tmp) / config_file
            config_text = json.dumps(dict(config), indent=2, sort_keys=True) + "\n"
            config_path.write_text(config_text, encoding="utf-8")
            # The LoggedModel is created explicitly in the run's experiment: left to Model.log, MLflow 3
            # puts it in the *active* experiment (Default unless mlflow.set_experiment was called) when no
            # run is active, whatever the source run's experiment is.
            logged = mlflow.initialize_logged_model(
                name=model_type,
                source_run_id=run_id,
                tags={"vidprior.model": model_type, **tags},
                model_type=model_type,
                experiment_id=experiment_id,
            )
            # Model.log rather than mlflow.pyfunc.log_model: only it takes a run_id, so a caller's run is
            # used without resuming (and then ending) it as the fluent API would. No input example: MLflow
            # would validate it by loading the model and generating at log time (the whole base model).
            logged_artifacts = {k: str(v) for k, v in artifacts.items()}
            logged_artifacts[CONFIG_ARTIFACT] = str(config_path)
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*input example was not provided.*")
                info = Model.log(
                    artifact_path=None,  # deprecated for `name`, yet a required parameter of Model.log
                    name=model_type,
                    flavor=mlflow.pyfunc,
                    python_model=str(code_path),
                    artifacts=logged_artifacts,
                    signature=signature,
                    pip_requirements=model_pip_requirements(),
                    registered_model_name=registered_name,
                    run_id=run_id,
                    model_id=logged.model_id,
                    metadata=dict(metadata),
                )
        version = str(info.registered_model_version)
        for key, value in tags.items():
            client.set_model_version_tag(registered_name, version, key, value)
        client.set_registered_model_alias(registered_name, alias, version)
        status = "FINISHED"
    finally:
        if own_run:
            client.set_terminated(run_id, status, end_time=int(time.time() * 1000))
    return RegisteredModel(
        name=registered_name,
        version=version,
        run_id=run_id,
        model_uri=f"models:/{registered_name}/{version}",
        alias=alias,
        model_id=info.model_id,
        tags=dict(tags),
    )


def load_registered(uri: str):
    """A registered model as a pyfunc (`.predict(DataFrame, params=...)`), from the tracking URI in use."""
    from vidprior.registry.tracking import tracking_uri

    mlflow.set_tracking_uri(tracking_uri())
    return mlflow.pyfunc.load_model(uri)


def write_registration(registered: RegisteredModel, output_dir: Path, started: float) -> dict[str, float]:
    """A register stage's output (`model.json`, so later stages can find the version) and metrics."""
    from vidprior.io.atomic import write_text_atomic

    record = {**asdict(registered), "alias_uri": registered.alias_uri}
    write_text_atomic(Path(output_dir) / REGISTERED_FILE, json.dumps(record, indent=2, sort_keys=True) + "\n")
    # The version number depends on the registry's history, not on the inputs: a run-dependent metric.
    return {
        "resumed_model_version": float(registered.version),
        "stage_seconds": round(time.perf_counter() - started, 4),
    }
