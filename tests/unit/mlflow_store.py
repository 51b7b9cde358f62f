"""A fresh sqlite MLflow store for a test module, copied from one initialised once per process: creating
the schema (MLflow's migrations) takes seconds, copying the file none."""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path


@functools.cache
def _template() -> Path:
    import mlflow

    root = Path(tempfile.mkdtemp(prefix="mlflow-template-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    mlflow.MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}").search_experiments()
    return root / "mlflow.db"


def fresh_store(directory: Path) -> str:
    """The tracking URI of a new, empty store in `directory`."""
    shutil.copyfile(_template(), Path(directory) / "mlflow.db")
    return f"sqlite:///{Path(directory) / 'mlflow.db'}"
