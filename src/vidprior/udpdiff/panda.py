"""Panda-70M's CSV, expanded into one record per clip over a directory of local clip files.

The released CSVs (`panda70m_training_*.csv`, `panda70m_{validation,testing}.csv`) have one row per
source video with the columns `videoID, url, timestamp, caption, matching_score`; the last three
hold Python-literal lists with one entry per clip, e.g.::

    timestamp:      [['0:00:00.000', '0:00:05.005'], ['0:00:07.474', '0:00:12.512']]
    caption:        ['A man is talking to the camera.', 'A dog runs on the beach.']
    matching_score: [0.45, 0.51]

(Panda-70M's own download tool `eval`s those cells; this reader uses `ast.literal_eval`, which
accepts literals only.) Timestamps are `H:MM:SS.fff` strings, as the splitting tool writes them.

Local clip files follow Panda-70M's splitting tool (`splitting/video_splitting.py` writes
`{video_name}.{i}.mp4`, i = 0-based clip number in the row): `CLIP_FILE_TEMPLATE`, relative to the
clips directory. A clip's id is `{videoID}.{index}`, the file name without `.mp4`.

Nothing is dropped silently: every clip (or a whole row, when its cells cannot be split into clips)
is either returned or rejected with a reason (`REASONS`). Only a CSV without the expected columns
raises, naming the file and the columns.
"""

from __future__ import annotations

import ast
import csv
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from vidprior.unic.generation import rejected

COLUMNS = ("videoID", "url", "timestamp", "caption", "matching_score")
CLIP_FILE_TEMPLATE = "{video_id}.{index}.mp4"
REASONS = (
    "malformed_row",  # wrong field count, a cell that is not a list literal, lists of unequal length
    "malformed_timestamp",  # not a pair of H:MM:SS.fff strings, or end <= start
    "malformed_caption",  # not a non-blank string
    "malformed_matching_score",  # not a finite number
    "duplicate_id",  # the same videoID twice in one CSV
    "low_matching_score",  # below min_matching_score
    "missing_clip",  # no local clip file
)
# YouTube ids; anything else could name a path outside the clips directory.
_VIDEO_ID = re.compile(r"^[A-Za-z0-9_-]+$")
_TIMECODE = re.compile(r"^(\d+):([0-5]\d):([0-5]\d(?:\.\d+)?)$")
_DETAIL_CHARS = 200
# Some captions are long; the csv module's default field limit (128 KiB) is for safety, not format.
_FIELD_LIMIT = 1 << 24


class PandaFormatError(ValueError):
    """The CSV itself is not a Panda-70M CSV (unreadable, or without the expected columns)."""


@dataclass(frozen=True)
class PandaClip:
    id: str
    video_id: str
    clip_index: int
    url: str
    start: float  # seconds into the source video
    end: float
    caption: str
    matching_score: float
    source_path: Path  # the local clip file


@dataclass
class PandaClips:
    clips: list[PandaClip] = field(default_factory=list)
    rejects: list[dict] = field(default_factory=list)  # vidprior.unic.generation.rejected records
    capped: bool = False  # max_clips was reached before the end of the CSV

    @property
    def items(self) -> int:
        return len(self.clips) + len(self.rejects)


def clip_file_name(video_id: str, index: int) -> str:
    return CLIP_FILE_TEMPLATE.format(video_id=video_id, index=index)


def parse_timecode(text: str) -> float:
    """'H:MM:SS.fff' (fraction optional) -> seconds; ValueError otherwise."""
    match = _TIMECODE.match(text.strip()) if isinstance(text, str) else None
    if not match:
        raise ValueError(f"expected a timecode 'H:MM:SS.fff', got {text!r}")
    hours, minutes, seconds = match.groups()
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


def _short(value: object) -> str:
    text = " ".join(str(value).split())
    return text if len(text) <= _DETAIL_CHARS else text[: _DETAIL_CHARS - 3] + "..."


def _literal_list(cell: str, column: str) -> list:
    try:
        value = ast.literal_eval(cell.strip())
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        raise ValueError(f"{column}: not a Python list literal: {_short(cell)!r}") from None
    if not isinstance(value, list):
        raise ValueError(f"{column}: expected a list, got {type(value).__name__}: {_short(cell)!r}")
    return value


def _span(value: object) -> tuple[float, float]:
    if not (isinstance(value, list | tuple) and len(value) == 2):
        raise ValueError(f"expected [start, end], got {_short(value)!r}")
    start, end = parse_timecode(value[0]), parse_timecode(value[1])
    if end <= start:
        raise ValueError(f"end {value[1]!r} is not after start {value[0]!r}")
    return start, end


def _score(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"expected a finite number, got {_short(value)!r}")
    return float(value)


def _rows(path: Path) -> Iterator[tuple[int, dict]]:
    """(data row number from 1, row) of a CSV whose header has `COLUMNS`."""
    csv.field_size_limit(_FIELD_LIMIT)
    try:
        handle = open(path, newline="", encoding="utf-8")  # noqa: SIM115 - closed by the with below
    except OSError as exc:
        raise PandaFormatError(f"{path}: cannot open the Panda-70M CSV: {exc}") from None
    with handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or []
        missing = [c for c in COLUMNS if c not in header]
        if missing:
            raise PandaFormatError(
                f"{path}: missing column(s) {missing}; a Panda-70M CSV has the columns "
                f"{', '.join(COLUMNS)}; found {header}"
            )
        try:
            yield from enumerate(reader, start=1)
        except (csv.Error, UnicodeDecodeError) as exc:
            raise PandaFormatError(
                f"{path}: unreadable CSV after data row {reader.line_num}: {exc}"
            ) from None


def _row_clips(number: int, row: dict) -> tuple[str, list[dict]] | dict:
    """The row's clip cells, one dict per clip, or a row-level reject record."""
    video_id = (row.get("videoID") or "").strip()
    row_id = video_id if _VIDEO_ID.match(video_id) else f"row{number}"
    if None in row or any(row.get(c) is None for c in COLUMNS):
        return rejected(row_id, "malformed_row", f"data row {number}: wrong number of fields")
    if not _VIDEO_ID.match(video_id):
        return rejected(row_id, "malformed_row", f"data row {number}: videoID {_short(video_id)!r}")
    try:
        spans = _literal_list(row["timestamp"], "timestamp")
        captions = _literal_list(row["caption"], "caption")
        scores = _literal_list(row["matching_score"], "matching_score")
    except ValueError as exc:
        return rejected(row_id, "malformed_row", f"data row {number}: {exc}")
    if not spans or not len(spans) == len(captions) == len(scores):
        lengths = f"{len(spans)} timestamps, {len(captions)} captions, {len(scores)} scores"
        return rejected(row_id, "malformed_row", f"data row {number}: one entry per clip expected: {lengths}")
    cells = [
        {"span": span, "caption": caption, "score": score}
        for span, caption, score in zip(spans, captions, scores, strict=True)
    ]
    return video_id, cells


def _clip(
    video_id: str, index: int, url: str, cell: dict, clips_dir: Path, min_score: float
) -> PandaClip | dict:
    clip_id = f"{video_id}.{index}"
    try:
        start, end = _span(cell["span"])
    except ValueError as exc:
        return rejected(clip_id, "malformed_timestamp", str(exc))
    caption = cell["caption"]
    if not isinstance(caption, str) or not caption.strip():
        return rejected(clip_id, "malformed_caption", f"expected a non-blank string, got {_short(caption)!r}")
    try:
        score = _score(cell["score"])
    except ValueError as exc:
        return rejected(clip_id, "malformed_matching_score", str(exc))
    if score < min_score:
        return rejected(clip_id, "low_matching_score", f"matching_score {score:.4g} < {min_score:g}")
    path = clips_dir / clip_file_name(video_id, index)
    if not path.is_file():
        return rejected(clip_id, "missing_clip", f"{path}: no such clip file")
    return PandaClip(clip_id, video_id, index, url, start, end, " ".join(caption.split()), score, path)


def read_panda_csv(
    csv_path: Path, clips_dir: Path, *, min_matching_score: float = 0.0, max_clips: int | None = None
) -> PandaClips:
    """Clips of a Panda-70M CSV whose files are in `clips_dir`, in CSV order, and the rejects.

    `max_clips` caps the items read (clips, or rows that could not be split into clips) in CSV
    order, before any filter, so a capped run reads only the head of a 70M-clip CSV.
    """
    csv_path, clips_dir = Path(csv_path), Path(clips_dir)
    if not clips_dir.is_dir():
        raise PandaFormatError(f"{clips_dir}: clips directory not found (for {csv_path})")
    out = PandaClips()
    seen: set[str] = set()

    def full() -> bool:
        return max_clips is not None and out.items >= max_clips

    for number, row in _rows(csv_path):
        if full():
            out.capped = True
            break
        parsed = _row_clips(number, row)
        if isinstance(parsed, dict):
            out.rejects.append(parsed)
            continue
        video_id, cells = parsed
        duplicate = video_id in seen
        seen.add(video_id)
        url = (row.get("url") or "").strip()
        for index, cell in enumerate(cells):
            if full():
                out.capped = True
                break
            if duplicate:
                out.rejects.append(
                    rejected(
                        f"{video_id}.{index}#row{number}", "duplicate_id", f"videoID {video_id} repeated"
                    )
                )
                continue
            item = _clip(video_id, index, url, cell, clips_dir, min_matching_score)
            (out.rejects if isinstance(item, dict) else out.clips).append(item)
    return out
