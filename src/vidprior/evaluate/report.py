"""What an evaluate stage leaves for people and for promotion: the paper's table, evaluation.json, plots.

Both evaluate stages (`unic.evaluate`, `udpdiff.evaluate`) build rows of the paper's table (a method,
the videos it was measured on, the measured value of each metric next to the paper's) and hand them
here. `table.csv` holds the numbers at the table's scale (e.g. SC/BC/MS x100, as the UDPDiff paper
prints them), `table.md` the same as the paper lays it out, `evaluation.json` the keys promotion
reads (`<group>.<metric>` at the metric's own scale) and `plots/<metric>.png` one bar chart per
metric, measured next to paper.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from vidprior.io.atomic import atomic_path, write_text_atomic

EVALUATION_FILE = "evaluation.json"
TABLE_CSV = "table.csv"
TABLE_MD = "table.md"
PLOTS_DIR = "plots"
# Logged as MLflow artifacts of the stage's run (`vidprior.stages` reads a stage module's ARTIFACTS).
ARTIFACTS = {"plots": PLOTS_DIR, "table": TABLE_MD, "table_csv": TABLE_CSV, "evaluation": EVALUATION_FILE}
PAPER_SUFFIX = "_paper"


@dataclass(frozen=True)
class Column:
    """A metric column of the table: its key, the paper's header, and the scale the paper prints."""

    metric: str
    label: str
    scale: float = 1.0
    digits: int = 4


@dataclass(frozen=True)
class Row:
    """One method of the table; `measured` and `paper` at the metrics' own scale (NaN: not reported)."""

    method: str
    group: str  # the `<group>` of the evaluation keys (a workflow, a task) or "" for the base model
    variant: str  # "baseline" or "candidate"
    videos: int
    measured: Mapping[str, float]
    paper: Mapping[str, float]
    plot_label: str = ""  # the method with its group, where the table's method alone is ambiguous


def table_frame(rows: Sequence[Row], columns: Sequence[Column]) -> pd.DataFrame:
    """method, group, variant, videos, then `<metric>` and `<metric>_paper` per column, table-scaled."""
    records = []
    for row in rows:
        record = {"method": row.method, "group": row.group, "variant": row.variant, "videos": row.videos}
        for column in columns:
            record[column.metric] = _scaled(row.measured.get(column.metric), column.scale)
            record[column.metric + PAPER_SUFFIX] = _scaled(row.paper.get(column.metric), column.scale)
        records.append(record)
    names = ["method", "group", "variant", "videos"]
    names += [n for c in columns for n in (c.metric, c.metric + PAPER_SUFFIX)]
    return pd.DataFrame(records, columns=names)


def _scaled(value: float | None, scale: float) -> float:
    return float("nan") if value is None else float(value) * scale


def _cell(value: float, digits: int) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def markdown(table: pd.DataFrame, columns: Sequence[Column], title: str, notes: Sequence[str] = ()) -> str:
    """The table as the paper prints it, a measured column then the paper's for every metric."""
    header = ["method", "videos"] + [h for c in columns for h in (c.label, f"{c.label} (paper)")]
    lines = [f"### {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for record in table.to_dict("records"):
        cells = [str(record["method"]), str(record["videos"])]
        for c in columns:
            cells += [_cell(record[c.metric], c.digits), _cell(record[c.metric + PAPER_SUFFIX], c.digits)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines + [""] + [f"- {note}" for note in notes]) + "\n"


def _jsonable(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_evaluation(
    output_dir: Path,
    *,
    model: str,
    version: str,
    candidate: Mapping[str, float],
    baseline: Mapping[str, float],
    paper: Mapping[str, Mapping[str, float]],
    tables: Sequence[pd.DataFrame],
) -> dict:
    """evaluation.json: the registered model, the keys promotion reads, the paper's and the table rows.

    Non-finite values (a metric that could not be measured) are written as null.
    """
    record = {
        "model": model,
        "version": str(version),
        "candidate": {k: _jsonable(float(v)) for k, v in sorted(candidate.items())},
        "baseline": {k: _jsonable(float(v)) for k, v in sorted(baseline.items())},
        "paper": {
            variant: {k: _jsonable(float(v)) for k, v in sorted(values.items())}
            for variant, values in paper.items()
        },
        "table": [
            {k: _jsonable(v) for k, v in row.items()} for table in tables for row in table.to_dict("records")
        ],
    }
    write_text_atomic(Path(output_dir) / EVALUATION_FILE, json.dumps(record, indent=2) + "\n")
    return record


def write_tables(output_dir: Path, tables: Sequence[pd.DataFrame], markdown_text: str) -> None:
    """table.csv (every table's rows, one header) and table.md."""
    output_dir = Path(output_dir)
    with atomic_path(output_dir / TABLE_CSV) as tmp:
        pd.concat(list(tables), ignore_index=True).to_csv(tmp, index=False)
    write_text_atomic(output_dir / TABLE_MD, markdown_text)


def bar_charts(output_dir: Path, rows: Sequence[Row], columns: Sequence[Column]) -> list[Path]:
    """plots/<metric>.png: per method, the measured value next to the paper's (table scale)."""
    # The object API on the Agg canvas: no pyplot (a second of import, and a GUI backend's state).
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    written = []
    for column in columns:
        shown = [r for r in rows if column.metric in r.measured or column.metric in r.paper]
        if not shown:
            continue
        labels = [r.plot_label or r.method for r in shown]
        measured = [_scaled(r.measured.get(column.metric), column.scale) for r in shown]
        paper = [_scaled(r.paper.get(column.metric), column.scale) for r in shown]
        x = np.arange(len(shown))
        fig = Figure(figsize=(max(4.0, 1.3 * len(shown) + 2.5), 3.2), dpi=100)
        FigureCanvasAgg(fig)
        ax = fig.subplots()
        ax.bar(x - 0.2, np.nan_to_num(measured), 0.4, label="measured", color="#3b75af")
        ax.bar(x + 0.2, np.nan_to_num(paper), 0.4, label="paper", color="#bbbbbb", hatch="//")
        ax.set_xticks(x, labels, rotation=15, ha="right", fontsize=8)
        ax.set_title(column.label + ("" if column.scale == 1 else f" (x{column.scale:g})"), fontsize=10)
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))  # beside the bars, never on them
        fig.tight_layout()
        path = Path(output_dir) / PLOTS_DIR / f"{column.metric}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png")
        written.append(path)
    return written


def flat_metrics(candidate: Mapping[str, float], baseline: Mapping[str, float]) -> dict[str, float]:
    """The stage's returned metrics: `candidate.<key>` and `baseline.<key>`."""
    out = {f"candidate.{k}": float(v) for k, v in candidate.items()}
    out.update({f"baseline.{k}": float(v) for k, v in baseline.items()})
    return out
