"""Stage `udpdiff.register`: the fine-tuned transformer as MLflow model `udpdiff`, aliased `challenger`.

The pyfunc (`vidprior.registry.udpdiff_model`) carries the transformer weights and references the base
CogVideoX (id + revision) for the VAE and the T5 encoder; it generates a video and its segmentation or
depth from a prompt and a task. The version is tagged with its lineage (git commit, DVC hash of the
Panda-Dense dataset, params digest); `model.json` records what was registered for later stages.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from vidprior.config import Params
from vidprior.unic.stage_inputs import input_dir

STAGE = "udpdiff.register"


def run(params: Params, inputs: Sequence[Path | str] | None, output_dir: Path) -> dict[str, float]:
    """inputs: [train dir]. Registers the model; writes `model.json` (name, version, URIs, tags)."""
    from vidprior.registry.pyfunc import write_registration
    from vidprior.registry.udpdiff_model import log_udpdiff_model

    started = time.perf_counter()
    return write_registration(log_udpdiff_model(input_dir(inputs, 0, "train"), params), output_dir, started)
