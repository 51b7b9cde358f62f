"""Read prompts in VidProM format (parquet or CSV with columns `uuid` and `prompt`)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

BUILTIN = "builtin"
REQUIRED_COLUMNS = ("uuid", "prompt")


class PromptSourceError(ValueError):
    """A prompt file is missing, unreadable or not in VidProM format."""


def builtin_path() -> Path:
    """The prompt file shipped with the package (a few hundred varied prompts for the local run)."""
    return Path(str(resources.files("vidprior.unic") / "data" / "prompts.csv"))


def resolve(source: str) -> Path:
    return builtin_path() if source == BUILTIN else Path(source)


def read_source(source: str) -> pd.DataFrame:
    """Rows with `uuid`, `prompt`, `source` (the name as given) and `source_row` (0-based)."""
    path = resolve(source)
    if not path.exists():
        raise PromptSourceError(f"{path}: prompt file not found (from source {source!r})")
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            columns = pq.read_schema(path).names
            missing = [c for c in REQUIRED_COLUMNS if c not in columns]
            if missing:
                raise PromptSourceError(_missing_message(path, missing, columns))
            df = pq.read_table(path, columns=list(REQUIRED_COLUMNS)).to_pandas()
        elif suffix in (".csv", ".tsv"):
            df = pd.read_csv(
                path,
                sep="\t" if suffix == ".tsv" else ",",
                dtype=str,
                keep_default_na=False,
                encoding="utf-8",
            )
        else:
            raise PromptSourceError(f"{path}: expected a .parquet, .csv or .tsv prompt file")
    except PromptSourceError:
        raise
    except Exception as exc:  # the readers raise many types; the user needs the file name
        raise PromptSourceError(f"{path}: could not read prompt file: {exc}") from None
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise PromptSourceError(_missing_message(path, missing, list(df.columns)))
    out = pd.DataFrame(
        {
            "uuid": df["uuid"].astype("string").fillna("").str.strip(),
            "prompt": df["prompt"].astype("string").fillna(""),
        }
    )
    out["source"] = source
    out["source_row"] = range(len(out))
    return out


def _missing_message(path: Path, missing: list[str], columns: list[str]) -> str:
    return f"{path}: missing VidProM column(s) {missing}; expected {list(REQUIRED_COLUMNS)}, found {columns}"
