"""Manifests and rejects: the parquet tables every stage reads and writes.

A stage's output directory holds `manifest.parquet` (one row per kept item, unique string `id`,
provenance columns) and `rejects.parquet` (every dropped item with its `reason`). Together they
account for every input item.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from vidprior.io.atomic import atomic_path

MANIFEST = "manifest.parquet"
REJECTS = "rejects.parquet"
REJECT_COLUMNS = ["id", "stage", "reason", "detail"]
# Files for people (plots, validation reports, review pages) go under this folder of a stage's output;
# they are logged as MLflow artifacts of the stage's run.
REPORT_DIR = "report"


class ManifestError(ValueError):
    """A manifest is missing, unreadable or breaks the manifest contract."""


def write_table(df: pd.DataFrame, path: Path) -> Path:
    """Write `df` as parquet atomically; index is dropped, column order is kept."""
    table = pa.Table.from_pandas(df.reset_index(drop=True), preserve_index=False)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return path


def read_table(path: Path, required: list[str] | None = None) -> pd.DataFrame:
    path = Path(path)
    if not path.exists():
        raise ManifestError(f"{path}: file not found")
    try:
        df = pq.read_table(path).to_pandas()
    except (pa.ArrowInvalid, OSError) as exc:
        raise ManifestError(f"{path}: not a readable parquet file: {exc}") from None
    missing = [c for c in (required or []) if c not in df.columns]
    if missing:
        raise ManifestError(f"{path}: missing column(s) {missing}; has {list(df.columns)}")
    return df


def check_ids(df: pd.DataFrame, where: str) -> None:
    if "id" not in df.columns:
        raise ManifestError(f"{where}: no 'id' column")
    if df["id"].isna().any():
        raise ManifestError(f"{where}: {int(df['id'].isna().sum())} row(s) with an empty id")
    dupes = df["id"][df["id"].duplicated()].unique()
    if len(dupes):
        raise ManifestError(f"{where}: duplicate id(s) {list(dupes[:5])} ({len(dupes)} in all)")


def write_manifest(df: pd.DataFrame, out_dir: Path) -> Path:
    check_ids(df, str(Path(out_dir) / MANIFEST))
    return write_table(df, Path(out_dir) / MANIFEST)


def read_manifest(out_dir: Path, required: list[str] | None = None) -> pd.DataFrame:
    path = Path(out_dir) / MANIFEST
    df = read_table(path, ["id", *(required or [])])
    check_ids(df, str(path))
    return df


def write_rejects(df: pd.DataFrame, out_dir: Path) -> Path:
    """Write rejects; an empty table still gets the standard columns so readers never special-case."""
    for column in REJECT_COLUMNS:
        if column not in df.columns:
            df = df.assign(**{column: pd.Series(dtype="string")})
    if (df["reason"].isna() | (df["reason"].astype("string").str.strip() == "")).any():
        raise ManifestError("every reject needs a non-empty reason")
    ordered = REJECT_COLUMNS + [c for c in df.columns if c not in REJECT_COLUMNS]
    return write_table(df[ordered], Path(out_dir) / REJECTS)


def read_rejects(out_dir: Path) -> pd.DataFrame:
    return read_table(Path(out_dir) / REJECTS, REJECT_COLUMNS)
