"""Stage `unic.validate`: the Great Expectations suites on the flow statistics and the labels.

Both suites always run and both reports are saved (under `report/` of the output, so they also
reach MLflow) before the stage fails on the first failed suite: a failed run still shows
everything that is wrong, not just the first problem.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

from vidprior.config import Params
from vidprior.io.atomic import write_text_atomic
from vidprior.io.manifest import REPORT_DIR
from vidprior.unic.stage_inputs import input_dir

STAGE = "unic.validate"


def run(params: Params, inputs: Sequence[Path | str] | None, output_dir: Path) -> dict[str, float]:
    """inputs: [images dir, videos dir, flow dir, labels dir]. Writes report/{flow,labels}.json (+ .html)."""
    from vidprior.validation.runner import ValidationFailed, ValidationReport
    from vidprior.validation.suites import validate_flow, validate_labels

    output_dir = Path(output_dir)
    started = time.perf_counter()
    images, videos, flow, labels = (
        input_dir(inputs, i, n) for i, n in enumerate(("images", "videos", "flow", "labels"))
    )
    reports: list[ValidationReport] = []
    failures: list[ValidationFailed] = []
    report_dir = output_dir / REPORT_DIR
    checks = (
        lambda: validate_flow(flow, videos, report_dir / "flow_statistics.json"),
        lambda: validate_labels(labels, images, report_dir / "labels.json"),
    )
    for check in checks:
        try:
            reports.append(check())
        except ValidationFailed as failed:
            failures.append(failed)
            reports.extend(failed.reports)
    summary = {r.name: {"success": r.success, "failed": [o.label for o in r.failed]} for r in reports}
    write_text_atomic(output_dir / "summary.json", json.dumps(summary, indent=2, sort_keys=True) + "\n")
    if failures:
        raise ValidationFailed([r for f in failures for r in f.reports])

    labels_info = next(r.info for r in reports if r.name == "labels")
    balance = labels_info.get("class_balance", {})
    metrics: dict[str, float] = {
        "suites_passed": sum(r.success for r in reports),
        "expectations_checked": sum(len(r.results) for r in reports),
        "validation_seconds": round(time.perf_counter() - started, 4),
    }
    metrics.update({f"labels_{k}": float(v) for k, v in balance.items() if isinstance(v, int | float)})
    return metrics
