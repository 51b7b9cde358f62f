"""Expectation suites for the Panda-Dense dataset (`udpdiff.dataset`), and the entry point that runs them.

The suites validate tables of values measured on disk, not the manifests' claims: one row per
dataset item with the frame count and size of each of its five media files (the clip, the
segmentation video and ids, the depth video and values), the palette's statistics, the depth range
and the captions (`dense_items_suite`), and one row per clip id with how the dataset accounts for
it (`dense_accounting_frame`, `dense_accounting_suite`). `validate_dense` saves one report for
both before raising `ValidationFailed`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from vidprior.validation.runner import (
    ValidationReport,
    load_gx,
    merge_reports,
    raise_if_failed,
    save_report,
    validate_frame,
)

# The media of one item, as prefixes of the measured columns `<media>_{frames,height,width,exists}`.
DENSE_MEDIA = ("clip_video", "seg_video", "seg_ids", "depth_video", "depth_values")
# Upstream manifests' own claims of the size, as `<stage>_declared_<dim>` columns.
DECLARED = ("segment", "depth")
DIMENSIONS = ("frames", "height", "width")
# decode_depth(encode_depth(v)) is within half of a 1/255 bin of v; the slack absorbs float32 rounding.
DEPTH_VIDEO_TOLERANCE = 0.5 / 255 + 1e-6
DENSE_ITEM_COLUMNS = (
    "id",
    *DIMENSIONS,
    *(f"{media}_{dim}" for media in DENSE_MEDIA for dim in DIMENSIONS),
    *(f"{stage}_declared_{dim}" for stage in DECLARED for dim in DIMENSIONS),
    *(f"{media}_exists" for media in DENSE_MEDIA),
    "entities",
    "palette_size",
    "palette_colours",
    "palette_entities",
    "background_black",
    "depth_min",
    "depth_max",
    "depth_finite",
    "depth_video_error",
    "short_caption",
    "long_caption",
)
_NON_BLANK = r"\S"

# Status of one clip id in the accounting frame; only the first two are acceptable.
KEPT, REJECTED = "kept", "rejected"
BOTH, MISSING, DUPLICATE, UNKNOWN = "kept_and_rejected", "missing", "kept_twice", "not_in_clips"


def _suite(name: str, expectations: list):
    # Built through the constructor: `add_expectation` drops expectations "equalish" to one it has.
    return load_gx().ExpectationSuite(name=name, expectations=expectations)


def _condition(column: str, value: Any):
    from great_expectations.expectations.row_conditions import Column

    return Column(column) == value


def dense_items_suite():
    """Panda-Dense items: sizes agree, colours unique per entity, depth in range, captions present."""
    E = load_gx().expectations
    # One expectation for all columns: GX spends ~30 ms per expectation whatever the table's size.
    expectations: list = [
        E.ExpectTableColumnsToMatchSet(column_set=list(DENSE_ITEM_COLUMNS), exact_match=False)
    ]
    expectations.append(E.ExpectTableRowCountToBeBetween(min_value=1, description="at least one item"))
    expectations.append(E.ExpectColumnValuesToNotBeNull(column="id"))
    expectations.append(E.ExpectColumnValuesToBeUnique(column="id"))
    for dim in DIMENSIONS:
        expectations.append(E.ExpectColumnValuesToNotBeNull(column=dim))
        expectations.append(E.ExpectColumnValuesToBeBetween(column=dim, min_value=1))
        others = [f"{media}_{dim}" for media in DENSE_MEDIA] + [f"{s}_declared_{dim}" for s in DECLARED]
        for other in others:
            expectations.append(
                E.ExpectColumnPairValuesToBeEqual(
                    column_A=other,
                    column_B=dim,
                    # A missing measurement (unreadable file) is a disagreement, not a skipped row.
                    ignore_row_if="neither",
                    description=f"{other} equals the manifest's {dim}",
                )
            )
    for media in DENSE_MEDIA:
        expectations.append(
            E.ExpectColumnValuesToBeInSet(
                column=f"{media}_exists", value_set=[True], description=f"the {media} file the manifest names"
            )
        )
    expectations.append(E.ExpectColumnValuesToBeBetween(column="entities", min_value=1))
    expectations.append(
        E.ExpectColumnPairValuesToBeEqual(
            column_A="palette_colours",
            column_B="palette_size",
            ignore_row_if="neither",
            description="no two palette entries share a colour",
        )
    )
    expectations.append(
        E.ExpectColumnPairValuesToBeEqual(
            column_A="palette_entities",
            column_B="entities",
            ignore_row_if="neither",
            description="one palette colour per entity (plus the background)",
        )
    )
    expectations.append(
        E.ExpectColumnValuesToBeInSet(
            column="background_black", value_set=[True], description="background (id 0) is black"
        )
    )
    for column in ("depth_min", "depth_max"):
        expectations.append(E.ExpectColumnValuesToNotBeNull(column=column, description="no finite depth"))
        expectations.append(
            E.ExpectColumnValuesToBeBetween(
                column=column, min_value=0.0, max_value=1.0, description="depth in [0, 1]"
            )
        )
    expectations.append(
        E.ExpectColumnValuesToBeInSet(
            column="depth_finite", value_set=[True], description="depth values are all finite"
        )
    )
    expectations.append(E.ExpectColumnValuesToNotBeNull(column="depth_video_error"))
    expectations.append(
        E.ExpectColumnValuesToBeBetween(
            column="depth_video_error",
            min_value=0.0,
            max_value=DEPTH_VIDEO_TOLERANCE,
            description="the depth video decodes to the depth values (within half a bin)",
        )
    )
    for column in ("short_caption", "long_caption"):
        expectations.append(E.ExpectColumnValuesToNotBeNull(column=column, description="caption present"))
        expectations.append(
            E.ExpectColumnValuesToMatchRegex(column=column, regex=_NON_BLANK, description="caption not blank")
        )
    return _suite("dense_items", expectations)


def dense_accounting_frame(
    clip_ids: Iterable[str],
    kept_ids: Iterable[str],
    rejects: pd.DataFrame,
    stray: Mapping[str, Iterable[str]] | None = None,
) -> pd.DataFrame:
    """One row per clip id (and per stray id): kept xor rejected, with the reject's reason.

    Args:
        clip_ids: every id the clips stage accounted for (kept or rejected there).
        kept_ids: the dataset manifest's ids.
        rejects: the dataset's rejects (`id`, `reason`).
        stray: ids an upstream stage (key) has that the clips stage never had.
    """
    clips = pd.Index(pd.unique(pd.Series(list(clip_ids), dtype="string").dropna()))
    n_kept = pd.Series(list(kept_ids), dtype="string").dropna().value_counts()
    n_rejects = rejects["id"].astype("string").dropna().value_counts()
    stray_of: dict[str, str] = {}
    for stage, ids in (stray or {}).items():
        for item in ids:
            stray_of.setdefault(str(item), stage)
    ids = clips.append(n_kept.index.difference(clips)).append(n_rejects.index.difference(clips))
    ids = ids.append(pd.Index(sorted(set(stray_of) - set(ids))))
    frame = pd.DataFrame({"id": ids.astype(str)})
    frame["in_clips"] = frame["id"].isin(clips)
    frame["n_kept"] = frame["id"].map(n_kept).fillna(0).astype("int64")
    frame["n_rejects"] = frame["id"].map(n_rejects).fillna(0).astype("int64")
    reasons = rejects.assign(reason=rejects["reason"].astype("string").fillna("").str.strip())
    # The weakest reason stands for the id, so one blank reason among several still fails.
    weakest = reasons.sort_values("reason", key=lambda s: s.str.len()).drop_duplicates("id").set_index("id")
    frame["reject_reason"] = frame["id"].map(weakest["reason"]).astype("string")
    frame["seen_in"] = frame["id"].map(stray_of).astype("string")
    status = pd.Series(MISSING, index=frame.index, dtype="object")
    status[frame["n_rejects"] > 0] = REJECTED
    status[frame["n_kept"] > 0] = KEPT
    status[(frame["n_kept"] > 0) & (frame["n_rejects"] > 0)] = BOTH
    status[frame["n_kept"] > 1] = DUPLICATE
    status[~frame["in_clips"]] = UNKNOWN
    frame["status"] = status.astype("string")
    return frame


def dense_accounting_suite():
    E = load_gx().expectations
    return _suite(
        "dense_accounting",
        [
            E.ExpectColumnValuesToBeUnique(column="id"),
            E.ExpectColumnValuesToBeInSet(
                column="status",
                value_set=[KEPT, REJECTED],
                description="every clip is kept xor rejected, and no upstream stage has other ids",
            ),
            E.ExpectColumnValuesToMatchRegex(
                column="reject_reason",
                regex=_NON_BLANK,
                row_condition=_condition("status", REJECTED),
                description="every reject has a reason",
            ),
        ],
    )


def validate_dense(
    items: pd.DataFrame, accounting: pd.DataFrame, out_path: Path, info: dict[str, Any] | None = None
) -> ValidationReport:
    """Validate the measured items and the accounting; the report is saved before any ValidationFailed."""
    statuses = {str(k): int(v) for k, v in accounting["status"].value_counts().items()}
    report = merge_reports(
        "dense",
        [
            validate_frame(items, dense_items_suite(), "dense_items"),
            validate_frame(accounting, dense_accounting_suite(), "dense_accounting"),
        ],
        info={**(info or {}), "accounting": statuses},
    )
    save_report(report, out_path)
    raise_if_failed(report)
    return report
