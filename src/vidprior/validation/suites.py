"""Expectation suites for the Uni-C tables, and the per-stage entry points that run them.

Each `validate_*` reads the stage's tables, validates, saves the report, and raises
`ValidationFailed` after saving when anything failed. The validated tables are read with
`read_table`, not `read_manifest`, so duplicate or empty ids become reported failures instead of
an exception before any report exists; reference tables (videos, images) use `read_manifest`.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from vidprior.io.manifest import MANIFEST, REJECT_COLUMNS, REJECTS, read_manifest, read_table
from vidprior.unic.judge_types import CRITERIA
from vidprior.validation.runner import (
    ValidationReport,
    load_gx,
    merge_reports,
    raise_if_failed,
    save_report,
    validate_frame,
)

FLOW_STATS_SIGNED = ("mean_u", "mean_v")  # signed flow components: any finite value
FLOW_STATS_NONNEG = ("var_u", "var_v", "mean_mag", "var_mag")  # magnitudes and variances: >= 0
FLOW_COLUMNS = (
    "id",
    *FLOW_STATS_SIGNED,
    *FLOW_STATS_NONNEG,
    "n_pairs",
    "flow_backend",
    "flow_pass",
    "flow_clause",
)
DECIDED_BY = ("flow_rule", "judge")
LABEL_COLUMNS = ("id", "prompt_id", "prompt", "image_path", "video_path", "label", "decided_by", "reasons")
# `between` with a finite bound is GX's only finiteness test: inf fails it, NaN is caught by not-null.
_FMAX = sys.float_info.max
_NON_BLANK = r"\S"


def _suite(name: str, expectations: list):
    # Built through the constructor: `add_expectation` consults the current context's store and
    # silently drops an expectation "equalish" to one already in the suite.
    return load_gx().ExpectationSuite(name=name, expectations=expectations)


def _condition(column: str, value: Any):
    from great_expectations.expectations.row_conditions import Column

    return Column(column) == value


def flow_statistics_suite(expected_rows: int):
    """Flow statistics: complete, finite, non-negative where physical, one row per readable video."""
    E = load_gx().expectations
    expectations: list = []
    for column in FLOW_COLUMNS:
        expectations.append(E.ExpectColumnToExist(column=column))
    expectations.append(E.ExpectColumnValuesToNotBeNull(column="id"))
    expectations.append(E.ExpectColumnValuesToBeUnique(column="id"))
    expectations.append(
        E.ExpectTableRowCountToEqual(
            value=int(expected_rows), description="one row per video that the flow stage did not reject"
        )
    )
    for column in (*FLOW_STATS_SIGNED, *FLOW_STATS_NONNEG):
        expectations.append(E.ExpectColumnValuesToNotBeNull(column=column, description="NaN statistic"))
        low = -_FMAX if column in FLOW_STATS_SIGNED else 0.0
        expectations.append(
            E.ExpectColumnValuesToBeBetween(
                column=column,
                min_value=low,
                max_value=_FMAX,
                description="finite" + (" and non-negative" if low == 0.0 else ""),
            )
        )
    expectations.append(E.ExpectColumnValuesToNotBeNull(column="n_pairs"))
    expectations.append(
        E.ExpectColumnValuesToBeBetween(column="n_pairs", min_value=1, description="at least one frame pair")
    )
    expectations.append(E.ExpectColumnValuesToNotBeNull(column="flow_backend"))
    expectations.append(E.ExpectColumnValuesToNotBeNull(column="flow_pass"))
    expectations.append(E.ExpectColumnValuesToBeInSet(column="flow_pass", value_set=[True, False]))
    expectations.append(E.ExpectColumnValuesToNotBeNull(column="flow_clause"))
    expectations.append(
        E.ExpectColumnValuesToMatchRegex(
            column="flow_clause",
            regex=_NON_BLANK,
            row_condition=_condition("flow_pass", False),
            description="a failed flow rule names its clause",
        )
    )
    expectations.append(
        E.ExpectColumnValuesToBeInSet(
            column="flow_clause",
            value_set=[""],
            row_condition=_condition("flow_pass", True),
            description="a passed flow rule has an empty clause",
        )
    )
    return _suite("flow_statistics", expectations)


def labels_suite(criteria: Iterable[str] = tuple(CRITERIA)):
    """The labels table on its own: well-formed labels, known deciders, negatives explained."""
    E = load_gx().expectations
    criteria = list(criteria)
    expectations: list = []
    for column in (*LABEL_COLUMNS, *criteria):
        expectations.append(E.ExpectColumnToExist(column=column))
    for column in ("id", "prompt", "image_path", "video_path", "label", "decided_by"):
        expectations.append(E.ExpectColumnValuesToNotBeNull(column=column))
    expectations.append(E.ExpectColumnValuesToBeUnique(column="id"))
    expectations.append(E.ExpectColumnValuesToBeInSet(column="label", value_set=[0, 1]))
    expectations.append(E.ExpectColumnValuesToBeInSet(column="decided_by", value_set=list(DECIDED_BY)))
    expectations.append(
        E.ExpectColumnValuesToMatchRegex(column="image_path", regex=_NON_BLANK, description="image path")
    )
    negative = _condition("label", 0)
    expectations.append(
        E.ExpectColumnValuesToNotBeNull(
            column="reasons", row_condition=negative, description="negatives say why"
        )
    )
    expectations.append(
        E.ExpectColumnValuesToMatchRegex(
            column="reasons", regex=_NON_BLANK, row_condition=negative, description="negatives say why"
        )
    )
    for column in criteria:
        # Null means the judge was not asked (flow-rule negatives, temporal criteria in image-only mode).
        expectations.append(E.ExpectColumnValuesToBeInSet(column=column, value_set=[True, False]))
        expectations.append(
            E.ExpectColumnValuesToBeInSet(
                column=column,
                value_set=[True],
                row_condition=_condition("label", 1),
                description="a positive passes every criterion it was judged on",
            )
        )
    return _suite("labels", expectations)


# Status of one image in the label accounting frame; only the first two are acceptable.
LABELLED, REJECTED = "labelled", "rejected"
BOTH, MISSING, DUPLICATE, UNKNOWN = "labelled_and_rejected", "missing", "labelled_twice", "not_in_images"


def label_accounting_frame(images: pd.DataFrame, labels: pd.DataFrame, rejects: pd.DataFrame) -> pd.DataFrame:
    """One row per image id (and per stray id): labelled xor rejected, and the reject's reason."""
    n_labels = labels["id"].dropna().value_counts()
    n_rejects = rejects["id"].dropna().value_counts()
    image_ids = pd.Index(images["id"].dropna().unique())
    ids = image_ids.append(n_labels.index.difference(image_ids)).append(
        n_rejects.index.difference(image_ids.union(n_labels.index))
    )
    frame = pd.DataFrame({"id": ids.astype(str)})
    frame["in_images"] = frame["id"].isin(image_ids)
    frame["n_labels"] = frame["id"].map(n_labels).fillna(0).astype("int64")
    frame["n_rejects"] = frame["id"].map(n_rejects).fillna(0).astype("int64")
    # The weakest reason stands for the id, so one blank reason among several still fails.
    reasons = rejects.assign(reason=rejects["reason"].astype("string").fillna("").str.strip())
    weakest = reasons.sort_values("reason", key=lambda s: s.str.len()).drop_duplicates("id").set_index("id")
    frame["reject_reason"] = frame["id"].map(weakest["reason"]).astype("string")

    def status(row: pd.Series) -> str:
        if not row["in_images"]:
            return UNKNOWN
        if row["n_labels"] > 1:
            return DUPLICATE
        if row["n_labels"] and row["n_rejects"]:
            return BOTH
        if row["n_labels"]:
            return LABELLED
        return REJECTED if row["n_rejects"] else MISSING

    frame["status"] = frame.apply(status, axis=1) if len(frame) else pd.Series(dtype="string")
    return frame


def label_accounting_suite():
    E = load_gx().expectations
    expectations: list = []
    expectations.append(E.ExpectColumnValuesToBeUnique(column="id"))
    expectations.append(
        E.ExpectColumnValuesToBeInSet(
            column="status",
            value_set=[LABELLED, REJECTED],
            description="every image is labelled xor rejected, and nothing else is",
        )
    )
    expectations.append(
        E.ExpectColumnValuesToMatchRegex(
            column="reject_reason",
            regex=_NON_BLANK,
            row_condition=_condition("status", REJECTED),
            description="every reject has a reason",
        )
    )
    return _suite("label_accounting", expectations)


def class_balance(labels: pd.DataFrame) -> dict[str, Any]:
    """Reported, not enforced: a skewed balance is a finding to look at, not a broken table."""
    label = pd.to_numeric(labels.get("label", pd.Series(dtype="float64")), errors="coerce")
    counts = {str(k): int(v) for k, v in label.value_counts(dropna=False).sort_index().items()}
    decided = labels.get("decided_by", pd.Series(dtype="string")).astype("string").fillna("<null>")
    n_labelled = int(label.isin([0, 1]).sum())
    return {
        "rows": len(labels),
        "counts_per_label": counts,
        "positives": int((label == 1).sum()),
        "negatives": int((label == 0).sum()),
        "positive_fraction": round(float((label == 1).sum()) / n_labelled, 6) if n_labelled else None,
        "decided_by": {str(k): int(v) for k, v in decided.value_counts().items()},
    }


def _rejects_or_empty(stage_dir: Path) -> tuple[pd.DataFrame, bool]:
    # A missing rejects file is read as "no rejects": if that is wrong the accounting checks fail
    # and say which ids are unaccounted for, which is more useful than an unreadable-file error.
    path = Path(stage_dir) / REJECTS
    if not path.exists():
        return pd.DataFrame({c: pd.Series(dtype="string") for c in REJECT_COLUMNS}), False
    return read_table(path, REJECT_COLUMNS), True


def validate_flow(flow_dir: Path, videos_dir: Path, out_path: Path) -> ValidationReport:
    """Validate the flow statistics table; the report is saved before any ValidationFailed."""
    flow = read_table(Path(flow_dir) / MANIFEST)
    rejects, rejects_found = _rejects_or_empty(flow_dir)
    video_ids = set(read_manifest(videos_dir)["id"])
    reject_ids = set(rejects["id"].dropna())
    expected = len(video_ids - reject_ids)
    info = {
        "videos": len(video_ids),
        "flow_rejects": len(reject_ids & video_ids),
        "rejects_not_in_videos": sorted(reject_ids - video_ids)[:20],
        "rejects_file_found": rejects_found,
        "expected_rows": expected,
    }
    if "flow_pass" in flow.columns and len(flow):
        info["flow_pass_fraction"] = round(float(flow["flow_pass"].fillna(False).astype(bool).mean()), 6)
    report = validate_frame(flow, flow_statistics_suite(expected), "flow_statistics", info=info)
    save_report(report, out_path)
    raise_if_failed(report)
    return report


def validate_labels(labels_dir: Path, images_dir: Path, out_path: Path) -> ValidationReport:
    """Validate the labels table and that every image is accounted for; one report for both."""
    labels = read_table(Path(labels_dir) / MANIFEST)
    rejects, rejects_found = _rejects_or_empty(labels_dir)
    images = read_manifest(images_dir)
    accounting = label_accounting_frame(images, labels if "id" in labels else labels.assign(id=None), rejects)
    status_counts = {str(k): int(v) for k, v in accounting["status"].value_counts().items()}
    report = merge_reports(
        "labels",
        [
            validate_frame(labels, labels_suite(), "labels"),
            validate_frame(accounting, label_accounting_suite(), "label_accounting"),
        ],
        info={
            "class_balance": class_balance(labels),
            "images": len(images),
            "accounting": status_counts,
            "rejects_file_found": rejects_found,
        },
    )
    save_report(report, out_path)
    raise_if_failed(report)
    return report
