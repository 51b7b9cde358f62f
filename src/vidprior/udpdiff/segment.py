"""Stage `udpdiff.segment`: entity segmentation of every clip, consistent over time, as Pixelplanes.

Input: the `udpdiff.clips` output (manifest `id`, `clip_path`). Each clip's first frame is split
into entities, the entities are followed through the clip, the masks are cleaned, and the result is
written as `seg/{id}.npz` (`ids` int32 [T, H, W], 0 = background, entities 1..N with one id per
entity for the whole clip) and `seg/{id}.mp4`, the lossless Pixelplanes video of those ids
(`pixelplanes.encode_segmentation` with seed `item_seed(seed, STAGE, id)`; palette in the manifest).

Backends (`udpdiff.segment.backend`):

* "models" (the paper's pipeline, with Mask2Former standing in for EntitySeg CropFormer): the
  panoptic segments of frame 0 scoring above `score_threshold` and covering at least
  `min_region_area`, the largest `max_entities` by area, each prompt SAM2 with its mask (object id
  = entity id) on frame 0; SAM2 propagates them over the clip and each pixel takes the entity with
  the highest mask logit, if that logit is above 0, else background. See
  `vidprior.models.entity_segmentation`.
* "classical" (no weights; `vidprior.udpdiff.segment_classical`): colour clustering of frame 0 and
  flow-warped labels re-snapped to each frame's colours; a baseline for the synthetic source and
  simple footage, not a replacement for the models.

Cleaning (both backends): per frame, entity regions (8-connected components) smaller than
`min_region_area` of the frame become background; then background pockets (4-connected) that touch
only one entity and not the frame border, up to `max_hole_area` of the frame, are filled with that
entity. Removal goes first so that a speck inside an entity leaves a hole that is then filled.
Entities left anywhere in the clip are renumbered 1..N in their frame-0 order (largest first).

Rejects: `unreadable_video` (the clip cannot be decoded), `no_entities` (no entity on frame 0, or
none left after cleaning), `segmentation_failed` (a model gave non-finite logits, or ran out of
device memory on the clip).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from vidprior.config import Params, SegmentParams
from vidprior.io.atomic import atomic_path
from vidprior.io.media import MediaError, read_video, write_video
from vidprior.seeding import item_seed
from vidprior.udpdiff.clips import clip_items
from vidprior.udpdiff.pixelplanes import encode_segmentation, palette_to_json
from vidprior.udpdiff.segment_classical import segment_classical
from vidprior.unic.generation import fingerprint, finish_stage, kept_table, ok, rejected, run_batches
from vidprior.unic.stage_inputs import input_dir

if TYPE_CHECKING:
    from vidprior.models.entity_segmentation import EntitySegmenterParts, Sam2VideoParts

STAGE = "udpdiff.segment"
BATCH = 8  # clips segmented and checkpointed together
SEG_DIR = "seg"
CLASSICAL_SEGMENTER = "classical-colour-modes"
MANIFEST_COLUMNS = [
    "id",
    "seg_path",
    "seg_ids_path",
    "palette",
    "palette_seed",
    "entities",
    "first_frame_entities",
    "segment_backend",
    "segmenter_model",
    "propagator_model",
    "holes_filled_px",
    "regions_removed",
    "frames",
    "height",
    "width",
    "fps",
    "clip_path",
]


class SegmentationFailed(RuntimeError):
    """One clip could not be segmented (the reason goes to its reject row)."""


# ---------------------------------------------------------------------------------------------
# Cleaning


@dataclass(frozen=True)
class Cleaned:
    ids: np.ndarray  # (T, H, W) int32, entities 1..N
    holes_filled_px: int
    regions_removed: int


def remove_small_regions(ids: np.ndarray, min_area: float) -> tuple[np.ndarray, int]:
    """Entity regions (8-connected) with fewer than `min_area` pixels -> background; (ids, count)."""
    out = np.array(ids, dtype=np.int32, copy=True)
    removed = 0
    for frame in out:
        for label in np.unique(frame[frame > 0]).tolist():
            count, components, stats, _ = cv2.connectedComponentsWithStats(
                (frame == label).astype(np.uint8), connectivity=8
            )
            small = stats[:, cv2.CC_STAT_AREA] < min_area
            small[0] = False  # component 0 is everything else
            if small.any():
                frame[small[components]] = 0
                removed += int(small.sum())
    return out, removed


def _neighbour_pairs(components: np.ndarray, frame: np.ndarray) -> np.ndarray:
    """(component, entity) for every 4-adjacent pair of a background-component pixel and an entity pixel."""
    pairs = []
    for a, b in (
        (components[:, :-1], frame[:, 1:]),
        (components[:, 1:], frame[:, :-1]),
        (components[:-1, :], frame[1:, :]),
        (components[1:, :], frame[:-1, :]),
    ):
        touch = (a > 0) & (b > 0)
        pairs.append(np.stack([a[touch], b[touch]], axis=1))
    return np.unique(np.concatenate(pairs), axis=0)


def fill_holes(ids: np.ndarray, max_area: float) -> tuple[np.ndarray, int]:
    """Background pockets (4-connected) of at most `max_area` pixels that touch exactly one entity
    and not the frame border get that entity; (ids, pixels filled)."""
    out = np.array(ids, dtype=np.int32, copy=True)
    filled = 0
    if max_area < 1:
        return out, 0
    height, width = out.shape[1:]
    for frame in out:
        count, components, stats, _ = cv2.connectedComponentsWithStats(
            (frame == 0).astype(np.uint8), connectivity=4
        )
        if count <= 1:
            continue
        x, y, w, h, area = (stats[:, k] for k in range(5))
        inside = (x > 0) & (y > 0) & (x + w < width) & (y + h < height)
        candidate = inside & (area <= max_area)
        candidate[0] = False
        if not candidate.any():
            continue
        pairs = _neighbour_pairs(components, frame)
        neighbours = np.bincount(pairs[:, 0], minlength=count)
        fill_with = np.zeros(count, dtype=np.int32)
        fill_with[pairs[:, 0]] = pairs[:, 1]  # the only neighbour, where there is one
        fillable = candidate & (neighbours == 1)
        target = fillable[components]
        frame[target] = fill_with[components][target]
        filled += int(target.sum())
    return out, filled


def relabel(ids: np.ndarray) -> np.ndarray:
    """Entities renumbered 1..N in increasing order of their current ids; background stays 0."""
    present = np.unique(ids)
    present = present[present > 0]
    lookup = np.zeros(int(ids.max()) + 1 if ids.size else 1, dtype=np.int32)
    lookup[present] = np.arange(1, len(present) + 1, dtype=np.int32)
    return lookup[ids]


def clean(ids: np.ndarray, max_hole_area: float, min_region_area: float) -> Cleaned:
    """Small regions removed, small holes filled (areas as shares of the frame), entities 1..N."""
    ids = np.asarray(ids)
    if ids.ndim != 3 or ids.dtype.kind not in "iu":
        raise ValueError(f"ids must be an integer array (T, H, W), got {ids.dtype} {ids.shape}")
    pixels = ids.shape[1] * ids.shape[2]
    ids, removed = remove_small_regions(ids, min_region_area * pixels)
    ids, filled = fill_holes(ids, max_hole_area * pixels)
    return Cleaned(relabel(ids), holes_filled_px=filled, regions_removed=removed)


# ---------------------------------------------------------------------------------------------
# Models backend


@dataclass(frozen=True)
class Models:
    segmenter: EntitySegmenterParts
    propagator: Sam2VideoParts


def load_models(params: Params) -> Models:
    """Both labellers, on the GPU when there is one."""
    from vidprior.models.entity_segmentation import build_entity_segmenter, build_sam2_video
    from vidprior.models.loading import default_device
    from vidprior.unic.generation import quiet_library_logs

    quiet_library_logs()
    device = default_device()
    segmenter = build_entity_segmenter(params.models.entity_segmenter)
    propagator = build_sam2_video(params.models.sam2)
    segmenter.model.to(device)
    propagator.model.to(device)
    return Models(segmenter, propagator)


def first_frame_segments(
    segments: np.ndarray, scores: dict[int, float], max_entities: int, min_area: float = 0.0
) -> list[int]:
    """Segment ids of frame 0 kept as entities: scored, of at least `min_area` pixels, the largest
    `max_entities` (ties: lower id)."""
    area = np.bincount(segments.ravel(), minlength=max(scores, default=0) + 1)
    chosen = [s for s in scores if s > 0 and area[s] > 0 and area[s] >= min_area]
    chosen.sort(key=lambda s: (-int(area[s]), s))
    return chosen[:max_entities]


def segment_models(frames: np.ndarray, models: Models, cfg: SegmentParams) -> tuple[np.ndarray, int]:
    """(ids (T, H, W) int32 before cleaning, entities found on frame 0)."""
    import torch

    from vidprior.models.entity_segmentation import NonFiniteOutputError

    ids = np.zeros(frames.shape[:3], dtype=np.int32)
    try:
        segments, scores = models.segmenter.segment(frames[0], cfg.score_threshold)
        min_area = cfg.min_region_area * frames.shape[1] * frames.shape[2]
        chosen = first_frame_segments(segments, scores, cfg.max_entities, min_area)
        if not chosen:
            return ids, 0
        masks = np.stack([segments == s for s in chosen])
        seen = set()
        # Object i (0-based) is entity i + 1, so the entity of a pixel is its best object + 1.
        for index, logits in models.propagator.propagate(frames, masks, range(1, len(chosen) + 1)):
            best, which = logits.max(dim=0)
            ids[index] = torch.where(best > 0, which + 1, 0).to(torch.int32).cpu().numpy()
            seen.add(index)
    except NonFiniteOutputError as exc:
        raise SegmentationFailed(str(exc)) from None
    except torch.cuda.OutOfMemoryError as exc:
        torch.cuda.empty_cache()
        raise SegmentationFailed(f"out of device memory: {exc}") from None
    if len(seen) != len(frames):
        raise SegmentationFailed(f"propagation returned {len(seen)} of {len(frames)} frames")
    return ids, len(chosen)


# ---------------------------------------------------------------------------------------------
# Stage


def _provenance(params: Params) -> tuple[str, str]:
    cfg = params.udpdiff.segment
    if cfg.backend == "models":
        return params.models.entity_segmenter.model_id, params.models.sam2.model_id
    return CLASSICAL_SEGMENTER, f"classical-flow-{cfg.flow.backend}"


def save_ids(path: Path, ids: np.ndarray) -> Path:
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez_compressed(handle, ids=ids.astype(np.int32))
    return path


def load_ids(path: Path) -> np.ndarray:
    with np.load(path) as data:
        return data["ids"]


def process_clip(
    clip_id: str, clip_path: str, root: Path, output_dir: Path, params: Params, models: Callable[[], Models]
) -> dict:
    """Segment one clip and write its outputs; a kept record, or a reject with the reason."""
    cfg = params.udpdiff.segment
    try:
        frames, fps = read_video(root / clip_path)
    except MediaError as exc:
        return rejected(clip_id, "unreadable_video", str(exc))
    try:
        if cfg.backend == "models":
            raw, found = segment_models(frames, models(), cfg)
        else:
            raw, found = segment_classical(frames, cfg)
    except SegmentationFailed as exc:
        return rejected(clip_id, "segmentation_failed", str(exc))
    if found == 0:
        detail = (
            f"no entity on frame 0 ({cfg.backend} backend; regions under min_region_area="
            f"{cfg.min_region_area:g} of the frame do not count)"
        )
        return rejected(clip_id, "no_entities", detail)
    cleaned = clean(raw, cfg.max_hole_area, cfg.min_region_area)
    entities = int(cleaned.ids.max())
    if entities == 0:
        detail = (
            f"all {found} frame-0 entities fell below min_region_area={cfg.min_region_area:g} of the frame "
            f"({cleaned.regions_removed} region(s) removed)"
        )
        return rejected(clip_id, "no_entities", detail)

    seed = item_seed(params.seed, STAGE, clip_id)
    rgb, palette = encode_segmentation(cleaned.ids, seed)
    seg_path, ids_path = f"{SEG_DIR}/{clip_id}.mp4", f"{SEG_DIR}/{clip_id}.npz"
    rate = max(1, round(fps))
    write_video(output_dir / seg_path, rgb, rate, lossless=True)
    save_ids(output_dir / ids_path, cleaned.ids)
    segmenter, propagator = _provenance(params)
    frames_n, height, width = (int(n) for n in cleaned.ids.shape)
    return ok(
        clip_id,
        seg_path=seg_path,
        seg_ids_path=ids_path,
        palette=palette_to_json(palette),
        palette_seed=seed,
        entities=entities,
        first_frame_entities=int(found),
        segment_backend=cfg.backend,
        segmenter_model=segmenter,
        propagator_model=propagator,
        holes_filled_px=cleaned.holes_filled_px,
        regions_removed=cleaned.regions_removed,
        frames=frames_n,
        height=height,
        width=width,
        fps=rate,
        clip_path=clip_path,
    )


def run(params: Params, inputs: Sequence[Path | str] | None, output_dir: Path) -> dict[str, float]:
    """inputs: [udpdiff.clips output]. Writes seg/{id}.mp4 + seg/{id}.npz, manifest and rejects."""
    cfg = params.udpdiff.segment
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    root = input_dir(inputs, 0, "udpdiff.clips")
    items = clip_items(inputs)
    # Loaded on the first batch that needs them, so a finished rerun loads none.
    models = functools.cache(lambda: load_models(params))

    segmenter, propagator = _provenance(params)
    result = run_batches(
        items,
        output_dir=output_dir,
        name="segment",
        config_fingerprint=fingerprint(
            STAGE, cfg.model_dump(mode="json"), segmenter, propagator, params.seed, str(root.resolve())
        ),
        batch_size=BATCH,
        process=lambda batch: [
            process_clip(i, p, root, output_dir, params, models)
            for i, p in zip(batch["id"], batch["clip_path"], strict=True)
        ],
    )
    manifest, rejects = kept_table(result.records, STAGE, MANIFEST_COLUMNS)
    manifest = manifest.assign(seed=params.seed)
    metrics = finish_stage(
        manifest,
        rejects,
        stage=STAGE,
        items=len(items),
        output_dir=output_dir,
        reused_batches=result.reused_batches,
        started=started,
    )
    if len(manifest):
        metrics["mean_entities"] = float(manifest["entities"].mean())
        metrics["holes_filled_px"] = int(manifest["holes_filled_px"].sum())
        metrics["regions_removed"] = int(manifest["regions_removed"].sum())
    return metrics
