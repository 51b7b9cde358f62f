"""Integration tests: the repository root on sys.path, and an isolated MLflow store for the real tools."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# pipelines/ and components/ are repository-root code, not installed; conftest runs before any test
# module is imported, so the tests import them like any package.
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


@pytest.fixture
def tracking(tmp_path, monkeypatch) -> str:
    """A fresh sqlite store; the fallback store is moved into tmp_path too, so nothing leaks.

    With a sqlite URI MLflow puts run artifacts in `./mlruns` of the process that creates the
    experiment, and kfp.local tasks inherit this process's cwd: run in tmp_path.
    """
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("VIDPRIOR_PARENT_RUN_ID", raising=False)
    monkeypatch.setenv("VIDPRIOR_HOME", str(tmp_path / "home"))
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


@pytest.fixture
def registry_tracking(tracking, monkeypatch) -> str:
    """`tracking` as the process's MLflow store (registry included), with the hub offline: what a
    registered model loaded by URI in a fresh process sees."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tracking
