"""The registered UDPDiff model: an MLflow pyfunc `udpdiff` that generates a video and its dense map.

What a model version holds (its artifacts; nothing is pickled; see `vidprior.registry.pyfunc`):

- `transformer/`: the fine-tuned `UDPDiffTransformer3DModel` (safetensors + config.json, as
  `save_pretrained` wrote it in the udpdiff.train stage);
- `udpdiff_config.json` (`CONFIG_FILE`): the base CogVideoX as a `ModelSpec` (hub id + revision + dtype,
  or a tiny seed) from which `load_context` takes the 3D VAE, the T5 encoder, its tokenizer and the
  scheduler (their weights are not copied into the registry), the task ids, the dense-init used and the
  default sampling settings (steps, frames, size, CFG scale, scheduler) from the params at registration;
- the python model as code, importing `UDPDiffModel` from the installed `vidprior`.

Inference (`predict`): a DataFrame with `prompt` (str) and optional `task` ("segmentation" or "depth";
default: the `task` param) and `seed` (int; default `item_seed(config seed, "udpdiff_model", prompt)`)
in; one row per input row out with `prompt`, `task`, `seed`, `video` (base64 H.264 mp4 of the RGB
video), `dense` (base64 lossless mp4 of the generated Pixelplanes video), `values` (base64 `.npz`: `ids`
int32 [T, H, W] entity ids found in the generated colours for segmentation, `depth` float32 [T, H, W]
in [0, 1] for depth), `frames`, `height`, `width`, `fps`. Params (the signature's ParamSchema):
`task`, `steps`, `frames`, `height`, `width`, `fps`, `guidance_scale`, `scheduler`, `batch_size`.

Registration (`log_udpdiff_model`) makes a new version of `udpdiff`, tags its lineage (git commit, the
dvc.lock hash of the Panda-Dense dataset, params digest, base model id) and points `challenger` at it.
"""

from __future__ import annotations

import base64
import io
import tempfile
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
    lineage_tags,
    load_registered,
    log_code_model,
    merged_params,
    read_config,
    row_seeds,
)
from vidprior.udpdiff.pixelplanes import DENOISE_MODES
from vidprior.udpdiff.sampler import SCHEDULERS, trained_text_tokens

if TYPE_CHECKING:
    from vidprior.config import Params

MODEL_NAME = "udpdiff"
CONFIG_FILE = "udpdiff_config.json"
CONFIG_FORMAT = 1
TRANSFORMER_ARTIFACT = "transformer"
DVC_DATA_OUT = "data/udpdiff/dataset"  # the Panda-Dense data the transformer was fine-tuned on
REGISTER_STAGE = "udpdiff_register"
SEED_PURPOSE = "udpdiff_model"


# --------------------------------------------------------------------------- config


def udpdiff_config(params: Params, train_summary: Mapping[str, Any]) -> dict[str, Any]:
    """The model's `udpdiff_config.json`: what `load_context` rebuilds and the sampling defaults."""
    sample = params.udpdiff.sample
    base = train_summary["base_model"]  # a ModelSpec (`sampler.read_train_config`)
    return {
        "format": CONFIG_FORMAT,
        "base_model": base.model_dump(mode="json"),
        "base_model_id": base.model_id,
        "tasks": dict(train_summary["tasks"]),
        "text_tokens": trained_text_tokens(train_summary),
        "dense_init": train_summary.get("dense_init", params.udpdiff.model.dense_init),
        "train": {k: train_summary[k] for k in ("steps", "final_loss") if k in train_summary},
        "sampling": {
            "task": sample.tasks[0],
            "steps": sample.steps,
            "frames": sample.frames,
            "height": sample.height,
            "width": sample.width,
            "fps": sample.fps,
            "guidance_scale": sample.guidance_scale,
            "scheduler": sample.scheduler,
            "batch_size": sample.batch_size,
            "min_entity_fraction": sample.min_entity_fraction,
            "depth_denoise": sample.depth_denoise,
        },
        "seed": params.seed,
        "params_digest": params.digest(),
    }


def _param_specs(config: Mapping[str, Any]) -> list[tuple[str, str, Any]]:
    s = config["sampling"]
    return [
        ("task", "string", str(s["task"])),
        ("steps", "long", int(s["steps"])),
        ("frames", "long", int(s["frames"])),
        ("height", "long", int(s["height"])),
        ("width", "long", int(s["width"])),
        ("fps", "long", int(s["fps"])),
        ("guidance_scale", "double", float(s["guidance_scale"])),
        ("scheduler", "string", str(s["scheduler"])),
        ("batch_size", "long", int(s["batch_size"])),
        ("min_entity_fraction", "double", float(s["min_entity_fraction"])),
        ("depth_denoise", "string", str(s["depth_denoise"])),
    ]


def udpdiff_signature(config: Mapping[str, Any]):
    """prompt (+ optional task, seed) in; the video, the dense video and its decoded values out."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    inputs = Schema(
        [
            ColSpec("string", "prompt"),
            ColSpec("string", "task", required=False),
            ColSpec("long", "seed", required=False),
        ]
    )
    outputs = Schema(
        [
            ColSpec("string", "prompt"),
            ColSpec("string", "task"),
            ColSpec("long", "seed"),
            ColSpec("string", "video"),
            ColSpec("string", "dense"),
            ColSpec("string", "values"),
            ColSpec("long", "frames"),
            ColSpec("long", "height"),
            ColSpec("long", "width"),
            ColSpec("long", "fps"),
        ]
    )
    params = ParamSchema([ParamSpec(name, dtype, default) for name, dtype, default in _param_specs(config)])
    return ModelSignature(inputs=inputs, outputs=outputs, params=params)


# --------------------------------------------------------------------------- payloads


def _video_bytes(frames: np.ndarray, fps: int, *, lossless: bool) -> str:
    from vidprior.io.media import write_video

    with tempfile.TemporaryDirectory(prefix="udpdiff_video_") as tmp:
        path = write_video(Path(tmp) / "video.mp4", frames, fps, lossless=lossless)
        return base64.b64encode(path.read_bytes()).decode("ascii")


def decode_video(data: str) -> np.ndarray:
    """The (T, H, W, 3) uint8 frames of one `video` or `dense` cell of the model's output."""
    from vidprior.io.media import read_video

    with tempfile.TemporaryDirectory(prefix="udpdiff_video_") as tmp:
        path = Path(tmp) / "video.mp4"
        path.write_bytes(base64.b64decode(data))
        return read_video(path)[0]


def _values_bytes(values: Mapping[str, np.ndarray]) -> str:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **values)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def decode_values(data: str) -> dict[str, np.ndarray]:
    """The arrays of one `values` cell: {"ids": ...} for segmentation, {"depth": ...} for depth."""
    with np.load(io.BytesIO(base64.b64decode(data))) as arrays:
        return {k: arrays[k] for k in arrays.files}


# --------------------------------------------------------------------------- the pyfunc


class UDPDiffModel(mlflow.pyfunc.PythonModel):
    """UDPDiff text-to-(video + segmentation | depth); see the module docstring for inputs and outputs."""

    def __init__(self) -> None:
        self.config: dict[str, Any] | None = None
        self.model = None
        self._lock = threading.Lock()  # one sampling call at a time on the shared modules

    def load_context(self, context) -> None:
        self.load(Path(context.artifacts[TRANSFORMER_ARTIFACT]), Path(context.artifacts[CONFIG_ARTIFACT]))

    def load(self, transformer_dir: Path, config_file: Path, device: str | None = None) -> UDPDiffModel:
        """The transformer from its directory; VAE, T5 and scheduler from the base model's spec."""
        from vidprior.models.spec import ModelSpec
        from vidprior.udpdiff.sampler import load_udpdiff_parts

        config = read_config(config_file, CONFIG_FORMAT)
        spec = ModelSpec.model_validate(config["base_model"])
        self.model = load_udpdiff_parts(
            transformer_dir, spec, tasks=config["tasks"], device=device, text_tokens=config.get("text_tokens")
        )
        self.config = config
        return self

    def settings(self, params: Mapping[str, Any] | None) -> dict[str, Any]:
        """One call's settings: the config's defaults, overridden by the non-null params."""
        if self.config is None:
            raise RuntimeError("UDPDiffModel is not loaded (load_context / load was not called)")
        chosen = merged_params(_param_specs(self.config), params)
        for key in ("steps", "frames", "height", "width", "fps", "batch_size"):
            chosen[key] = int(chosen[key])
            if chosen[key] < 1:
                raise ValueError(f"param {key!r} must be >= 1, got {chosen[key]}")
        chosen["guidance_scale"] = float(chosen["guidance_scale"])
        chosen["min_entity_fraction"] = float(chosen["min_entity_fraction"])
        if chosen["depth_denoise"] not in DENOISE_MODES:
            raise ValueError(
                f"param 'depth_denoise' must be one of {DENOISE_MODES}, got {chosen['depth_denoise']!r}"
            )
        schedulers = ("auto", *SCHEDULERS)
        if chosen["scheduler"] not in schedulers:
            raise ValueError(f"param 'scheduler' must be one of {schedulers}, got {chosen['scheduler']!r}")
        self._check_task(chosen["task"], "param 'task'")
        return chosen

    def _check_task(self, task: str, where: str) -> None:
        known = sorted(self.config["tasks"])
        if task not in known:
            raise ValueError(f"{where}: unknown task {task!r}; the model knows {known}")

    def rows(self, frame: pd.DataFrame, default_task: str) -> tuple[list[str], list[str], list[int]]:
        if "prompt" not in frame.columns:
            raise ValueError(f"model input needs a 'prompt' column, got {list(frame.columns)}")
        prompts = [str(p) for p in frame["prompt"].tolist()]
        given_tasks = frame["task"].tolist() if "task" in frame.columns else [None] * len(frame)
        tasks = [default_task if t is None or pd.isna(t) else str(t) for t in given_tasks]
        for row, task in enumerate(tasks):
            self._check_task(task, f"input row {row}")
        return prompts, tasks, row_seeds(frame, self.config["seed"], SEED_PURPOSE)

    def predict(
        self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        from vidprior.udpdiff.sample import decode_dense
        from vidprior.udpdiff.sampler import generate

        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        s = self.settings(params)
        prompts, tasks, seeds = self.rows(frame, s["task"])
        videos, denses = [], []
        with self._lock:
            for start in range(0, len(prompts), s["batch_size"]):
                batch = slice(start, start + s["batch_size"])
                out = generate(
                    self.model,
                    prompts[batch],
                    tasks[batch],
                    seeds[batch],
                    steps=s["steps"],
                    frames=s["frames"],
                    height=s["height"],
                    width=s["width"],
                    guidance_scale=s["guidance_scale"],
                    scheduler=s["scheduler"],
                )
                videos += out.videos
                denses += out.dense
        return pd.DataFrame(
            {
                "prompt": prompts,
                "task": tasks,
                "seed": pd.Series(seeds, dtype="int64"),
                "video": [_video_bytes(v, s["fps"], lossless=False) for v in videos],
                "dense": [_video_bytes(d, s["fps"], lossless=True) for d in denses],
                "values": [
                    _values_bytes(
                        decode_dense(
                            task,
                            dense,
                            min_entity_fraction=s["min_entity_fraction"],
                            depth_denoise=s["depth_denoise"],
                        )[0]
                    )
                    for task, dense in zip(tasks, denses, strict=True)
                ],
                "frames": pd.Series([v.shape[0] for v in videos], dtype="int64"),
                "height": pd.Series([v.shape[1] for v in videos], dtype="int64"),
                "width": pd.Series([v.shape[2] for v in videos], dtype="int64"),
                "fps": pd.Series([s["fps"]] * len(videos), dtype="int64"),
            }
        )


# --------------------------------------------------------------------------- registration


def log_udpdiff_model(
    train_dir: Path,
    params: Params,
    *,
    registered_name: str = MODEL_NAME,
    alias: str = CHALLENGER,
    lineage: Mapping[str, str] | None = None,
    run_id: str | None = None,
) -> RegisteredModel:
    """Register `<train_dir>/transformer` as a new version of `registered_name` and move `alias` to it.

    `lineage` overrides or adds version tags (see `vidprior.registry.pyfunc.lineage_tags`); `run_id`: an
    existing run to attach the model to; by default a new `udpdiff_register` run.
    """
    from vidprior.udpdiff.sampler import read_train_config

    summary = read_train_config(train_dir)
    transformer_dir = Path(train_dir) / summary["transformer_dir"]
    if not (transformer_dir / "config.json").is_file():
        raise FileNotFoundError(f"{transformer_dir}: no config.json (expected the saved UDPDiff transformer)")
    config = udpdiff_config(params, summary)
    return log_code_model(
        params=params,
        model_type=MODEL_NAME,
        register_stage=REGISTER_STAGE,
        code=code_model_script(__name__, UDPDiffModel.__name__),
        config=config,
        config_file=CONFIG_FILE,
        artifacts={TRANSFORMER_ARTIFACT: transformer_dir},
        signature=udpdiff_signature(config),
        tags=lineage_tags(params, lineage, data_out=DVC_DATA_OUT, base_model=config["base_model_id"]),
        metadata={"udpdiff_config": CONFIG_FILE, "base_model": config["base_model_id"]},
        registered_name=registered_name,
        alias=alias,
        run_id=run_id,
    )


def load_udpdiff_model(uri: str = f"models:/{MODEL_NAME}@{CHALLENGER}"):
    """The registered UDPDiff model as a pyfunc (`.predict(DataFrame, params=...)`)."""
    return load_registered(uri)
