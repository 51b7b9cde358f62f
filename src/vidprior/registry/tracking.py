"""MLflow tracking: one parent run per pipeline run, one nested run per stage.

Tracking goes to `MLFLOW_TRACKING_URI` when set; otherwise to the embedded default, a SQLite store
(`mlflow.db`) and an artifact folder (`mlartifacts/`) in the project root, both ignored by git.
The parent run id travels to stage processes (DVC commands, KFP components) in
`VIDPRIOR_PARENT_RUN_ID`, so stages launched by another tool still nest under the pipeline run.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

PARENT_RUN_ENV = "VIDPRIOR_PARENT_RUN_ID"
MAX_METRICS_PER_BATCH = 1000  # MLflow's limit for one log_batch call
HOME_ENV = "VIDPRIOR_HOME"
_MARKERS = ("dvc.yaml", "params.yaml", "pyproject.toml")


def project_root() -> Path:
    """`VIDPRIOR_HOME`, else the nearest directory above the cwd holding params.yaml or dvc.yaml."""
    if os.environ.get(HOME_ENV):
        return Path(os.environ[HOME_ENV]).resolve()
    here = Path.cwd().resolve()
    for candidate in (here, *here.parents):
        if any((candidate / marker).exists() for marker in _MARKERS[:2]):
            return candidate
    return here


def embedded_tracking_uri() -> str:
    return f"sqlite:///{project_root() / 'mlflow.db'}"


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or embedded_tracking_uri()


def _artifact_location() -> str | None:
    # Only the embedded store needs an explicit place (else MLflow writes ./mlruns under the cwd);
    # a server decides its own artifact root. `mlflow.set_tracking_uri` exports the variable, so
    # compare the URI rather than test whether the variable is set.
    if tracking_uri() != embedded_tracking_uri():
        return None
    return (project_root() / "mlartifacts").as_uri()


def use_experiment(name: str) -> str:
    import mlflow

    mlflow.set_tracking_uri(tracking_uri())
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is None:
        return mlflow.create_experiment(name, artifact_location=_artifact_location())
    return experiment.experiment_id


def git_commit(cwd: Path | None = None) -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=cwd or project_root(),
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


@contextlib.contextmanager
def pipeline_run(pipeline: str, experiment: str, tags: Mapping[str, str] | None = None) -> Iterator[str]:
    """Open the parent run and export its id for the stage processes started inside the block."""
    import mlflow

    experiment_id = use_experiment(experiment)
    all_tags = {"vidprior.pipeline": pipeline, "vidprior.git_commit": git_commit(), **(tags or {})}
    with mlflow.start_run(experiment_id=experiment_id, run_name=pipeline, tags=all_tags) as run:
        previous = os.environ.get(PARENT_RUN_ENV)
        os.environ[PARENT_RUN_ENV] = run.info.run_id
        try:
            yield run.info.run_id
        finally:
            if previous is None:
                os.environ.pop(PARENT_RUN_ENV, None)
            else:
                os.environ[PARENT_RUN_ENV] = previous


def _loggable(value: Any) -> Any:
    return "null" if value is None else value


def log_stage(
    stage: str,
    experiment: str,
    params: Mapping[str, Any],
    metrics: Mapping[str, float],
    *,
    parent_run_id: str | None = None,
    tags: Mapping[str, str] | None = None,
    artifacts: Mapping[str, Path] | None = None,
    status: str = "FINISHED",
    history: Sequence[tuple[int, Mapping[str, float]]] = (),
) -> str:
    """Record a finished (or failed) stage as a run, nested under the pipeline run when one is known."""
    import mlflow
    from mlflow.entities import Metric, Param

    experiment_id = use_experiment(experiment)
    parent = parent_run_id or os.environ.get(PARENT_RUN_ENV) or None
    all_tags = {"vidprior.stage": stage, **(tags or {})}
    if parent:
        all_tags["mlflow.parentRunId"] = parent
    client = mlflow.MlflowClient()
    run = client.create_run(experiment_id, run_name=stage, tags=all_tags)
    run_id = run.info.run_id
    now_ms = int(time.time() * 1000)
    try:
        client.log_batch(
            run_id,
            params=[Param(k, str(_loggable(v))[:6000]) for k, v in sorted(params.items())],
            metrics=[Metric(k, float(v), now_ms, 0) for k, v in sorted(metrics.items())],
        )
        # Curves (e.g. the training loss per step), so MLflow plots them against the step.
        curve = [Metric(k, float(v), now_ms, step) for step, row in history for k, v in row.items()]
        for start in range(0, len(curve), MAX_METRICS_PER_BATCH):
            client.log_batch(run_id, metrics=curve[start : start + MAX_METRICS_PER_BATCH])
        for name, path in (artifacts or {}).items():
            if Path(path).is_dir():
                client.log_artifacts(run_id, str(path), artifact_path=name)
            elif Path(path).exists():
                client.log_artifact(run_id, str(path), artifact_path=name)
        client.set_terminated(run_id, status)
    except Exception:
        client.set_terminated(run_id, "FAILED")
        raise
    return run_id


def open_parent_run(pipeline: str, experiment: str, tags: Mapping[str, str] | None = None) -> str:
    """Create a parent run that outlives this process (KFP: opened by one step, closed by another)."""
    import mlflow

    experiment_id = use_experiment(experiment)
    all_tags = {"vidprior.pipeline": pipeline, "mlflow.runName": pipeline, **(tags or {})}
    return mlflow.MlflowClient().create_run(experiment_id, run_name=pipeline, tags=all_tags).info.run_id


def close_run(run_id: str, status: str = "FINISHED") -> None:
    import mlflow

    mlflow.set_tracking_uri(tracking_uri())
    mlflow.MlflowClient().set_terminated(run_id, status)
