"""Running a compiled-in-process pipeline with kfp.local and reading back what its tasks left."""

from __future__ import annotations

import json
import math
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


def assert_evaluated_and_promoted(run_dir: Path, uri: str, model: str, evaluate_task: str, version) -> None:
    """The evaluate task scored the registered version and wrote its table; the promote task moved
    `champion` to it (a fresh registry has no champion, so the policy promotes the first version)."""
    evaluated = run_dir / evaluate_task / "output"
    evaluation = json.loads((evaluated / "evaluation.json").read_text())
    assert (evaluation["model"], str(evaluation["version"])) == (model, str(version))
    assert evaluation["candidate"] and evaluation["baseline"]
    assert (evaluated / "table.md").read_text().count("\n") >= 3
    promotion = json.loads((run_dir / "promote-model" / "output" / "promotion.json").read_text())
    assert promotion["decision"] == "promoted" and promotion["ok"] is True, promotion
    assert executor_metrics(run_dir / "promote-model")["promoted"] == 1.0

    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    champion = client.get_model_version_by_alias(model, "champion")
    assert str(champion.version) == str(version)
    tags = champion.tags
    for key, value in evaluation["candidate"].items():
        assert math.isclose(float(tags[f"eval.{key}"]), value, rel_tol=1e-6, abs_tol=1e-9), key
    assert tags["promotion.decision"] == "promoted"
