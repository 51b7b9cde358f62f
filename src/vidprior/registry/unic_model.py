"""The registered Uni-C model: an MLflow pyfunc `unic` that generates guided SD 1.5 images from prompts.

What a model version holds (its artifacts; nothing is pickled):

- `head.safetensors`: the trained classifier head (vidprior.unic.classifier.HEAD_FILE);
- `unic_config.json` (`CONFIG_FILE`): the base SD 1.5 model as a `ModelSpec` (pretrained hub id or local
  directory + revision + dtype, or a tiny random seed), the lambda table (Uni-C Suppl. Table III), the
  classifier's settings (text condition) and the default sampling settings (steps, CFG scale, size, guidance
  range), all taken from the params at registration time;
- the python model as *code* (MLflow "models from code", `vidprior.registry.pyfunc`): a script that imports
  `UniCModel` from the installed `vidprior` package, never a pickled class or closure.

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

Registration (`log_unic_model`, through `vidprior.registry.pyfunc.log_code_model`) logs the model into a
run (a new `unic_register` run unless one is given), registers it as a new version of `unic`, tags the
version with its lineage (`git_commit`, `dvc_data_hash`, `params_digest`, `base_model`) and points the
alias `challenger` at it.
"""

from __future__ import annotations

import base64
import io
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
import numpy as np
import pandas as pd

from vidprior.registry.pyfunc import (
    CHALLENGER,
    CONFIG_ARTIFACT,
    RegisteredModel,
    code_model_script,
    dvc_out_hash,
    lineage_tags,
    load_registered,
    log_code_model,
    merged_params,
    read_config,
    row_seeds,
)

if TYPE_CHECKING:
    from vidprior.config import Params

__all__ = ["CHALLENGER", "MODEL_NAME", "UniCModel", "dvc_out_hash", "log_unic_model", "resolve_lambda"]

MODEL_NAME = "unic"
CONFIG_FILE = "unic_config.json"
CONFIG_FORMAT = 1
HEAD_ARTIFACT = "head"
DEFAULT_TASK = "sd_svd"
DVC_DATA_OUT = "data/unic/labels"  # the labelled data the head was trained on
REGISTER_STAGE = "unic_register"
SEED_PURPOSE = "unic_model"


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
        from vidprior.models.loading import default_device
        from vidprior.models.sd15 import build_sd15
        from vidprior.models.spec import ModelSpec
        from vidprior.unic.classifier import build_classifier

        config = read_config(config_file, CONFIG_FORMAT)
        spec = ModelSpec.model_validate(config["base_model"])
        parts = build_sd15(spec)
        device = device or default_device()
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
        chosen = merged_params(_param_specs(self.config), params, keep_null=["lambda_"])
        lam = resolve_lambda(self.config["lambdas"], chosen.pop("lambda_"), chosen.pop("task"))
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
        return row_seeds(frame, self.config["seed"], SEED_PURPOSE)

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


def log_unic_model(
    head_dir: Path,
    params: Params,
    *,
    registered_name: str = MODEL_NAME,
    alias: str = CHALLENGER,
    lineage: Mapping[str, str] | None = None,
    run_id: str | None = None,
) -> RegisteredModel:
    """Log the pyfunc, register it as a new version of `registered_name`, tag its lineage, move `alias`.

    `head_dir`: the directory holding `head.safetensors` (or the file itself). `lineage` overrides or adds
    version tags; by default `git_commit` is `tracking.git_commit()`, `dvc_data_hash` the dvc.lock md5 of
    data/unic/labels in the project root ("" when absent), `params_digest` `params.digest()`, `base_model` the
    SD 1.5 spec's model id. `run_id`: an existing run to attach the model to (left as it is); by default a new
    `unic_register` run in the params' experiment, nested under `VIDPRIOR_PARENT_RUN_ID` when set.
    """
    from vidprior.unic.classifier import HEAD_FILE

    head_file = Path(head_dir)
    head_file = head_file / HEAD_FILE if head_file.is_dir() else head_file
    if not head_file.is_file():
        raise FileNotFoundError(f"{head_file}: no classifier head (expected {HEAD_FILE} from `unic train`)")
    config = unic_config(params)
    return log_code_model(
        params=params,
        model_type=MODEL_NAME,
        register_stage=REGISTER_STAGE,
        code=code_model_script(__name__, UniCModel.__name__),
        config=config,
        config_file=CONFIG_FILE,
        artifacts={HEAD_ARTIFACT: head_file},
        signature=unic_signature(config),
        tags=lineage_tags(params, lineage, data_out=DVC_DATA_OUT, base_model=params.models.sd15.model_id),
        metadata={"unic_config": CONFIG_FILE, "base_model": config["base_model_id"]},
        registered_name=registered_name,
        alias=alias,
        run_id=run_id,
    )


def load_unic(uri: str = f"models:/{MODEL_NAME}@{CHALLENGER}"):
    """The registered Uni-C model as a pyfunc (`.predict(DataFrame, params=...)`)."""
    return load_registered(uri)
