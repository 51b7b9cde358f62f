"""Stage udpdiff.sample on a tiny train dir and a small Panda-Dense dataset dir (per the contract)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from vidprior.config import params_from_dict
from vidprior.io.manifest import ManifestError, read_manifest, read_rejects, write_manifest
from vidprior.io.media import read_video
from vidprior.models import ModelSpec, TinySpec, build_cogvideox
from vidprior.seeding import item_seed
from vidprior.udpdiff import sample
from vidprior.udpdiff.entity_colours import decode_generated_segmentation
from vidprior.udpdiff.model import TASKS, widen_from_base
from vidprior.udpdiff.pixelplanes import decode_depth

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROOT = Path(__file__).resolve().parents[2]
SPEC = ModelSpec(tiny=TinySpec(seed=0))
CAPTIONS = {
    "synth00001.0": "A red cube slides to the left over a grey floor while the camera pans slowly.",
    "synth00001.1": "Two green spheres bounce in front of a striped wall.",
    "synth00002.0": "A blue cylinder rolls towards the camera.",
}


def make_train_dir(root: Path) -> Path:
    """What udpdiff.train writes: transformer/ (save_pretrained) and udpdiff.json."""
    root.mkdir(parents=True, exist_ok=True)
    transformer = widen_from_base(build_cogvideox(SPEC).transformer)
    with torch.no_grad():  # a trained task embedding: the tasks give different dense halves
        transformer.task_embedding.weight.normal_(generator=torch.Generator().manual_seed(0))
    transformer.save_pretrained(root / "transformer")
    config = {
        "format": 1,
        "transformer_dir": "transformer",
        "base_model": SPEC.model_dump(mode="json"),
        "base_model_id": SPEC.model_id,
        "dense_init": "duplicate",
        "tasks": dict(TASKS),
        "latent_channels": 4,
        "train": {"steps": 2, "lr": 1e-4, "world_size": 1, "precision": "fp32"},
        "final_loss": 0.25,
        "steps": 2,
    }
    (root / "udpdiff.json").write_text(json.dumps(config))
    return root


def make_dataset_dir(root: Path, captions: dict[str, str]) -> Path:
    """The udpdiff.dataset manifest (the stage reads `id` and `long_caption`)."""
    ids = list(captions)
    palette = json.dumps({"0": [0, 0, 0], "1": [200, 30, 60]})
    write_manifest(
        pd.DataFrame(
            {
                "id": ids,
                "clip_path": [f"clips/{i}.mp4" for i in ids],
                "seg_path": [f"seg/{i}.mp4" for i in ids],
                "seg_ids_path": [f"seg/{i}.npz" for i in ids],
                "depth_path": [f"depth/{i}.mp4" for i in ids],
                "depth_values_path": [f"depth/{i}.npz" for i in ids],
                "short_caption": ["a shape moves"] * len(ids),
                "long_caption": list(captions.values()),
                "palette": [palette] * len(ids),
                "entities": [1] * len(ids),
                "frames": [9] * len(ids),
                "height": [32] * len(ids),
                "width": [48] * len(ids),
                "fps": [8] * len(ids),
            }
        ),
        root,
    )
    return root


def make_params(**sample_update):
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    data["udpdiff"]["sample"].update(
        {
            "steps": 2,
            "frames": 9,
            "height": 32,
            "width": 48,
            "max_prompts": 2,
            "batch_size": 2,
            **sample_update,
        }
    )
    return params_from_dict(data)


@pytest.fixture(scope="module")
def train_dir(tmp_path_factory):
    return make_train_dir(tmp_path_factory.mktemp("train"))


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    return make_dataset_dir(tmp_path_factory.mktemp("dataset"), CAPTIONS)


@pytest.fixture(scope="module")
def first_run(train_dir, dataset_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("samples")
    metrics = sample.run(make_params(), [train_dir, dataset_dir], out)
    return out, metrics


def test_writes_both_tasks_of_the_first_clips_on_the_same_seed(first_run):
    out, metrics = first_run
    manifest = read_manifest(out)
    assert manifest["id"].tolist() == [
        "synth00001.0.depth",
        "synth00001.0.segmentation",
        "synth00001.1.depth",
        "synth00001.1.segmentation",
    ]
    assert len(read_rejects(out)) == 0
    assert set(sample.MANIFEST_COLUMNS) <= set(manifest.columns)
    for clip_id, rows in manifest.groupby("clip_id"):
        assert rows["seed"].tolist() == [item_seed(0, sample.STAGE, clip_id)] * 2
        assert rows["prompt"].tolist() == [CAPTIONS[clip_id]] * 2
    assert manifest["task_id"].tolist() == [TASKS["depth"], TASKS["segmentation"]] * 2
    assert set(manifest["scheduler"]) == {"dpm++"}
    assert set(manifest["base_model"]) == {SPEC.model_id}
    assert (
        manifest[["frames", "height", "width", "steps"]].drop_duplicates().values == [[9, 32, 48, 2]]
    ).all()
    assert (manifest["seconds"] > 0).all()
    assert metrics["samples_in"] == metrics["kept"] == 4 and metrics["rejected"] == 0
    assert metrics["mean_sample_seconds"] > 0
    assert metrics["entities_found_mean"] == manifest["entities"].dropna().astype(float).mean()
    assert 0 < metrics["depth_range_mean"] <= 1


def test_media_and_decoded_values(first_run):
    out, _ = first_run
    manifest = read_manifest(out).set_index("id")
    for _, row in manifest.iterrows():
        video, fps = read_video(out / row["video_path"])
        assert video.shape == (9, 32, 48, 3) and fps == 8
        dense, _ = read_video(out / row["dense_path"])
        with np.load(out / row["dense_values_path"]) as values:
            if row["task"] == "segmentation":
                ids = values["ids"]
                assert ids.dtype == np.int32 and ids.shape == (9, 32, 48)
                # The lossless dense video decodes to exactly the stored ids.
                again, palette = decode_generated_segmentation(dense)
                np.testing.assert_array_equal(again, ids)
                assert row["entities"] == len(palette) - 1 == len(json.loads(row["palette"])) - 1
            else:
                depth = values["depth"]
                assert depth.dtype == np.float32 and depth.shape == (9, 32, 48)
                assert 0 <= depth.min() <= depth.max() <= 1
                np.testing.assert_array_equal(decode_depth(dense), depth)
                assert (row["depth_min"], row["depth_max"]) == (depth.min(), depth.max())
    # Same seed, same prompt: the tasks differ only by the task id, and the dense halves show it.
    seg, _ = read_video(out / manifest.loc["synth00001.0.segmentation", "dense_path"])
    depth, _ = read_video(out / manifest.loc["synth00001.0.depth", "dense_path"])
    assert np.abs(seg.astype(int) - depth).mean() > 1


def test_a_killed_run_resumes_to_the_same_manifest(first_run, train_dir, dataset_dir, tmp_path, monkeypatch):
    reference, _ = first_run
    calls = {"n": 0}
    original = sample._Sampler._sample

    def dies_on_the_second_batch(self, todo):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("killed")
        return original(self, todo)

    monkeypatch.setattr(sample._Sampler, "_sample", dies_on_the_second_batch)
    with pytest.raises(KeyboardInterrupt):
        sample.run(make_params(), [train_dir, dataset_dir], tmp_path)
    assert not (tmp_path / "manifest.parquet").exists()
    monkeypatch.undo()
    metrics = sample.run(make_params(), [train_dir, dataset_dir], tmp_path)
    assert metrics["resumed_batches"] == 1
    ours, theirs = read_manifest(tmp_path), read_manifest(reference)
    pd.testing.assert_frame_equal(ours.drop(columns="seconds"), theirs.drop(columns="seconds"))
    for path in ours["dense_values_path"]:
        with np.load(tmp_path / path) as a, np.load(reference / path) as b:
            for key in a.files:
                np.testing.assert_array_equal(a[key], b[key])
    assert not (tmp_path / ".partial").exists()


def test_clips_without_a_long_caption_are_rejected_per_task(train_dir, tmp_path):
    captions = {"a.0": "", "b.0": "A yellow cone spins."}
    dataset = make_dataset_dir(tmp_path / "dataset", captions)
    out = tmp_path / "out"
    metrics = sample.run(make_params(tasks=["depth"]), [train_dir, dataset], out)
    assert read_manifest(out)["id"].tolist() == ["b.0.depth"]
    rejects = read_rejects(out)
    assert rejects[["id", "stage", "reason"]].values.tolist() == [["a.0.depth", sample.STAGE, "empty_prompt"]]
    assert metrics["kept"] == 1 and metrics["rejected_empty_prompt"] == 1
    assert "entities_found_mean" not in metrics


def test_bad_inputs_are_explained(train_dir, dataset_dir, tmp_path):
    with pytest.raises(ValueError, match="udpdiff.json: not found"):
        sample.run(make_params(), [tmp_path, dataset_dir], tmp_path / "out")
    with pytest.raises(ValueError, match="missing input #2"):
        sample.run(make_params(), [train_dir], tmp_path / "out")
    write_manifest(pd.DataFrame({"id": ["x.0"], "short_caption": ["s"]}), tmp_path / "no_long")
    with pytest.raises(ManifestError, match=r"missing column\(s\) \['long_caption'\]"):
        sample.run(make_params(), [train_dir, tmp_path / "no_long"], tmp_path / "out")
    config = json.loads((train_dir / "udpdiff.json").read_text())
    other = tmp_path / "train"
    (other / "transformer").mkdir(parents=True)
    (other / "udpdiff.json").write_text(json.dumps({**config, "tasks": {"depth": 1}}))
    with pytest.raises(ValueError, match=r"udpdiff.sample.tasks \['segmentation'\] are not tasks of"):
        sample.run(make_params(), [other, dataset_dir], tmp_path / "out")
