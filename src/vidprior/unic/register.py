"""Stage `unic.register`: the trained head as MLflow model `unic`, a new version aliased `challenger`.

The pyfunc (`vidprior.registry.unic_model`) references the base SD model by id and revision, carries
the head weights, the lambda table and the classifier settings, and generates images from prompts.
The version is tagged with its lineage (git commit, DVC hash of the labels, params digest); the
stage writes what it registered to `model.json` so later stages (evaluation, promotion) can find it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from vidprior.config import Params
from vidprior.unic.stage_inputs import input_dir

STAGE = "unic.register"


def run(params: Params, inputs: Sequence[Path | str] | None, output_dir: Path) -> dict[str, float]:
    """inputs: [train dir]. Registers the model; writes `model.json` (name, version, URIs, tags)."""
    from vidprior.registry.pyfunc import write_registration
    from vidprior.registry.unic_model import log_unic_model

    started = time.perf_counter()
    return write_registration(log_unic_model(input_dir(inputs, 0, "train"), params), output_dir, started)
