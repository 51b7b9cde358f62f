"""Data-quality gates: Great Expectations suites over stage tables, with saved reports.

Importing this package does not import GX (seconds of import time); the first validation does.
"""

from __future__ import annotations

from vidprior.validation.dense_suites import (
    dense_accounting_frame,
    dense_accounting_suite,
    dense_items_suite,
    validate_dense,
)
from vidprior.validation.runner import (
    ExpectationOutcome,
    SuiteCheck,
    ValidationFailed,
    ValidationReport,
    load_gx,
    merge_reports,
    raise_if_failed,
    run_suites,
    save_report,
    validate_frame,
)
from vidprior.validation.suites import (
    class_balance,
    flow_statistics_suite,
    label_accounting_frame,
    label_accounting_suite,
    labels_suite,
    validate_flow,
    validate_labels,
)

__all__ = [
    "ExpectationOutcome",
    "SuiteCheck",
    "ValidationFailed",
    "ValidationReport",
    "class_balance",
    "flow_statistics_suite",
    "label_accounting_frame",
    "label_accounting_suite",
    "labels_suite",
    "load_gx",
    "merge_reports",
    "raise_if_failed",
    "run_suites",
    "save_report",
    "validate_flow",
    "validate_frame",
    "validate_labels",
    "dense_accounting_frame",
    "dense_accounting_suite",
    "dense_items_suite",
    "validate_dense",
]
