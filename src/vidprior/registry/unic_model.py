"""The registered Uni-C model: an MLflow pyfunc `unic` that generates guided SD 1.5 images from prompts.

What a model version holds (its artifacts; nothing is pickled):

- `head.safetensors`: the trained classifier head (vidprior.unic.classifier.HEAD_FILE);
- `unic_config.json` (`CONFIG_FILE`): the base SD 1.5 model as a `ModelSpec` (pretrained hub id or local
  directory + revision + dtype, or a tiny random seed), the lambda table (Uni-C Suppl. Table III), the
  classifier's settings (text condition) and the default sampling settings (steps, CFG scale, size, guidance
  range), all taken from the params at registration time;
- the python model as *code* (MLflow "models from code"): a three-line script that imports `UniCModel` from
  the installed `vidprior` package and hands an instance to `mlflow.models.set_model`. Loading therefore
  needs `vidprior` installed (it is in the model's requirements), never a pickled class or closure.

The SD 1.5 weights are not copied into the registry: `load_context` rebuilds the base model from its spec with
`vidprior.models.build_sd15` (the HF cache or the hub for a pretrained id, the same classes with seeded random
weights for `tiny`), so the version pins the base model by id + revision.

Inference (`predict`): a DataFrame with a `prompt` column (str) and an optional `seed` column (int) in; one
image per row out, as a DataFrame with `prompt`, `seed`, `image` (base64-encoded PNG), `width`, `height`.
A row without a seed gets `item_seed(config seed, "unic_model", prompt)`: the same prompt always gets the same
seed. The sampling parameters (the signature's ParamSchema, defaults from the config):

- `lambda_` (double, default null) and `task` (string, default "sd_svd"): the guidance strength. Precedence:
  an explicit `lambda_` wins; when it is null (not given), the strength is the lambda table's entry for
  `task`. With neither given the strength is therefore the table's sd_svd lambda (the paper's task).
  MLflow fills every missing param with its schema default before `predict` sees it, so "not given" has to be
  a null default: a numeric default could not be told apart from the same value passed on purpose.
- `steps`, `guidance_scale`, `height`, `width`: the SD sampling settings;
- `start`, `end`: the guided part of the trajectory (fractions of the steps, start < end);
- `batch_size`: images per pipeline call (memory only; seeds are per image, so it never changes an image).

Registration (`log_unic_model`) logs the model into a run (a new `unic_register` run unless one is given),
registers it as a new version of `unic`, tags the version with its lineage (`git_commit`, `dvc_data_hash`,
`params_digest`, `base_model`) and points the alias `challenger` at it. Registry stages are not used.
"""

from __future__ import annotations

import base64
import io
import json
import os
import tempfile
import threading
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from vidprior.config import Params

MODEL_NAME = "unic"
CHALLENGER = "challenger"
ARTIFACT_NAME = "unic"  # the logged model's name (MLflow 3 `name=`, formerly `artifact_path=`)
CONFIG_FILE = "unic_config.json"
CONFIG_FORMAT = 1
HEAD_ARTIFACT = "head"
CONFIG_ARTIFACT = "config"
DEFAULT_TASK = "sd_svd"
DVC_DATA_OUT = "data/unic/labels"  # the labelled data the head was trained on
REGISTER_STAGE = "unic_register"
DEVICE_ENV = "VIDPRIOR_DEVICE"  # "cpu", "cuda", "cuda:1"...; default: cuda when available, else cpu
SEED_PURPOSE = "unic_model"

# Runtime dependencies of the model (pinned to the installed versions at log time); the rest of vidprior's
# pins (kfp, dvc, deepspeed, ...) are pipeline tooling the model never imports.
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

_CODE_TEMPLATE = '''"""The Uni-C model as MLflow model-from-code (written by vidprior.registry.unic_model)."""

import mlflow

from vidprior.registry.unic_model import UniCModel

mlflow.models.set_model(UniCModel())
'''


# --------------------------------------------------------------------------- config


def unic_config(params: Params) -> dict[str, Any]:
    """The model's `unic_config.json`: what `load_context` rebuilds and the sampling defaults."""
    unic = params.unic
    spec = params.models.sd15
    return {
        "format": CONFIG_FORMAT,
        "base_model": spec.model_dump(mode="json"),
        "base_model_id": spec.model_id,
        "lambdas": unic.lambdas.model_dump(mode="json"),
        "default_task": DEFAULT_TASK,
        "classifier": unic.classifier.model_dump(mode="json"),
        "sampling": {
            "steps": unic.images.steps,
            "guidance_scale": unic.images.guidance_scale,
            "height": unic.images.height,
            "width": unic.images.width,
            "batch_size": unic.images.batch_size,
            "start": unic.guidance.start,
            "end": unic.guidance.end,
        },
        "seed": params.seed,
        "params_digest": params.digest(),
    }


def _param_specs(config: Mapping[str, Any]) -> list[tuple[str, str, Any]]:
    s = config["sampling"]
    return [
        ("lambda_", "double", None),
        ("task", "string", config["default_task"]),
        ("steps", "long", int(s["steps"])),
        ("guidance_scale", "double", float(s["guidance_scale"])),
        ("height", "long", int(s["height"])),
        ("width", "long", int(s["width"])),
        ("start", "double", float(s["start"])),
        ("end", "double", float(s["end"])),
        ("batch_size", "long", int(s["batch_size"])),
    ]


def unic_signature(config: Mapping[str, Any]):
    """prompt (+ optional seed) in; prompt, seed, base64 PNG, width, height out; sampling params."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    inputs = Schema([ColSpec("string", "prompt"), ColSpec("long", "seed", required=False)])
    outputs = Schema(
        [
            ColSpec("string", "prompt"),
            ColSpec("long", "seed"),
            ColSpec("string", "image"),
            ColSpec("long", "width"),
            ColSpec("long", "height"),
        ]
    )
    params = ParamSchema([ParamSpec(name, dtype, default) for name, dtype, default in _param_specs(config)])
    return ModelSignature(inputs=inputs, outputs=outputs, params=params)


def resolve_lambda(lambdas: Mapping[str, float], lambda_: float | None, task: str | None) -> float:
    """An explicit `lambda_` wins; otherwise the table's entry for `task` (default sd_svd)."""
    if lambda_ is not None:
        value = float(lambda_)
        if not np.isfinite(value):
            raise ValueError(f"lambda_ must be finite, got {lambda_!r}")
        return value
    key = (task or DEFAULT_TASK).strip().replace("-", "_")
    if key not in lambdas:
        raise ValueError(f"unknown task {task!r}: the lambda table has {', '.join(sorted(lambdas))}")
    return float(lambdas[key])


def encode_png(image: np.ndarray) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def decode_png(data: str) -> np.ndarray:
    """The (H, W, 3) uint8 array of one `image` cell of the model's output."""
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB"))


# --------------------------------------------------------------------------- the pyfunc


def _default_device() -> str:
    import torch

    return os.environ.get(DEVICE_ENV) or ("cuda" if torch.cuda.is_available() else "cpu")


class UniCModel(mlflow.pyfunc.PythonModel):
    """Uni-C-guided SD 1.5 text-to-image; see the module docstring for inputs, outputs and params."""

    def __init__(self) -> None:
        self.config: dict[str, Any] | None = None
        self.parts = None
        self.classifier = None
        self._lock = threading.Lock()  # guidance patches the shared scheduler: one sampling call at a time

    def load_context(self, context) -> None:
        self.load(Path(context.artifacts[HEAD_ARTIFACT]), Path(context.artifacts[CONFIG_ARTIFACT]))

    def load(self, head_file: Path, config_file: Path, device: str | None = None) -> UniCModel:
        """Build SD 1.5 from the config's spec, then the classifier with the stored head."""
        from vidprior.models.sd15 import build_sd15
        from vidprior.models.spec import ModelSpec
        from vidprior.unic.classifier import build_classifier

        config = json.loads(Path(config_file).read_text(encoding="utf-8"))
        if config.get("format") != CONFIG_FORMAT:
            raise ValueError(f"{config_file}: unsupported {CONFIG_FILE} format {config.get('format')!r}")
        spec = ModelSpec.model_validate_json(json.dumps(config["base_model"]))
        parts = build_sd15(spec)
        device = device or _default_device()
        if device != "cpu":
            for module in (parts.unet, parts.vae, parts.text_encoder):
                module.to(device)
        classifier = build_classifier(parts.unet)
        classifier.load_head(Path(head_file))
        classifier.eval()
        self.config, self.parts, self.classifier = config, parts, classifier
        return self

    def settings(self, params: Mapping[str, Any] | None) -> dict[str, Any]:
        """The sampling settings of one call: the config's defaults, overridden by the non-null params."""
        if self.config is None:
            raise RuntimeError("UniCModel is not loaded (load_context / load was not called)")
        chosen = {name: default for name, _, default in _param_specs(self.config)}
        unknown = set(params or {}) - set(chosen)
        if unknown:
            raise ValueError(f"unknown params {sorted(unknown)}; known: {sorted(chosen)}")
        chosen.update({k: v for k, v in (params or {}).items() if v is not None and k != "lambda_"})
        lam = resolve_lambda(self.config["lambdas"], (params or {}).get("lambda_"), chosen.pop("task"))
        chosen.pop("lambda_")
        out = {
            "lambda_": lam,
            "steps": int(chosen["steps"]),
            "guidance_scale": float(chosen["guidance_scale"]),
            "height": int(chosen["height"]),
            "width": int(chosen["width"]),
            "start": float(chosen["start"]),
            "end": float(chosen["end"]),
            "batch_size": int(chosen["batch_size"]),
        }
        if out["steps"] < 1 or out["batch_size"] < 1:
            raise ValueError(f"steps and batch_size must be >= 1, got {out['steps']}, {out['batch_size']}")
        if not 0.0 <= out["start"] < out["end"] <= 1.0:
            raise ValueError(f"need 0 <= start < end <= 1, got start={out['start']}, end={out['end']}")
        if out["height"] < 8 or out["width"] < 8:
            raise ValueError(f"height and width must be >= 8, got {out['height']}x{out['width']}")
        return out

    def seeds_for(self, frame: pd.DataFrame) -> list[int]:
        from vidprior.seeding import item_seed

        run_seed = int(self.config["seed"])
        given = frame["seed"].tolist() if "seed" in frame.columns else [None] * len(frame)
        return [
            item_seed(run_seed, SEED_PURPOSE, str(prompt)) if seed is None or pd.isna(seed) else int(seed)
            for prompt, seed in zip(frame["prompt"].tolist(), given, strict=True)
        ]

    def predict(
        self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        from vidprior.unic.workflows import sample_sd

        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        if "prompt" not in frame.columns:
            raise ValueError(f"model input needs a 'prompt' column, got {list(frame.columns)}")
        prompts = [str(p) for p in frame["prompt"].tolist()]
        seeds = self.seeds_for(frame)
        s = self.settings(params)
        with self._lock:
            images = sample_sd(
                self.parts,
                self.classifier,
                prompts,
                seeds,
                lambda_=s["lambda_"],
                steps=s["steps"],
                guidance_scale=s["guidance_scale"],
                height=s["height"],
                width=s["width"],
                start=s["start"],
                end=s["end"],
                text_condition_mode=self.config["classifier"]["text_condition"],
                batch_size=s["batch_size"],
            )
        return pd.DataFrame(
            {
                "prompt": prompts,
                "seed": pd.Series(seeds, dtype="int64"),
                "image": [encode_png(image) for image in images],
                "width": pd.Series([image.shape[1] for image in images], dtype="int64"),
                "height": pd.Series([image.shape[0] for image in images], dtype="int64"),
            }
        )


# --------------------------------------------------------------------------- registration


@dataclass(frozen=True)
class RegisteredUniC:
    """What `log_unic_model` registered: `models:/<name>/<version>`, and the alias that now points at it."""

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


def model_pip_requirements() -> list[str]:
    """The model's runtime dependencies pinned to the installed versions (no resolution, no network)."""
    from packaging.version import Version

    import vidprior

    def pin(dist: str, version: str) -> str:
        # The public version: a local label (torch's "+cpu") is not on PyPI and would not install.
        return f"{dist}=={Version(version).public}"

    reqs = [pin("mlflow", mlflow.__version__), pin("vidprior", vidprior.__version__)]
    for dist in RUNTIME_DISTRIBUTIONS:
        try:
            reqs.append(pin(dist, importlib_metadata.version(dist)))
        except importlib_metadata.PackageNotFoundError:
            continue
    return reqs


def _lineage_tags(params: Params, lineage: Mapping[str, str] | None) -> dict[str, str]:
    from vidprior.registry.tracking import git_commit, project_root

    given = dict(lineage or {})
    tags = {
        "git_commit": given.pop("git_commit", None) or git_commit(),
        "dvc_data_hash": given.pop("dvc_data_hash", None)
        if "dvc_data_hash" in given
        else dvc_out_hash(project_root() / "dvc.lock", DVC_DATA_OUT),
        "params_digest": given.pop("params_digest", None) or params.digest(),
        "base_model": given.pop("base_model", None) or params.models.sd15.model_id,
    }
    tags.update(given)
    return {k: str(v if v is not None else "") for k, v in tags.items()}


def log_unic_model(
    head_dir: Path,
    params: Params,
    *,
    registered_name: str = MODEL_NAME,
    alias: str = CHALLENGER,
    lineage: Mapping[str, str] | None = None,
    run_id: str | None = None,
) -> RegisteredUniC:
    """Log the pyfunc, register it as a new version of `registered_name`, tag its lineage, move `alias`.

    `head_dir`: the directory holding `head.safetensors` (or the file itself). `lineage` overrides or adds
    version tags; by default `git_commit` is `tracking.git_commit()`, `dvc_data_hash` the dvc.lock md5 of
    data/unic/labels in the project root ("" when absent), `params_digest` `params.digest()`, `base_model` the
    SD 1.5 spec's model id. `run_id`: an existing run to attach the model to (left as it is); by default a new
    `unic_register` run in the params' experiment, nested under `VIDPRIOR_PARENT_RUN_ID` when set.
    """
    from mlflow.models import Model

    from vidprior.registry.tracking import PARENT_RUN_ENV, use_experiment
    from vidprior.unic.classifier import HEAD_FILE

    head_file = Path(head_dir)
    head_file = head_file / HEAD_FILE if head_file.is_dir() else head_file
    if not head_file.is_file():
        raise FileNotFoundError(f"{head_file}: no classifier head (expected {HEAD_FILE} from `unic train`)")
    tags = _lineage_tags(params, lineage)
    config = unic_config(params)
    experiment_id = use_experiment(params.tracking.experiment)
    client = mlflow.MlflowClient()

    own_run = run_id is None
    if own_run:
        run_tags = {"vidprior.stage": REGISTER_STAGE, **{f"vidprior.{k}": v for k, v in tags.items()}}
        if os.environ.get(PARENT_RUN_ENV):
            run_tags["mlflow.parentRunId"] = os.environ[PARENT_RUN_ENV]
        run_id = client.create_run(experiment_id, run_name=REGISTER_STAGE, tags=run_tags).info.run_id
    status = "FAILED"
    try:
        with tempfile.TemporaryDirectory(prefix="unic_model_") as tmp:
            code_file = Path(tmp) / "unic_pyfunc.py"
            code_file.write_text(_CODE_TEMPLATE, encoding="utf-8")
            config_file = Path(tmp) / CONFIG_FILE
            config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
            # The LoggedModel is created explicitly in the run's experiment: left to Model.log, MLflow 3
            # puts it in the *active* experiment (Default unless mlflow.set_experiment was called) when no
            # run is active, whatever the source run's experiment is.
            logged = mlflow.initialize_logged_model(
                name=ARTIFACT_NAME,
                source_run_id=run_id,
                tags={"vidprior.model": MODEL_NAME, **tags},
                model_type=MODEL_NAME,
                experiment_id=experiment_id,
            )
            # Model.log rather than mlflow.pyfunc.log_model: only it takes a run_id, so a caller's run is
            # used without resuming (and then ending) it as the fluent API would. No input example: MLflow
            # would validate it by loading the model and sampling at log time (the whole SD 1.5 for real).
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*input example was not provided.*")
                info = Model.log(
                    artifact_path=None,  # deprecated for `name`, yet a required parameter of Model.log
                    name=ARTIFACT_NAME,
                    flavor=mlflow.pyfunc,
                    python_model=str(code_file),
                    artifacts={HEAD_ARTIFACT: str(head_file), CONFIG_ARTIFACT: str(config_file)},
                    signature=unic_signature(config),
                    pip_requirements=model_pip_requirements(),
                    registered_model_name=registered_name,
                    run_id=run_id,
                    model_id=logged.model_id,
                    metadata={"unic_config": CONFIG_FILE, "base_model": config["base_model_id"]},
                )
        version = str(info.registered_model_version)
        for key, value in tags.items():
            client.set_model_version_tag(registered_name, version, key, value)
        client.set_registered_model_alias(registered_name, alias, version)
        status = "FINISHED"
    finally:
        if own_run:
            client.set_terminated(run_id, status, end_time=int(time.time() * 1000))
    return RegisteredUniC(
        name=registered_name,
        version=version,
        run_id=run_id,
        model_uri=f"models:/{registered_name}/{version}",
        alias=alias,
        model_id=info.model_id,
        tags=tags,
    )


def load_unic(uri: str = f"models:/{MODEL_NAME}@{CHALLENGER}"):
    """The registered Uni-C model as a pyfunc (`.predict(DataFrame, params=...)`)."""
    from vidprior.registry.tracking import tracking_uri

    mlflow.set_tracking_uri(tracking_uri())
    return mlflow.pyfunc.load_model(uri)
