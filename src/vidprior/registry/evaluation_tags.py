"""An evaluation's results as tags of the model version it evaluated (what promotion policies read).

The version is the one a register stage wrote to its `model.json` (keys `name`, `version`). Tags:
`eval.<key>` (the candidate, i.e. the registered model), `eval_baseline.<key>` (what it is compared
with: the unguided workflow, the base CogVideoX), and `eval.run_id` (the stage's MLflow run, whose
artifacts hold the table and plots). Values are `repr(float)`, so they read back exactly; a metric
that could not be measured is "nan". Tags of an earlier evaluation of the same version that this one
did not measure are removed (its run id too), so a version never shows a stale mix.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from vidprior.registry.pyfunc import REGISTERED_FILE

CANDIDATE_PREFIX = "eval."
BASELINE_PREFIX = "eval_baseline."
RUN_ID_TAG = "eval.run_id"


def read_registered(registered_dir: Path) -> tuple[str, str]:
    """(name, version) from a register stage's `model.json`."""
    path = Path(registered_dir) / REGISTERED_FILE
    if not path.is_file():
        raise ValueError(f"{path}: not found (expected the register stage's {REGISTERED_FILE})")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    missing = [k for k in ("name", "version") if not isinstance(record, dict) or not record.get(k)]
    if missing:
        raise ValueError(f"{path}: missing field(s) {missing} (a register stage writes name and version)")
    return str(record["name"]), str(record["version"])


def _client():
    import mlflow

    from vidprior.registry.tracking import tracking_uri

    return mlflow.MlflowClient(tracking_uri=tracking_uri())


def _version(client, name: str, version: str):
    from mlflow.exceptions import MlflowException

    from vidprior.registry.tracking import tracking_uri

    try:
        return client.get_model_version(name, version)
    except MlflowException as exc:
        raise ValueError(
            f"model {name!r} version {version} is not in the registry of {tracking_uri()} "
            f"({exc.error_code}); was it registered against another MLFLOW_TRACKING_URI?"
        ) from None


def check_registered(name: str, version: str) -> None:
    """ValueError unless the version exists: checked before an evaluation spends hours sampling."""
    _version(_client(), name, version)


def tag_version(
    name: str, version: str, candidate: Mapping[str, float], baseline: Mapping[str, float]
) -> dict:
    """Write the `eval.*` / `eval_baseline.*` tags on the version; returns the tags written."""
    client = _client()
    current = _version(client, name, version)
    tags = {f"{CANDIDATE_PREFIX}{k}": repr(float(v)) for k, v in candidate.items()}
    tags.update({f"{BASELINE_PREFIX}{k}": repr(float(v)) for k, v in baseline.items()})
    # The run id too: `tag_run` sets it again once this evaluation's run exists (tracked runs only).
    for key in current.tags:
        if key.startswith((CANDIDATE_PREFIX, BASELINE_PREFIX)) and key not in tags:
            client.delete_model_version_tag(name, version, key)
    for key, value in sorted(tags.items()):
        client.set_model_version_tag(name, version, key, value)
    return tags


def tag_run(name: str, version: str, run_id: str) -> None:
    client = _client()
    _version(client, name, version)
    client.set_model_version_tag(name, version, RUN_ID_TAG, run_id)


def tag_run_from_evaluation(run_id: str, output_dir: Path) -> None:
    """`eval.run_id` on the version an evaluate stage's `evaluation.json` names (its `after_tracked`)."""
    from vidprior.evaluate.report import EVALUATION_FILE

    record = json.loads((Path(output_dir) / EVALUATION_FILE).read_text(encoding="utf-8"))
    tag_run(record["model"], record["version"], run_id)
