"""The one place a stage is executed: load params, run, write metrics, log to MLflow.

The CLI (and so DVC) and the KFP components all call `execute`, so a stage behaves and is tracked
the same way wherever it runs.
"""

from __future__ import annotations

import importlib
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from vidprior.config import Params, flatten
from vidprior.io.atomic import write_text_atomic
from vidprior.io.manifest import MANIFEST, REJECTS, REPORT_DIR
from vidprior.io.shards import Shard


@dataclass(frozen=True)
class Stage:
    name: str
    params_section: str  # dotted params section the stage reads, logged as the run's params ("" = none)
    run: Callable[..., dict[str, float]]  # run(params, inputs, output_dir[, shard])
    inputs: tuple[str, ...] = ()  # what each positional input directory is, in order
    shardable: bool = False  # accepts `shard=Shard` (generation stages fanned out on Kubeflow)
    # Module `ARTIFACTS`: {MLflow artifact folder: path in the output dir}, logged besides the defaults.
    artifacts: Mapping[str, str] = field(default_factory=dict)
    # Module `after_tracked(run_id, output_dir)`: runs once the stage's MLflow run exists, e.g. to point
    # a registered model version at the run that holds its evaluation.
    after_tracked: Callable[[str, Path], None] | None = None


def _stage(module: str, section: str, inputs: tuple[str, ...] = (), shardable: bool = False):
    def factory() -> Stage:
        stage_module = importlib.import_module(module)
        return Stage(
            stage_module.STAGE,
            section,
            stage_module.run,
            inputs,
            shardable,
            dict(getattr(stage_module, "ARTIFACTS", {})),
            getattr(stage_module, "after_tracked", None),
        )

    return factory


STAGES: dict[str, Callable[[], Stage]] = {
    "unic.prompts": _stage("vidprior.unic.prompts", "unic.prompts", ("prompt files",)),
    "unic.images": _stage("vidprior.unic.images", "unic.images", ("prompts",), shardable=True),
    "unic.videos": _stage("vidprior.unic.videos", "unic.videos", ("images",), shardable=True),
    "unic.flow": _stage("vidprior.unic.flow_stats", "unic.flow", ("videos",)),
    "unic.judge": _stage("vidprior.unic.judge", "unic.judge", ("videos", "flow")),
    "unic.labels": _stage("vidprior.unic.labels", "unic", ("images", "videos", "flow", "judge")),
    "unic.validate": _stage("vidprior.unic.validate", "", ("images", "videos", "flow", "labels")),
    "unic.review": _stage("vidprior.unic.review_stage", "unic.review", ("labels", "images", "videos")),
    "unic.train": _stage("vidprior.unic.train", "unic.train", ("labels", "images")),
    "unic.sample": _stage("vidprior.unic.sample", "unic.sample", ("train", "prompts")),
    "unic.register": _stage("vidprior.unic.register", "unic.classifier", ("train",)),
    "unic.promote": _stage("vidprior.unic.promote", "registry", ("evaluation",)),
    "unic.evaluate": _stage("vidprior.unic.evaluate", "unic.evaluate", ("train", "prompts", "registered")),
    "udpdiff.synthetic": _stage("vidprior.udpdiff.synthetic", "udpdiff.synthetic"),
    "udpdiff.clips": _stage("vidprior.udpdiff.clips", "udpdiff.panda", ("panda source",)),
    "udpdiff.captions": _stage("vidprior.udpdiff.captions", "udpdiff.captions", ("clips",)),
    "udpdiff.segment": _stage("vidprior.udpdiff.segment", "udpdiff.segment", ("clips",)),
    "udpdiff.depth": _stage("vidprior.udpdiff.depth", "udpdiff.depth", ("clips",)),
    "udpdiff.dataset": _stage("vidprior.udpdiff.dataset", "", ("clips", "captions", "segment", "depth")),
    "udpdiff.encode": _stage("vidprior.udpdiff.encode", "udpdiff.encode", ("dataset",)),
    "udpdiff.train": _stage("vidprior.udpdiff.train", "udpdiff.train", ("encode",)),
    "udpdiff.sample": _stage("vidprior.udpdiff.sample", "udpdiff.sample", ("train", "dataset")),
    "udpdiff.register": _stage("vidprior.udpdiff.register", "udpdiff.model", ("train",)),
    "udpdiff.promote": _stage("vidprior.udpdiff.promote", "registry", ("evaluation",)),
    "udpdiff.evaluate": _stage(
        "vidprior.udpdiff.evaluate", "udpdiff.evaluate", ("samples", "dataset", "registered")
    ),
}
# A stage's curve over steps (e.g. the training loss), logged as step-indexed MLflow metrics.
HISTORY_FILE = "history.csv"


# Metrics that describe how a run went rather than what it produced: resumed work, cache hits, the
# version number a registry happened to hand out.
RUN_DEPENDENT_PREFIXES = ("resumed_", "cache_", "registry_")


def reproducible(metrics: dict[str, float]) -> dict[str, float]:
    """Metrics that depend only on inputs and params: timings, resume counts and cache hits are left
    to MLflow, so the DVC metrics file (committed to git) changes only when the results do."""
    return {
        k: v
        for k, v in metrics.items()
        if not (k.endswith("_seconds") or k.startswith(RUN_DEPENDENT_PREFIXES))
    }


def execute(
    stage_name: str,
    params: Params,
    inputs: Sequence[Path | str] | None,
    output_dir: Path,
    *,
    shard: Shard | None = None,
    metrics_path: Path | None = None,
    parent_run_id: str | None = None,
    track: bool = True,
    runner: Callable[..., dict[str, float]] | None = None,
) -> dict[str, float]:
    """Run a stage; write its reproducible metrics for DVC; log it as an MLflow run.

    A stage that raises is still logged (status FAILED, with whatever report it saved, e.g. a failed
    validation suite) before the error propagates. `runner(params, inputs, output_dir)` replaces the
    stage's own `run` (a training stage launched as a Kubeflow job: `vidprior.kube.launch`), tracked alike.
    """
    if stage_name not in STAGES:
        raise ValueError(f"unknown stage {stage_name!r}; expected one of {sorted(STAGES)}")
    stage = STAGES[stage_name]()
    if shard is not None and not stage.shardable:
        raise ValueError(
            f"{stage_name} does not take a shard: only the generation stages (images, videos) do"
        )
    output_dir = Path(output_dir)
    extra = {"shard": shard} if shard is not None else {}
    # Under torchrun every rank runs the stage; only rank 0 reports it, once.
    track = track and _rank() == 0
    metrics_path = metrics_path if _rank() == 0 else None
    try:
        metrics = (runner or stage.run)(params, inputs, output_dir, **extra)
    except Exception as exc:
        if track:
            _log(stage, params, {}, output_dir, parent_run_id, shard, status="FAILED", error=str(exc))
        raise
    if metrics_path is not None:
        write_text_atomic(
            Path(metrics_path), json.dumps(reproducible(metrics), indent=2, sort_keys=True) + "\n"
        )
    if track:
        run_id = _log(stage, params, metrics, output_dir, parent_run_id, shard)
        if stage.after_tracked is not None:
            stage.after_tracked(run_id, output_dir)
    return metrics


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _log(stage, params, metrics, output_dir, parent_run_id, shard, status="FINISHED", error=""):
    from vidprior.registry.tracking import log_stage

    section = (
        flatten(params.section(stage.params_section), f"{stage.params_section}.")
        if stage.params_section
        else {}
    )
    logged = {**section, "profile": params.profile, "seed": params.seed}
    tags = {"vidprior.params_digest": params.digest(), "vidprior.output": str(output_dir)}
    if shard is not None:
        tags["vidprior.shard"] = str(shard)
    if error:
        tags["vidprior.error"] = error[:5000]
    return log_stage(
        stage.name if shard is None else f"{stage.name}[{shard}]",
        params.tracking.experiment,
        logged,
        metrics,
        parent_run_id=parent_run_id,
        tags=tags,
        artifacts={
            "rejects": output_dir / REJECTS,
            "manifest": output_dir / MANIFEST,
            REPORT_DIR: output_dir / REPORT_DIR,
            **{name: output_dir / path for name, path in stage.artifacts.items()},
        },
        status=status,
        history=_history(output_dir / REPORT_DIR / HISTORY_FILE),
    )


def _history(path: Path) -> list[tuple[int, dict[str, float]]]:
    """A stage's `report/history.csv` (a `step` column + numeric columns) as MLflow step metrics."""
    if not path.exists():
        return []
    import math

    import pandas as pd

    table = pd.read_csv(path)
    if "step" not in table.columns:
        return []
    numeric = [c for c in table.columns if c != "step" and pd.api.types.is_numeric_dtype(table[c])]
    return [
        (int(row["step"]), {c: float(row[c]) for c in numeric if math.isfinite(row[c])})
        for row in table.to_dict("records")
    ]


def execute_for_component(
    stage_name: str,
    params_yaml: str,
    inputs: Sequence[str | None],
    output_path: str,
    metrics_artifact,
    *,
    shard: str = "",
    parent_run_id: str = "",
    mlflow_tracking_uri: str = "",
    runner: Callable[..., dict[str, float]] | None = None,
) -> dict[str, float]:
    """What every KFP stage component does, kept here so the components stay one call thin.

    `metrics_artifact` is the component's `Output[Metrics]`; every stage metric is logged to it.
    `runner`: see `execute`.
    """
    import os

    import yaml

    from vidprior.config import params_from_dict

    if mlflow_tracking_uri:
        os.environ["MLFLOW_TRACKING_URI"] = mlflow_tracking_uri
    params = params_from_dict(yaml.safe_load(params_yaml))
    # Runs a stage opens itself (the registry's model-logging run) nest under the parent run too.
    previous_parent = os.environ.get("VIDPRIOR_PARENT_RUN_ID")
    if parent_run_id:
        os.environ["VIDPRIOR_PARENT_RUN_ID"] = parent_run_id
    try:
        result = execute(
            stage_name,
            params,
            [i for i in inputs if i] or None,
            Path(output_path),
            shard=Shard.parse(shard) if shard else None,
            parent_run_id=parent_run_id or None,
            runner=runner,
        )
    finally:
        if previous_parent is None:
            os.environ.pop("VIDPRIOR_PARENT_RUN_ID", None)
        else:
            os.environ["VIDPRIOR_PARENT_RUN_ID"] = previous_parent
    for name, value in sorted(result.items()):
        # KFP stores metrics as protobuf numbers, which cannot hold NaN/inf (e.g. AUC on one class);
        # MLflow and the stage's own outputs keep them.
        if math.isfinite(float(value)):
            metrics_artifact.log_metric(name, float(value))
    return result
