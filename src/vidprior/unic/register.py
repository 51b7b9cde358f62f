"""Stage `unic.register`: the trained head as MLflow model `unic`, a new version aliased `challenger`.

The pyfunc (`vidprior.registry.unic_model`) references the base SD model by id and revision, carries
the head weights, the lambda table and the classifier settings, and generates images from prompts.
The version is tagged with its lineage (git commit, DVC hash of the labels, params digest); the
stage writes what it registered to `model.json` so later stages (evaluation, promotion) can find it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from vidprior.config import Params
from vidprior.io.atomic import write_text_atomic
from vidprior.unic.stage_inputs import input_dir

STAGE = "unic.register"


def run(params: Params, inputs: Sequence[Path | str] | None, output_dir: Path) -> dict[str, float]:
    """inputs: [train dir]. Registers the model; writes `model.json` (name, version, URIs, tags)."""
    from vidprior.registry.unic_model import log_unic_model

    started = time.perf_counter()
    registered = log_unic_model(input_dir(inputs, 0, "train"), params)
    record = {**asdict(registered), "alias_uri": registered.alias_uri}
    write_text_atomic(Path(output_dir) / "model.json", json.dumps(record, indent=2, sort_keys=True) + "\n")
    # The version number depends on the registry's history, not on the inputs: a run-dependent metric.
    return {
        "resumed_model_version": float(registered.version),
        "stage_seconds": round(time.perf_counter() - started, 4),
    }
