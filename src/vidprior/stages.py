"""The one place a stage is executed: load params, run, write metrics, log to MLflow.

The CLI (and so DVC) and the KFP components all call `execute`, so a stage behaves and is tracked
the same way wherever it runs.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from vidprior.config import Params, flatten
from vidprior.io.atomic import write_text_atomic
from vidprior.io.manifest import MANIFEST, REJECTS


@dataclass(frozen=True)
class Stage:
    name: str
    params_section: str  # dotted params section the stage reads; logged as the run's params
    run: Callable[[Params, Sequence[Path | str] | None, Path], dict[str, float]]


def _prompts_stage() -> Stage:
    from vidprior.unic import prompts

    return Stage(prompts.STAGE, "unic.prompts", prompts.run)


STAGES: dict[str, Callable[[], Stage]] = {"unic.prompts": _prompts_stage}


def reproducible(metrics: dict[str, float]) -> dict[str, float]:
    """Metrics that depend only on inputs and params: timings and resume counts are left to MLflow,
    so the DVC metrics file (committed to git) changes only when the results do."""
    return {k: v for k, v in metrics.items() if not (k.endswith("_seconds") or k.startswith("resumed_"))}


def execute(
    stage_name: str,
    params: Params,
    inputs: Sequence[Path | str] | None,
    output_dir: Path,
    *,
    metrics_path: Path | None = None,
    parent_run_id: str | None = None,
    track: bool = True,
) -> dict[str, float]:
    stage = STAGES[stage_name]()
    metrics = stage.run(params, inputs, Path(output_dir))
    if metrics_path is not None:
        write_text_atomic(
            Path(metrics_path), json.dumps(reproducible(metrics), indent=2, sort_keys=True) + "\n"
        )
    if track:
        from vidprior.registry.tracking import log_stage

        logged = {
            **flatten(params.section(stage.params_section), f"{stage.params_section}."),
            "profile": params.profile,
            "seed": params.seed,
        }
        log_stage(
            stage.name,
            params.tracking.experiment,
            logged,
            metrics,
            parent_run_id=parent_run_id,
            tags={"vidprior.params_digest": params.digest(), "vidprior.output": str(output_dir)},
            artifacts={"rejects": Path(output_dir) / REJECTS, "manifest": Path(output_dir) / MANIFEST},
        )
    return metrics
