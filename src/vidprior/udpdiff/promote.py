"""Stage `udpdiff.promote`: alias `champion` to the evaluated `udpdiff` version if it beats the champion.

Reads the evaluate stage's `evaluation.json` (model, version) and applies `mlflow/policies/udpdiff.yaml`
(`params.registry.policies_dir`) through `vidprior.registry.promote`. A refusal is an outcome, not a
failure: `promotion.json` says why and the `promoted` metric is 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from vidprior.config import Params
from vidprior.registry.promote import PROMOTION_FILE, run_stage

STAGE = "udpdiff.promote"
ARTIFACTS = {"promotion": PROMOTION_FILE}  # logged with the stage's MLflow run
# vidprior.registry.udpdiff_model.MODEL_NAME, not imported: that module costs a torch import (a test
# keeps the two equal).
MODEL_NAME = "udpdiff"


def run(params: Params, inputs: Sequence[Path | str] | None, output_dir: Path) -> dict[str, float]:
    """inputs: [evaluation dir]. Writes `promotion.json` (decision, reason, per-metric comparison)."""
    return run_stage(params, inputs, output_dir, model=MODEL_NAME)
