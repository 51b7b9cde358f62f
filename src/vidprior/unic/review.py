"""Human review export: a seeded sample of positives as one self-contained HTML page plus a CSV.

The page embeds every frame strip as a base64 JPEG data URL, so it can be attached to an MLflow
run, mailed, or opened from any directory without the dataset next to it. Reviewers fill in
`review.csv` (reviewer_ok, reviewer_note) for the same ids, which gives a measured precision of
the positive labels rather than an impression of it.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from vidprior.io.atomic import atomic_path, write_text_atomic
from vidprior.io.media import read_image, read_video, sample_frame_indices
from vidprior.unic.judge_types import CRITERIA

INDEX = "index.html"
REVIEW_CSV = "review.csv"
# Frames are shrunk to this height in the strip: legible for judging, small enough that a
# page with a few hundred items stays a few MB.
STRIP_HEIGHT = 160
JPEG_QUALITY = 85


def _is_blank(value: Any) -> bool:
    return value is None or (not isinstance(value, str) and pd.isna(value)) or str(value).strip() == ""


def sample_positives(labels: pd.DataFrame, sample_size: int, seed: int) -> tuple[pd.DataFrame, int]:
    """Seeded sample of label == 1 rows; (sample sorted by id, number of positives available)."""
    label = pd.to_numeric(labels["label"], errors="coerce")
    # Sorting first makes the sample depend on the seed and the set of ids, not the row order.
    positives = labels[label == 1].sort_values("id", kind="stable").reset_index(drop=True)
    available = len(positives)
    take = min(max(int(sample_size), 0), available)
    picked = np.random.default_rng(seed).choice(available, size=take, replace=False) if take else []
    return positives.iloc[sorted(picked)].reset_index(drop=True), available


def _strip(frames: list[np.ndarray]) -> np.ndarray:
    resized = []
    for frame in frames:
        height, width = frame.shape[:2]
        new_width = max(1, round(width * STRIP_HEIGHT / height))
        resized.append(np.asarray(Image.fromarray(frame).resize((new_width, STRIP_HEIGHT), Image.BILINEAR)))
    gap = np.full((STRIP_HEIGHT, 4, 3), 255, dtype=np.uint8)  # white divider between frames
    pieces = [resized[0]]
    for frame in resized[1:]:
        pieces += [gap, frame]
    return np.concatenate(pieces, axis=1)


def _jpeg_data_url(image: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _item_strip(row: pd.Series, data_root: Path, frames_per_strip: int) -> tuple[str | None, str, str]:
    """(data URL or None, what it shows, error text)."""
    video_path = row.get("video_path")
    try:
        if _is_blank(video_path):
            # Image-only rows (Image-Priors ablation) have no video: show the image they were judged on.
            image = read_image(data_root / str(row.get("image_path")))
            return _jpeg_data_url(_strip([image])), "image (no video)", ""
        frames, _ = read_video(data_root / str(video_path))
        indices = sample_frame_indices(len(frames), frames_per_strip)
        shows = f"frames {indices} of {len(frames)}"
        return _jpeg_data_url(_strip([frames[i] for i in indices])), shows, ""
    except Exception as exc:  # one bad file must cost one item's strip, not the whole review page
        return None, "", f"{type(exc).__name__}: {exc}"


def _verdict(value: Any) -> tuple[str, str]:
    if value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value)):
        return "not asked", "na"
    return ("pass", "pass") if bool(value) else ("fail", "fail")


def _item_html(row: pd.Series, strip: tuple[str | None, str, str], criteria: list[str]) -> str:
    esc = html.escape
    url, shows, error = strip
    if url:
        media = f"<img src='{url}' alt='{esc(str(row['id']))}'><div class=meta>{esc(shows)}</div>"
    else:
        media = f"<div class=error>media unavailable: {esc(error)}</div>"
    verdicts = []
    for key in criteria:
        text, css = _verdict(row.get(key))
        verdicts.append(
            f"<tr><td title='{esc(CRITERIA.get(key, ''), quote=True)}'>{esc(key)}</td>"
            f"<td class={css}>{text}</td></tr>"
        )
    fields = [
        ("id", row.get("id")),
        ("prompt", row.get("prompt")),
        ("decided_by", row.get("decided_by")),
        ("reasons", row.get("reasons")),
        ("video", row.get("video_path")),
    ]
    info = "".join(
        f"<tr><th>{esc(name)}</th><td>{'' if _is_blank(value) else esc(str(value))}</td></tr>"
        for name, value in fields
    )
    return (
        f"<section id='{esc(str(row['id']), quote=True)}'>{media}"
        f"<div class=cols><table>{info}</table><table class=crit>{''.join(verdicts)}</table></div></section>"
    )


_STYLE = (
    "body{font-family:sans-serif;margin:1em} section{border-top:1px solid #ccc;padding:.6em 0}"
    " img{display:block;max-width:100%} .meta{color:#666;font-size:85%}"
    " .cols{display:flex;gap:2em;margin-top:.4em} th{text-align:left;padding-right:1em}"
    " .pass{color:#070} .fail{color:#b00;font-weight:bold} .na{color:#888}"
    " .error{color:#b00;background:#fee;padding:.5em} .note{background:#ffd;padding:.5em}"
)


def export_review(
    labels: pd.DataFrame,
    data_root: Path,
    out_dir: Path,
    sample_size: int,
    seed: int,
    frames_per_strip: int = 4,
) -> dict[str, int]:
    """Write `index.html` and `review.csv` for a seeded sample of positives; returns the counts."""
    data_root, out_dir = Path(data_root), Path(out_dir)
    sample, available = sample_positives(labels, sample_size, seed)
    criteria = [key for key in CRITERIA if key in labels.columns]
    items, media_errors = [], 0
    for _, row in sample.iterrows():
        strip = _item_strip(row, data_root, frames_per_strip)
        media_errors += strip[0] is None
        items.append(_item_html(row, strip, criteria))

    esc = html.escape
    if available < sample_size:
        note = (
            f"<p class=note>Only {available} positive(s) available, fewer than the requested sample of "
            f"{int(sample_size)}: all of them are shown.</p>"
        )
    else:
        note = f"<p>{len(sample)} of {available} positives, sampled with seed {int(seed)}.</p>"
    legend = "".join(f"<li><b>{esc(key)}</b>: {esc(text)}</li>" for key, text in CRITERIA.items())
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>Uni-C positives review</title>"
        f"<style>{_STYLE}</style></head><body><h1>Uni-C positives review</h1>{note}"
        f"<p>Record verdicts in {REVIEW_CSV} (reviewer_ok: yes/no, reviewer_note: free text).</p>"
        f"<details><summary>criteria</summary><ul>{legend}</ul></details>"
        + "".join(items)
        + "</body></html>\n"
    )
    write_text_atomic(out_dir / INDEX, page)

    sheet = pd.DataFrame(
        {
            "id": sample["id"].astype(str) if len(sample) else pd.Series(dtype="string"),
            "prompt": sample.get("prompt", ""),
            "reviewer_ok": "",
            "reviewer_note": "",
        }
    )
    with atomic_path(out_dir / REVIEW_CSV) as tmp:
        sheet.to_csv(tmp, index=False)
    return {
        "review_items": len(sample),
        "positives_available": available,
        "sample_size_requested": int(sample_size),
        "media_errors": int(media_errors),
    }
