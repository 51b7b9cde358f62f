"""Running a compiled-in-process pipeline with kfp.local and reading back what its tasks left."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
from kfp import local

ROOT = Path(__file__).resolve().parents[2]


def run_local(pipeline, pipeline_root: Path, **arguments) -> Path:
    """Run `pipeline` with kfp.local (tasks as subprocesses of this interpreter, so they import the
    editable `vidprior` as the image would); return the run's directory under `pipeline_root`."""
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(pipeline_root))
    pipeline(**arguments)
    (run_dir,) = pipeline_root.glob(f"{pipeline.name}-*")  # kfp.local: <root>/<pipeline>-<timestamp>/
    return run_dir


def executor_metrics(task_dir: Path) -> dict:
    """kfp.local keeps Metrics in the task's executor_output.json, not in a file at the uri."""
    output = json.loads((task_dir / "executor_output.json").read_text())
    (artifact,) = output["artifacts"]["metrics"]["artifacts"]
    assert artifact["uri"] == str(task_dir / "metrics")
    return artifact["metadata"]


def runs(uri: str, experiment: str) -> list:
    client = mlflow.MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no MLflow experiment {experiment!r}"
    return client.search_runs([found.experiment_id])


def parent_and_children(uri: str, experiment: str) -> tuple:
    """The one top-level run of the experiment and the runs nested under it."""
    logged = runs(uri, experiment)
    parents = [r for r in logged if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1, [r.info.run_name for r in parents]
    children = [r for r in logged if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    return parents[0], children
