"""Stage `udpdiff.dataset`: the four Panda-Dense labelling outputs joined into one self-contained dataset.

Inputs: the output directories of `udpdiff.clips`, `udpdiff.captions`, `udpdiff.segment` and
`udpdiff.depth` (layouts in their modules and the stage contracts). Every id the clips stage
accounted for ends up kept or rejected here:

* rejected by the clips stage: carried as `udpdiff.clips:<reason>`;
* kept by the clips stage but rejected by a later stage: `<stage>:<reason>` with that stage's
  detail (the first of captions, segment, depth that rejected it; the detail names the others);
* kept by the clips stage but in neither the manifest nor the rejects of a later stage:
  `missing_in_<stage>` (that stage lost it);
* joined, then measured on the files themselves (every video decoded, the npz values read):
  `unreadable_media` (a file that cannot be decoded or lacks its array), `malformed_palette`
  (not the JSON `{"0": [0, 0, 0], "1": [r, g, b], ...}`), `shape_mismatch` (the clip, segmentation
  and depth videos and the ids/depth arrays disagree in frame count or size), `palette_mismatch`
  (the segmentation video has a colour that is not in the palette, or a palette entity that never
  appears) and `seg_ids_mismatch` (the ids array painted with the palette is not the video).

A file the manifest names that does not exist is not a reject but a broken upstream output: the
item stays, its measurements are empty, and the Great Expectations suite
(`vidprior.validation.dense_suites`) fails the stage. The suite runs on the measured values (one
row per dataset item, also saved as `report/dense_items.parquet`) and on the accounting of every
clip id; `report/dense.json` (+ `.html`) is saved before a failed suite raises `ValidationFailed`.

Output: `clips/{id}.mp4`, `seg/{id}.mp4`, `seg/{id}.npz`, `depth/{id}.mp4`, `depth/{id}.npz`,
hard-linked from the inputs (copied where linking fails, e.g. across filesystems; stages replace
files atomically and never write into them, so a link cannot be changed under another stage),
manifest.parquet (the contract's columns, then every other upstream column as provenance, prefixed
with the stage when a name is taken, e.g. `segment_frames`) and rejects.parquet.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from vidprior.config import Params
from vidprior.io.atomic import atomic_path
from vidprior.io.checkpoint import clear_partials
from vidprior.io.manifest import REJECT_COLUMNS, REPORT_DIR, ManifestError, write_manifest, write_rejects
from vidprior.io.manifest import write_table as write_parquet
from vidprior.io.media import MediaError, read_video
from vidprior.udpdiff.pixelplanes import BACKGROUND_COLOUR, BACKGROUND_ID, decode_depth
from vidprior.unic.generation import fingerprint, ok, rejected, run_batches, split_records
from vidprior.unic.stage_inputs import input_dir, read_input_manifest, read_input_rejects
from vidprior.validation.dense_suites import DENSE_ITEM_COLUMNS, DENSE_MEDIA, DIMENSIONS

STAGE = "udpdiff.dataset"
BATCH = 16  # items measured and checkpointed together
REPORT_NAME = "dense.json"
ITEMS_TABLE = "dense_items.parquet"
# (input name, the stage that writes it), in the order of the stage's inputs.
INPUTS = (
    ("clips", "udpdiff.clips"),
    ("captions", "udpdiff.captions"),
    ("segment", "udpdiff.segment"),
    ("depth", "udpdiff.depth"),
)
REQUIRED = {
    "clips": ["clip_path", "frames", "height", "width", "fps"],
    "captions": ["short_caption", "long_caption"],
    "segment": ["seg_path", "seg_ids_path", "palette", "entities", "frames", "height", "width"],
    "depth": ["depth_path", "depth_values_path", "frames", "height", "width"],
}
# Dataset media: (input, its manifest column, the file here, npz array name, allowed dtype kinds).
# Keyed by the suite's media names (clip_video, seg_video, seg_ids, depth_video, depth_values).
MEDIA = dict(
    zip(
        DENSE_MEDIA,
        (
            ("clips", "clip_path", "clips/{id}.mp4", None, None),
            ("segment", "seg_path", "seg/{id}.mp4", None, None),
            ("segment", "seg_ids_path", "seg/{id}.npz", "ids", "iu"),
            ("depth", "depth_path", "depth/{id}.mp4", None, None),
            ("depth", "depth_values_path", "depth/{id}.npz", "depth", "f"),
        ),
        strict=True,
    )
)
MEDIA_DIRS = ("clips", "seg", "depth")
# The contract's columns and the input each comes from (the paths are this directory's).
CORE = {
    "short_caption": "captions",
    "long_caption": "captions",
    "palette": "segment",
    "entities": "segment",
    "frames": "clips",
    "height": "clips",
    "width": "clips",
    "fps": "clips",
}
MANIFEST_COLUMNS = ["id", *(MEDIA[m][1] for m in DENSE_MEDIA), *CORE]
REASONS = (
    "missing_in_<stage>",
    "unreadable_media",
    "malformed_palette",
    "shape_mismatch",
    "palette_mismatch",
    "seg_ids_mismatch",
)
_EXAMPLES = 5


# --- reading the inputs --------------------------------------------------------------------------


def _rejects_of(inputs: Sequence[Path | str], index: int, name: str) -> pd.DataFrame:
    table = read_input_rejects(inputs, index, name)
    missing = [c for c in ("id", "reason") if c not in table.columns]
    if missing:
        path = input_dir(inputs, index, name) / "rejects.parquet"
        raise ManifestError(f"{path}: missing column(s) {missing}; expected {REJECT_COLUMNS}")
    return table


def _check_kept_xor_rejected(manifest: pd.DataFrame, rejects: pd.DataFrame, where: Path) -> None:
    both = sorted(set(manifest["id"]) & set(rejects["id"].dropna()))
    if both:
        raise ManifestError(
            f"{where}: id(s) {both[:_EXAMPLES]} ({len(both)} in all) are both in manifest.parquet and in "
            "rejects.parquet; a stage keeps or rejects an item, not both"
        )


def parse_palette(text: object) -> dict[int, tuple[int, int, int]]:
    """A manifest's palette JSON `{"0": [0, 0, 0], "1": [r, g, b], ...}` -> {entity id: colour}."""
    expected = 'a JSON object {"<entity id>": [r, g, b], ...} with ids >= 0 and channels in 0..255'
    try:
        data = json.loads(text) if isinstance(text, str) else None
    except json.JSONDecodeError as exc:
        raise ValueError(f"palette: not JSON ({exc}); expected {expected}") from None
    if not isinstance(data, dict) or not data:
        raise ValueError(f"palette: expected {expected}, got {str(text)[:80]!r}")
    palette: dict[int, tuple[int, int, int]] = {}
    for key, colour in data.items():
        ok_key = isinstance(key, str) and key.isdigit()
        ok_colour = (
            isinstance(colour, list)
            and len(colour) == 3
            and all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 255 for c in colour)
        )
        if not (ok_key and ok_colour):
            raise ValueError(f"palette: entry {key!r}: {colour!r}; expected {expected}")
        palette[int(key)] = (colour[0], colour[1], colour[2])
    return palette


def _text(value: object) -> str:
    """A table cell as stripped text; null (None, NaN, NA) is ''."""
    return "" if value is None or (pd.api.types.is_scalar(value) and pd.isna(value)) else str(value).strip()


def _join_rejects(
    clip_ids: list[str], manifests: dict[str, pd.DataFrame], rejects: dict[str, pd.DataFrame], dirs: dict
) -> tuple[list[str], list[dict]]:
    """(ids every later stage kept, reject rows for the others) for the ids the clips stage kept."""
    by_id = {name: rejects[name].groupby("id", sort=False) for name, _ in INPUTS[1:]}
    groups = {name: set(rejects[name]["id"].dropna()) for name, _ in INPUTS[1:]}
    kept_ids = {name: set(manifests[name]["id"]) for name, _ in INPUTS[1:]}
    joined, rows = [], []
    for item in clip_ids:
        problems: list[tuple[str, str]] = []
        for name, stage in INPUTS[1:]:
            if item in kept_ids[name]:
                continue
            if item not in groups[name]:
                detail = f"kept by udpdiff.clips, but in neither manifest nor rejects of {dirs[name]}"
                problems.append((f"missing_in_{stage}", detail))
                continue
            for row in by_id[name].get_group(item).to_dict("records"):
                origin = _text(row.get("stage")) or stage
                problems.append((f"{origin}:{_text(row['reason'])}", _text(row.get("detail"))))
        if not problems:
            joined.append(item)
            continue
        (reason, detail), others = problems[0], problems[1:]
        if others:
            detail += "; also " + ", ".join(r for r, _ in others)
        rows.append({"id": item, "stage": STAGE, "reason": reason, "detail": detail})
    return joined, rows


def _provenance_names(manifests: dict[str, pd.DataFrame]) -> dict[tuple[str, str], str]:
    """(input, upstream column) -> manifest column, for every upstream column that is not a core one."""
    taken = set(MANIFEST_COLUMNS)
    replaced = {(stage_input, column) for stage_input, column, *_ in MEDIA.values()}
    names: dict[tuple[str, str], str] = {}
    for name, _ in INPUTS:
        for column in manifests[name].columns:
            if column == "id" or (name, column) in replaced or CORE.get(column) == name:
                continue
            out = column
            while out in taken:
                out = f"{name}_{out}"
            taken.add(out)
            names[(name, column)] = out
    return names


# --- one item ------------------------------------------------------------------------------------


def link_or_copy(source: Path, target: Path) -> bool:
    """Hard-link `source` at `target` (replacing it atomically), else copy it; True when copied."""
    if target.exists() and os.path.samefile(source, target):
        return False
    with atomic_path(target) as tmp:
        tmp.unlink()
        try:
            os.link(source, tmp)
            return False
        except OSError:  # another filesystem, or one without hard links
            shutil.copyfile(source, tmp)
            return True


def _load_array(path: Path, key: str, kinds: str) -> np.ndarray:
    expected = f"an npz with array {key!r} of shape (T, H, W) and dtype kind {kinds!r}"
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise MediaError(f"{path}: not a readable npz: {exc}; expected {expected}") from None
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise MediaError(f"{path}: a bare array, not an npz; expected {expected}")
    with loaded:
        if key not in loaded.files:
            raise MediaError(f"{path}: no array {key!r} (has {loaded.files}); expected {expected}")
        try:
            array = loaded[key]
        except (OSError, ValueError, EOFError) as exc:
            raise MediaError(f"{path}: array {key!r} unreadable: {exc}") from None
    if array.ndim != 3 or array.dtype.kind not in kinds:
        raise MediaError(f"{path}: {key!r} is {array.dtype} {array.shape}; expected {expected}")
    return array


def _codes(rgb: np.ndarray) -> np.ndarray:
    return (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2]


def _palette_problem(video: np.ndarray, palette: dict[int, tuple[int, int, int]]) -> str | None:
    present = np.zeros(1 << 24, dtype=bool)
    present[_codes(video).ravel()] = True
    palette_codes = {entity: (r << 16) | (g << 8) | b for entity, (r, g, b) in palette.items()}
    outside = np.setdiff1d(np.flatnonzero(present), np.array(list(palette_codes.values())))
    absent = sorted(e for e, code in palette_codes.items() if e != BACKGROUND_ID and not present[code])
    if not len(outside) and not absent:
        return None
    parts = []
    if len(outside):
        colours = [[int(c >> 16), int((c >> 8) & 255), int(c & 255)] for c in outside[:_EXAMPLES]]
        parts.append(f"{len(outside)} colour(s) not in the palette, e.g. {colours}")
    if absent:
        parts.append(f"palette entit(ies) {absent[:_EXAMPLES]} never in the video")
    return "; ".join(parts)


def _ids_problem(ids: np.ndarray, video: np.ndarray, palette: dict[int, tuple[int, int, int]]) -> str | None:
    keys = np.array(sorted(palette), dtype=np.int64)
    colours = np.array([palette[k] for k in keys], dtype=np.uint8)
    unknown = wrong = 0
    for frame_ids, frame in zip(ids, video, strict=True):  # per frame: bounded memory at 49x480x720
        pos = np.clip(np.searchsorted(keys, frame_ids), 0, len(keys) - 1)
        known = keys[pos] == frame_ids
        unknown += int((~known).sum())
        wrong += int((known & (colours[pos] != frame).any(axis=-1)).sum())
    if not unknown and not wrong:
        return None
    return f"{unknown} pixel(s) with an id not in the palette, {wrong} painted otherwise than the video"


def _shape_text(shapes: dict[str, tuple[int, ...]]) -> str:
    return ", ".join(f"{m} {'x'.join(map(str, s))}" for m, s in shapes.items()) + " (frames x height x width)"


def measure_item(
    item_id: str, sources: dict[str, Path | None], palette_text: object, output_dir: Path
) -> dict:
    """Place one item's five files in the dataset, measure them there; a record or a reject."""
    record: dict = {"copied": 0, "linked": 0}
    placed: list[Path] = []
    for media, (_, _, template, _, _) in MEDIA.items():
        target = output_dir / template.format(id=item_id)
        source = sources.get(media)
        exists = source is not None and source.is_file()
        if exists:
            copied = link_or_copy(source, target)
            record["copied" if copied else "linked"] += 1
            placed.append(target)
        else:
            target.unlink(missing_ok=True)  # a previous run's file must not pass for this one's
        record[f"{media}_exists"] = bool(exists)

    def reject(reason: str, detail: str) -> dict:
        for path in placed:
            path.unlink(missing_ok=True)
        return rejected(item_id, reason, detail)

    arrays: dict[str, np.ndarray] = {}
    try:
        for media, (_, _, template, key, kinds) in MEDIA.items():
            if record[f"{media}_exists"]:
                path = output_dir / template.format(id=item_id)
                arrays[media] = read_video(path)[0] if key is None else _load_array(path, key, kinds)
    except MediaError as exc:
        return reject("unreadable_media", str(exc))
    try:
        palette = parse_palette(palette_text)
    except ValueError as exc:
        return reject("malformed_palette", f"{item_id}: segment manifest {exc}")
    shapes = {media: tuple(int(n) for n in array.shape[:3]) for media, array in arrays.items()}
    for media in DENSE_MEDIA:
        for dim, value in zip(DIMENSIONS, shapes.get(media, (None,) * 3), strict=True):
            record[f"{media}_{dim}"] = value
    if len(set(shapes.values())) > 1:
        return reject("shape_mismatch", _shape_text(shapes))

    if "seg_video" in arrays:
        problem = _palette_problem(arrays["seg_video"], palette)
        if problem:
            return reject("palette_mismatch", problem)
        if "seg_ids" in arrays:
            problem = _ids_problem(arrays["seg_ids"], arrays["seg_video"], palette)
            if problem:
                return reject("seg_ids_mismatch", problem)

    colours = list(palette.values())
    record.update(
        palette_size=len(palette),
        palette_colours=len(set(colours)),
        palette_entities=len([e for e in palette if e != BACKGROUND_ID]),
        background_black=palette.get(BACKGROUND_ID) == tuple(BACKGROUND_COLOUR),
        depth_min=None,
        depth_max=None,
        depth_finite=None,
        depth_video_error=None,
    )
    if "depth_values" in arrays:
        values = arrays["depth_values"]
        finite = np.isfinite(values)
        record["depth_finite"] = bool(finite.all())
        if finite.any():
            record["depth_min"] = float(values[finite].min())
            record["depth_max"] = float(values[finite].max())
            if "depth_video" in arrays:
                error = np.abs(decode_depth(arrays["depth_video"]) - values.astype(np.float32))[finite]
                record["depth_video_error"] = float(error.max())
    return ok(item_id, **record)


# --- the stage -----------------------------------------------------------------------------------


def _source(root: Path, value: object) -> Path | None:
    # Relative to the input's directory (the contract); an empty path is a file that does not exist.
    text = _text(value)
    return root / text if text else None


def _stat(path: Path | None) -> list:
    # In the resume fingerprint: a checkpointed measurement is stale once its file was replaced.
    if path is None or not path.is_file():
        return [str(path), None]
    stat = path.stat()
    return [str(path), stat.st_size, stat.st_mtime_ns]


def _remove_stale_media(output_dir: Path, manifest: pd.DataFrame) -> int:
    named = {
        (output_dir / p).resolve()
        for m in DENSE_MEDIA
        for p in manifest[MEDIA[m][1]]
        if isinstance(p, str) and p
    }
    removed = 0
    for folder in MEDIA_DIRS:
        for path in (output_dir / folder).glob("*") if (output_dir / folder).is_dir() else ():
            if path.is_file() and path.resolve() not in named:
                path.unlink()
                removed += 1
    return removed


def run(params: Params, inputs: Sequence[Path | str] | None, output_dir: Path) -> dict[str, float]:
    """inputs: [clips dir, captions dir, segment dir, depth dir]. Writes the dataset and report/dense.json."""
    from vidprior.validation.dense_suites import dense_accounting_frame, validate_dense

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    dirs = {name: input_dir(inputs, i, name) for i, (name, _) in enumerate(INPUTS)}
    manifests = {
        name: read_input_manifest(inputs, i, name, REQUIRED[name]) for i, (name, _) in enumerate(INPUTS)
    }
    rejects = {name: _rejects_of(inputs, i, name) for i, (name, _) in enumerate(INPUTS)}
    for name, _ in INPUTS:
        _check_kept_xor_rejected(manifests[name], rejects[name], dirs[name])

    clip_ids = sorted(manifests["clips"]["id"])
    universe = set(clip_ids) | set(rejects["clips"]["id"].dropna())
    stray = {
        stage: sorted((set(manifests[name]["id"]) | set(rejects[name]["id"].dropna())) - universe)
        for name, stage in INPUTS[1:]
    }
    upstream = rejects["clips"]
    clips_rejects = pd.DataFrame(
        {
            "id": upstream["id"],
            "stage": STAGE,
            "reason": [f"{INPUTS[0][1]}:{_text(r)}" for r in upstream["reason"]],
            "detail": [_text(d) for d in upstream.get("detail", pd.Series(None, index=upstream.index))],
        },
        columns=REJECT_COLUMNS,
    )
    joined_ids, join_rejects = _join_rejects(clip_ids, manifests, rejects, dirs)

    indexed = {name: m.set_index("id", drop=False) for name, m in manifests.items()}

    def values(name: str, column: str, ids: list[str]) -> list:
        return indexed[name].loc[ids, column].tolist() if ids else []

    columns = {m: values(name, column, joined_ids) for m, (name, column, *_) in MEDIA.items()}
    sources = {
        item: {m: _source(dirs[MEDIA[m][0]], columns[m][k]) for m in DENSE_MEDIA}
        for k, item in enumerate(joined_ids)
    }
    palettes = dict(zip(joined_ids, values("segment", "palette", joined_ids), strict=True))
    stats = [[_stat(p) for p in sources[i].values()] + [str(palettes[i])] for i in joined_ids]
    items = pd.DataFrame({"id": joined_ids, "files": [json.dumps(s) for s in stats]})
    result = run_batches(
        items,
        output_dir=output_dir,
        name="dataset",
        config_fingerprint=fingerprint(STAGE, [str(d.resolve()) for d in dirs.values()]),
        batch_size=BATCH,
        process=lambda batch: [measure_item(i, sources[i], palettes[i], output_dir) for i in batch["id"]],
    )
    measured, measure_rejects = split_records(result.records, STAGE)
    kept_ids = sorted(measured["id"]) if len(measured) else []

    names = _provenance_names(manifests)
    manifest = pd.DataFrame({"id": pd.Series(kept_ids, dtype="object")})
    for media in DENSE_MEDIA:
        manifest[MEDIA[media][1]] = [MEDIA[media][2].format(id=i) for i in kept_ids]
    for column, name in CORE.items():
        manifest[column] = values(name, column, kept_ids)
    for (name, column), out in names.items():
        manifest[out] = values(name, column, kept_ids)
    all_rejects = pd.concat(
        [clips_rejects, pd.DataFrame(join_rejects, columns=REJECT_COLUMNS), measure_rejects],
        ignore_index=True,
    )
    clips_in = len(manifests["clips"]) + len(rejects["clips"])
    if len(manifest) + len(all_rejects) != clips_in:
        raise AssertionError(f"{STAGE}: {len(manifest)} kept + {len(all_rejects)} rejected != {clips_in}")

    write_manifest(manifest, output_dir)
    write_rejects(all_rejects, output_dir)
    clear_partials(output_dir)
    stale = _remove_stale_media(output_dir, manifest)

    table = _items_table(manifest, measured, indexed["segment"], indexed["depth"])
    write_parquet(table, output_dir / REPORT_DIR / ITEMS_TABLE)
    reasons = Counter(all_rejects["reason"])
    copied = int(measured["copied"].sum()) if len(measured) else 0
    linked = int(measured["linked"].sum()) if len(measured) else 0
    report = validate_dense(
        table,
        dense_accounting_frame(universe, manifest["id"], all_rejects, stray),
        output_dir / REPORT_DIR / REPORT_NAME,
        info={
            "clips_in": clips_in,
            "kept": len(manifest),
            "rejected": dict(sorted(reasons.items())),
            "media_linked": linked,
            "media_copied": copied,
            "stale_media_removed": stale,
            "stray_ids": {k: v[:_EXAMPLES] for k, v in stray.items() if v},
        },
    )

    metrics: dict[str, float] = {
        "clips_in": clips_in,
        "kept": len(manifest),
        "rejected": len(all_rejects),
        "expectations_checked": len(report.results),
        "resumed_batches": result.reused_batches,
        "stage_seconds": round(time.perf_counter() - started, 4),
    }
    # MLflow accepts no ':' in metric names on Windows; '.' keeps `rejected_udpdiff.segment.no_entities`.
    metrics.update({f"rejected_{k.replace(':', '.')}": v for k, v in sorted(reasons.items())})
    if len(manifest):
        metrics["entities_mean"] = float(pd.to_numeric(manifest["entities"]).mean())
    return metrics


def _items_table(
    manifest: pd.DataFrame, measured: pd.DataFrame, segment: pd.DataFrame, depth: pd.DataFrame
) -> pd.DataFrame:
    """The suite's table: one row per dataset item, every value measured on the files here."""
    if not len(manifest):
        return pd.DataFrame({c: pd.Series(dtype="object") for c in DENSE_ITEM_COLUMNS})
    table = manifest[["id", *DIMENSIONS, "entities", "short_caption", "long_caption"]].merge(
        measured, on="id", how="left", validate="one_to_one"
    )
    ids = table["id"]
    for stage, frame in (("segment", segment), ("depth", depth)):
        for dim in DIMENSIONS:
            table[f"{stage}_declared_{dim}"] = ids.map(frame[dim]).to_numpy()
    return table[list(DENSE_ITEM_COLUMNS)]
