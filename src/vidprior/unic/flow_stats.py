"""Stage `unic.flow`: optical-flow statistics per video and the paper's flow rule (Uni-C Suppl. VI).

For every video: the flow statistics of `vidprior.flow` at the analysis resolution of the params,
then `vidprior.unic.flow_rule` (pass, or the clause that fired). A video that cannot be read, has
fewer than two frames or yields a non-finite statistic is rejected with the reason; the rest are
all in the manifest, passed or not, so the labels stage can say why a video is negative.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from vidprior.config import Params
from vidprior.io.atomic import atomic_path
from vidprior.io.checkpoint import clear_partials
from vidprior.io.manifest import REPORT_DIR, write_manifest, write_rejects
from vidprior.io.media import MediaError, read_video
from vidprior.unic.flow_rule import STAT_COLUMNS
from vidprior.unic.generation import fingerprint, ok, rejected, run_batches, split_records
from vidprior.unic.stage_inputs import input_dir, read_input_manifest

STAGE = "unic.flow"
BATCH = 32  # videos per checkpoint


def statistics_record(video_id: str, path: Path, params: Params) -> dict:
    """Flow statistics and rule verdict of one video, or a reject record with the reason."""
    from vidprior.flow import video_flow_statistics
    from vidprior.unic.flow_rule import apply_flow_rule

    cfg = params.unic.flow
    try:
        frames, _ = read_video(path)
    except MediaError as exc:
        return rejected(video_id, "unreadable_video", str(exc))
    if len(frames) < 2:
        return rejected(video_id, "too_few_frames", f"{path}: {len(frames)} frame(s); flow needs at least 2")
    stats = video_flow_statistics(frames, cfg.backend, (cfg.analysis_height, cfg.analysis_width))
    values = {name: float(getattr(stats, name)) for name in STAT_COLUMNS}
    bad = [name for name, value in values.items() if not np.isfinite(value)]
    if bad:
        detail = ", ".join(f"{name}={values[name]}" for name in bad)
        return rejected(video_id, "non_finite_statistic", f"{path}: {detail}")
    verdict = apply_flow_rule(stats, params.unic.flow_rule)
    return ok(
        video_id,
        **values,
        n_pairs=int(stats.n_pairs),
        flow_pass=bool(verdict.passed),
        flow_clause=verdict.clause,
    )


def write_histograms(manifest: pd.DataFrame, path: Path) -> None:
    """Histogram of each statistic, split by the rule's verdict: the plot logged to MLflow."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(12, 6.5))
    for ax, column in zip(axes.ravel(), STAT_COLUMNS, strict=True):
        for passed, colour in ((True, "tab:green"), (False, "tab:red")):
            values = manifest.loc[manifest["flow_pass"] == passed, column]
            if len(values):
                label = "pass" if passed else "negative"
                ax.hist(values, bins=30, alpha=0.6, color=colour, label=f"{label} ({len(values)})")
        ax.set_title(column)
        ax.legend(fontsize=7)
    fig.suptitle(f"flow statistics of {len(manifest)} videos (px at the analysis resolution)")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    plt.close(fig)


def run(params: Params, inputs: Sequence[Path | str] | None, output_dir: Path) -> dict[str, float]:
    """inputs: [videos stage output dir]. Writes manifest.parquet (stats + verdict) and rejects."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    videos_dir = input_dir(inputs, 0, "videos")
    videos = read_input_manifest(inputs, 0, "videos", ["path", "sha256"])

    result = run_batches(
        videos[["id", "path", "sha256"]],
        output_dir=output_dir,
        name="flow",
        config_fingerprint=fingerprint(
            params.unic.flow.model_dump(mode="json"), params.unic.flow_rule.model_dump()
        ),
        batch_size=BATCH,
        process=lambda batch: [
            statistics_record(r.id, videos_dir / r.path, params) for r in batch.itertuples()
        ],
    )
    kept, rejects = split_records(result.records, STAGE)
    columns = ["id", *STAT_COLUMNS, "n_pairs", "flow_pass", "flow_clause"]
    manifest = (kept if len(kept) else pd.DataFrame(columns=columns))[columns]
    manifest = manifest.astype(
        {c: "float64" for c in STAT_COLUMNS} | {"n_pairs": "int64", "flow_pass": "bool"}
    )
    manifest = manifest.assign(
        flow_backend=params.unic.flow.backend,
        analysis_height=params.unic.flow.analysis_height,
        analysis_width=params.unic.flow.analysis_width,
    ).sort_values("id", kind="stable")
    if len(manifest) + len(rejects) != len(videos):
        raise AssertionError(f"{STAGE}: {len(manifest)} + {len(rejects)} rejected != {len(videos)} videos")

    write_manifest(manifest, output_dir)
    write_rejects(rejects, output_dir)
    if len(manifest):
        write_histograms(manifest, output_dir / REPORT_DIR / "flow_statistics.png")
    clear_partials(output_dir)

    metrics: dict[str, float] = {
        "videos_read": len(videos),
        "videos_measured": len(manifest),
        "videos_rejected": len(rejects),
        "flow_passed": int(manifest["flow_pass"].sum()),
        "flow_negative": int((~manifest["flow_pass"]).sum()),
        "resumed_batches": result.reused_batches,
        "stage_seconds": round(time.perf_counter() - started, 4),
    }
    if len(manifest):
        metrics.update({f"median_{c}": float(manifest[c].median()) for c in ("mean_mag", "var_mag")})
        clauses = manifest.loc[~manifest["flow_pass"], "flow_clause"].str.split(":").str[0]
        metrics.update({f"flow_clause_{k}": int(v) for k, v in clauses.value_counts().sort_index().items()})
    return metrics
