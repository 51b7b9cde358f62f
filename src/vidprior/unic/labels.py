"""Stage `unic.labels`: the training table of Uni-C, one label per SD image (Sec. III-C, Suppl. VI).

The video decides the label of the image it started from:
- the flow rule said negative                    -> label 0, decided by `flow_rule` (its clause);
- the flow rule passed and the judge labelled it -> label 1 only if all criteria passed, `judge`;
- in image-only mode (Image-Priors ablation)     -> the judge's verdict on the image alone.
Every image of the images manifest ends up labelled or in `rejects.parquet` with the reason it
could not be labelled (its video was rejected, its flow could not be measured, the judge left it
unlabelled), carried over from the stage that dropped it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from vidprior.config import Params
from vidprior.io.manifest import write_manifest, write_rejects
from vidprior.unic.judge_types import CRITERIA
from vidprior.unic.stage_inputs import read_input_manifest, read_input_rejects

STAGE = "unic.labels"
FLOW_RULE, JUDGE = "flow_rule", "judge"
LABEL_COLUMNS = [
    "id",
    "prompt_id",
    "prompt",
    "image_path",
    "video_path",
    "image_seed",
    "label",
    "decided_by",
    "reasons",
    "flow_clause",
    "judge",
    *CRITERIA,
]


def _upstream_reasons(rejects: pd.DataFrame) -> dict[str, tuple[str, str]]:
    return {r.id: (f"{r.stage}:{r.reason}", str(r.detail)) for r in rejects.itertuples()}


def _judge_reasons(row) -> str:
    failed = [c for c in str(row.failed_criteria).split(",") if c]
    return "all criteria passed" if not failed else "failed " + ", ".join(failed)


def run(params: Params, inputs: Sequence[Path | str] | None, output_dir: Path) -> dict[str, float]:
    """inputs: [images dir, videos dir, flow dir, judge dir]; in image-only mode [images dir, judge dir]."""
    image_only = params.unic.judge.image_only
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    images = read_input_manifest(inputs, 0, "images", ["prompt_id", "prompt", "path", "seed"])
    if image_only:
        videos = pd.DataFrame(columns=["id", "path"])
        flow = pd.DataFrame(columns=["id", "flow_pass", "flow_clause"])
        judged = read_input_manifest(inputs, 1, "judge", ["positive", "failed_criteria", "judge"])
        lost = _upstream_reasons(read_input_rejects(inputs, 1, "judge"))
    else:
        videos = read_input_manifest(inputs, 1, "videos", ["path"])
        flow = read_input_manifest(inputs, 2, "flow", ["flow_pass", "flow_clause"])
        judged = read_input_manifest(inputs, 3, "judge", ["positive", "failed_criteria", "judge"])
        lost = {}
        for index, name in ((1, "videos"), (2, "flow"), (3, "judge")):
            lost.update(_upstream_reasons(read_input_rejects(inputs, index, name)))

    table = images.rename(columns={"path": "image_path", "seed": "image_seed"})[
        ["id", "prompt_id", "prompt", "image_path", "image_seed"]
    ]
    table = table.merge(videos[["id", "path"]].rename(columns={"path": "video_path"}), on="id", how="left")
    table = table.merge(flow[["id", "flow_pass", "flow_clause"]], on="id", how="left")
    verdicts = judged[["id", "positive", "failed_criteria", "judge", *CRITERIA]]
    table = table.merge(verdicts, on="id", how="left")

    measured = set(flow["id"])
    labels, rejects = [], []
    for row in table.itertuples(index=False):
        record = row._asdict()
        if not image_only and row.id not in measured:
            reason, detail = lost.get(row.id, ("labels:no_video", "no video and no upstream reject for it"))
        elif not image_only and not bool(row.flow_pass):
            labels.append({**record, "label": 0, "decided_by": FLOW_RULE, "reasons": row.flow_clause})
            continue
        elif pd.notna(row.positive):
            labels.append(
                {
                    **record,
                    "label": int(bool(row.positive)),
                    "decided_by": JUDGE,
                    "reasons": _judge_reasons(row),
                }
            )
            continue
        else:
            reason, detail = lost.get(row.id, ("labels:not_judged", "no judge verdict and no reject for it"))
        rejects.append({"id": row.id, "stage": STAGE, "reason": reason, "detail": detail})

    manifest = pd.DataFrame(labels, columns=[*table.columns, "label", "decided_by", "reasons"])
    manifest = manifest.assign(
        video_path=manifest["video_path"].fillna("").astype(str),
        flow_clause=manifest["flow_clause"].fillna("").astype(str),
        judge=manifest["judge"].fillna("").astype(str),
        label=manifest["label"].astype("int64"),
    )
    for key in CRITERIA:
        manifest[key] = manifest[key].astype("boolean")
    manifest = manifest[LABEL_COLUMNS].sort_values("id", kind="stable")
    rejects_df = pd.DataFrame(rejects, columns=["id", "stage", "reason", "detail"])
    if len(manifest) + len(rejects_df) != len(images):
        raise AssertionError(f"{STAGE}: {len(manifest)} + {len(rejects_df)} rejected != {len(images)} images")

    write_manifest(manifest, output_dir)
    write_rejects(rejects_df, output_dir)

    positives = int(manifest["label"].sum())
    return {
        "images": len(images),
        "labelled": len(manifest),
        "unlabelled": len(rejects_df),
        "positives": positives,
        "negatives": len(manifest) - positives,
        "positive_fraction": positives / len(manifest) if len(manifest) else 0.0,
        "decided_by_flow_rule": int((manifest["decided_by"] == FLOW_RULE).sum()),
        "decided_by_judge": int((manifest["decided_by"] == JUDGE).sum()),
        "stage_seconds": round(time.perf_counter() - started, 4),
    }
