"""A stage's `report/history.csv` reaches MLflow as step-indexed metrics (the training curve)."""

from __future__ import annotations

import mlflow
import pandas as pd

from vidprior.registry.tracking import log_stage
from vidprior.stages import _history


def test_history_becomes_step_metrics(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("VIDPRIOR_PARENT_RUN_ID", raising=False)
    pd.DataFrame(
        {
            "step": [1, 2, 3],
            "loss": [0.7, 0.5, 0.4],
            "eval_auc": [float("nan"), float("nan"), 0.9],
            "note": list("abc"),
        }
    ).to_csv(tmp_path / "history.csv", index=False)

    history = _history(tmp_path / "history.csv")
    assert history[2] == (3, {"loss": 0.4, "eval_auc": 0.9})  # text columns and NaN gaps are left out
    run_id = log_stage("unic.train", "curves", {}, {"final_loss": 0.4}, history=history)

    client = mlflow.MlflowClient(tracking_uri=uri)
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "loss")] == [
        (1, 0.7),
        (2, 0.5),
        (3, 0.4),
    ]
    assert [m.step for m in client.get_metric_history(run_id, "eval_auc")] == [3]
    assert _history(tmp_path / "missing.csv") == []
