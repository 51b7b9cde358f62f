"""Run Great Expectations suites on in-memory tables and keep a plain, reviewable report.

GX (Core 1.x) is used in ephemeral mode only: nothing is written to a GX project directory, the
report we save is our own JSON (and a small HTML page) so it diffs cleanly, attaches to MLflow and
does not depend on GX's data-docs layout. A stage fails through `ValidationFailed`, always raised
after every report is on disk so the person debugging the failure has the evidence.
"""

from __future__ import annotations

import html
import json
import math
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from vidprior.io.atomic import write_text_atomic

if TYPE_CHECKING:
    import great_expectations as gx

    SuiteLike = gx.ExpectationSuite | Callable[[], gx.ExpectationSuite]

# Unexpected values and ids kept per expectation: enough to find the rows, small enough to read.
SAMPLE_COUNT = 5
_ORDER_KEY = "vidprior_order"


class ValidationFailed(RuntimeError):
    """One or more suites failed; the message names suites, failed expectations and report paths."""

    def __init__(self, reports: Sequence[ValidationReport]):
        self.reports = [r for r in reports if not r.success]
        super().__init__("\n".join(r.failure_message() for r in self.reports) or "validation failed")

    def __reduce__(self):
        # Default pickling would call __init__ with the message; KFP/multiprocessing re-raise needs this.
        return (type(self), (self.reports,))


@dataclass
class ExpectationOutcome:
    expectation: str  # GX expectation type, e.g. "expect_column_values_to_be_between"
    column: str | None
    success: bool
    table: str  # which validated frame (a merged report covers several)
    description: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)  # the expectation's arguments, minus column
    observed_value: Any = None
    element_count: int | None = None
    unexpected_count: int | None = None
    unexpected_values: list[Any] = field(default_factory=list)
    unexpected_ids: list[Any] = field(default_factory=list)
    error: str | None = None  # GX could not evaluate it (missing column, bad condition)

    @property
    def label(self) -> str:
        return f"{self.table}: {self.expectation}" + (f"[{self.column}]" if self.column else "")

    def explain(self) -> str:
        if self.error:
            return f"{self.label}: could not be evaluated: {self.error}"
        parts = []
        if self.unexpected_count is not None:
            parts.append(f"{self.unexpected_count} of {self.element_count} unexpected")
            if self.unexpected_ids:
                parts.append(f"e.g. ids {self.unexpected_ids}")
            if self.unexpected_values:
                parts.append(f"values {self.unexpected_values}")
        elif self.observed_value is not None:
            parts.append(f"observed {self.observed_value!r}")
        expected = {k: v for k, v in self.kwargs.items() if k != "row_condition"}
        if expected:
            parts.append(f"expected {expected}")
        if "row_condition" in self.kwargs:
            parts.append(f"where {_condition_text(self.kwargs['row_condition'])}")
        about = f" ({self.description})" if self.description else ""
        return f"{self.label}{about}: " + ", ".join(parts)


@dataclass
class ValidationReport:
    name: str
    success: bool
    results: list[ExpectationOutcome]
    rows: dict[str, int]  # rows per validated frame
    info: dict[str, Any] = field(default_factory=dict)  # facts worth reporting that do not fail (balance)
    seconds: float = 0.0
    gx_version: str = ""
    created_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    path: Path | None = None  # set by save_report

    @property
    def failed(self) -> list[ExpectationOutcome]:
        return [r for r in self.results if not r.success]

    def failure_message(self) -> str:
        where = f" (report: {self.path})" if self.path else " (report not saved)"
        if self.success:
            return f"suite {self.name!r} passed{where}"
        lines = [
            f"suite {self.name!r} failed {len(self.failed)} of {len(self.results)} expectation(s){where}:"
        ]
        lines += [f"  - {outcome.explain()}" for outcome in self.failed]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["path"] = str(self.path) if self.path else None
        data["failed"] = [o.label for o in self.failed]
        return _plain(data)


# --- GX plumbing -------------------------------------------------------------------------------------

_LOCK = threading.Lock()
_BATCH_DEFINITION: Any = None


def _import_gx():
    # This GX build ships no analytics client, but the setting still exists; pin it off in case a
    # future build restores one, so a pipeline pod never phones home.
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx

    return gx


def load_gx():
    """The GX module, with this process's quiet ephemeral context created (some GX calls need one)."""
    _batch_definition()
    return _import_gx()


def _batch_definition():
    """One ephemeral context per process: importing GX costs seconds, a context and asset are reused."""
    global _BATCH_DEFINITION
    with _LOCK:
        if _BATCH_DEFINITION is None:
            gx = _import_gx()
            from great_expectations.data_context.types.base import (
                DataContextConfig,
                InMemoryStoreBackendDefaults,
                ProgressBarsConfig,
            )

            config = DataContextConfig(
                analytics_enabled=False,
                # tqdm bars on stderr for every validation drown the pipeline logs.
                progress_bars=ProgressBarsConfig(globally=False, metric_calculations=False),
                store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
            )
            # Also becomes GX's process-wide "current" context, which suites built with
            # `add_expectation` need; the batch definition stays bound to this one regardless.
            context = gx.get_context(mode="ephemeral", project_config=config)
            asset = context.data_sources.add_pandas("vidprior").add_dataframe_asset("frame")
            _BATCH_DEFINITION = asset.add_batch_definition_whole_dataframe("whole")
        return _BATCH_DEFINITION


def _resolve_suite(suite: SuiteLike):
    gx = load_gx()
    if isinstance(suite, gx.ExpectationSuite):
        return suite
    built = suite()
    if not isinstance(built, gx.ExpectationSuite):
        raise TypeError(f"suite builder returned {type(built).__name__}, not an ExpectationSuite")
    return built


def validate_frame(
    df: pd.DataFrame, suite: SuiteLike, name: str, *, info: dict[str, Any] | None = None
) -> ValidationReport:
    """Validate `df` against a suite (or a zero-argument builder of one); never raises on failure."""
    gx = load_gx()
    suite = _resolve_suite(suite)
    # GX returns results in its own order (errors first); tag each so the report follows the suite.
    for order, expectation in enumerate(suite.expectations):
        expectation.meta = {**(expectation.meta or {}), _ORDER_KEY: order}
    result_format: dict[str, Any] = {"result_format": "SUMMARY", "partial_unexpected_count": SAMPLE_COUNT}
    if "id" in df.columns:
        # Report offending rows by id rather than by a positional index nobody can look up.
        result_format["unexpected_index_column_names"] = ["id"]
    start = time.perf_counter()
    batch = _batch_definition().get_batch(batch_parameters={"dataframe": df})
    result = batch.validate(suite, result_format=result_format)
    seconds = time.perf_counter() - start
    ordered = sorted(result.results, key=lambda r: (r.expectation_config.meta or {}).get(_ORDER_KEY, 1 << 30))
    outcomes = [_outcome(r, name) for r in ordered]
    return ValidationReport(
        name=name,
        success=bool(result.success),
        results=outcomes,
        rows={name: len(df)},
        info=dict(info or {}),
        seconds=round(seconds, 4),
        gx_version=gx.__version__,
    )


def _outcome(result: Any, table: str) -> ExpectationOutcome:
    config = result.expectation_config
    kwargs = {k: v for k, v in dict(config.kwargs).items() if k not in ("batch_id", "column")}
    body = dict(result.result or {})
    unexpected_ids = []
    for row in body.get("partial_unexpected_index_list") or []:
        unexpected_ids.append(row.get("id") if isinstance(row, dict) else row)
    return ExpectationOutcome(
        expectation=config.type,
        column=config.kwargs.get("column"),
        success=bool(result.success),
        table=table,
        description=getattr(config, "description", None),
        kwargs=kwargs,
        observed_value=body.get("observed_value"),
        element_count=body.get("element_count"),
        unexpected_count=body.get("unexpected_count"),
        unexpected_values=list(body.get("partial_unexpected_list") or [])[:SAMPLE_COUNT],
        unexpected_ids=unexpected_ids[:SAMPLE_COUNT],
        error=_exception_message(result.exception_info),
    )


def _exception_message(info: Any) -> str | None:
    # GX 1.x gives either one {raised_exception, exception_message} dict or one per failed metric.
    if not info:
        return None
    entries = [info] if "raised_exception" in info else list(info.values())
    messages = [
        str(e.get("exception_message")) for e in entries if isinstance(e, dict) and e.get("raised_exception")
    ]
    return "; ".join(dict.fromkeys(messages)) or None


def _condition_text(condition: Any) -> str:
    if isinstance(condition, dict) and condition.get("type") == "comparison":
        return f"{condition['column']['name']} {condition['operator']} {condition['parameter']!r}"
    return str(condition)


def merge_reports(name: str, reports: Sequence[ValidationReport], info: dict[str, Any] | None = None):
    """One report for one stage that needed several frames (GX validates one batch per suite)."""
    merged_info: dict[str, Any] = {}
    for report in reports:
        merged_info.update(report.info)
    merged_info.update(info or {})
    return ValidationReport(
        name=name,
        success=all(r.success for r in reports),
        results=[o for r in reports for o in r.results],
        rows={k: v for r in reports for k, v in r.rows.items()},
        info=merged_info,
        seconds=round(sum(r.seconds for r in reports), 4),
        gx_version=reports[0].gx_version if reports else "",
    )


# --- saving ------------------------------------------------------------------------------------------


def save_report(report: ValidationReport, path: Path, *, html_page: bool = True) -> Path:
    """Write the report as JSON (and `<path>.html` next to it) atomically; records the path."""
    path = Path(path)
    report.path = path
    write_text_atomic(path, json.dumps(report.to_dict(), indent=2, sort_keys=False) + "\n")
    if html_page:
        write_text_atomic(path.with_suffix(".html"), render_html(report))
    return path


def raise_if_failed(reports: ValidationReport | Sequence[ValidationReport]) -> None:
    reports = [reports] if isinstance(reports, ValidationReport) else list(reports)
    if any(not r.success for r in reports):
        raise ValidationFailed(reports)


@dataclass
class SuiteCheck:
    name: str
    frame: pd.DataFrame
    suite: Any  # ExpectationSuite or a zero-argument builder
    info: dict[str, Any] = field(default_factory=dict)


def run_suites(checks: Iterable[SuiteCheck], report_dir: Path) -> list[ValidationReport]:
    """Validate every check, save `<report_dir>/<name>.json` for each, then raise if any failed."""
    reports = []
    for check in checks:
        report = validate_frame(check.frame, check.suite, check.name, info=check.info)
        save_report(report, Path(report_dir) / f"{check.name}.json")
        reports.append(report)
    raise_if_failed(reports)
    return reports


def render_html(report: ValidationReport) -> str:
    esc = html.escape
    status = "PASSED" if report.success else "FAILED"
    rows = []
    for o in report.results:
        detail = "" if o.success else o.explain().split(": ", 1)[-1]
        rows.append(
            f"<tr class={'ok' if o.success else 'bad'}><td>{'ok' if o.success else 'FAIL'}</td>"
            f"<td>{esc(o.table)}</td><td>{esc(o.expectation)}</td><td>{esc(o.column or '')}</td>"
            f"<td>{esc(detail)}</td></tr>"
        )
    info = esc(json.dumps(_plain(report.info), indent=2))
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{esc(report.name)}: {status}</title><style>"
        "body{font-family:sans-serif} table{border-collapse:collapse} td,th{border:1px solid #ccc;"
        "padding:3px 6px;vertical-align:top} tr.bad{background:#fdd}</style></head><body>"
        f"<h1>{esc(report.name)}: {status}</h1>"
        f"<p>{len(report.failed)} of {len(report.results)} expectation(s) failed;"
        f" rows {esc(str(report.rows))};"
        f" GX {esc(report.gx_version)}; {report.seconds:.3f} s; {esc(report.created_at)}</p>"
        "<table><tr><th></th><th>table</th><th>expectation</th><th>column</th><th>detail</th></tr>"
        + "".join(rows)
        + f"</table><h2>info</h2><pre>{info}</pre></body></html>\n"
    )


def _plain(value: Any) -> Any:
    """JSON-safe copy: numpy scalars unwrapped, NaN/inf as strings (strict JSON has neither)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, Path):
        return str(value)
    if value is pd.NA or value is pd.NaT:
        return None
    return str(value)
