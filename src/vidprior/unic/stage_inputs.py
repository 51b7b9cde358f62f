"""Reading a stage's upstream outputs, with errors that say which input is missing or wrong."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from vidprior.io.manifest import REJECTS, read_manifest, read_table


def input_dir(inputs: Sequence[Path | str] | None, index: int, name: str) -> Path:
    if not inputs or len(inputs) <= index or inputs[index] is None or not str(inputs[index]):
        raise ValueError(f"missing input #{index + 1}: the {name} stage's output directory")
    path = Path(inputs[index])
    if not path.is_dir():
        raise ValueError(f"{path}: {name} input is not a directory (expected the {name} stage's output)")
    return path


def read_input_manifest(
    inputs: Sequence[Path | str] | None, index: int, name: str, required: list[str] | None = None
) -> pd.DataFrame:
    return read_manifest(input_dir(inputs, index, name), required)


def read_input_rejects(inputs: Sequence[Path | str] | None, index: int, name: str) -> pd.DataFrame:
    path = input_dir(inputs, index, name) / REJECTS
    return read_table(path) if path.exists() else pd.DataFrame(columns=["id", "stage", "reason", "detail"])
