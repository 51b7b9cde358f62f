"""`udpdiff.evaluate` on real `udpdiff.sample` output: the base model on the same prompts and seeds,
the paper's table, depth against the dataset's labels, tags on the registered version."""

from __future__ import annotations

import json
import os
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow_store import fresh_store
from test_udpdiff_sample_stage import SPEC, make_dataset_dir, make_train_dir

from vidprior.config import params_from_dict
from vidprior.evaluate import depth_metrics, fvd
from vidprior.io.manifest import read_manifest, read_rejects, write_manifest
from vidprior.io.media import read_video, write_video
from vidprior.registry.pyfunc import REGISTERED_FILE
from vidprior.seeding import item_seed
from vidprior.stages import execute
from vidprior.udpdiff import evaluate, sample
from vidprior.udpdiff.sampler import load_base, sample_base

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROOT = Path(__file__).resolve().parents[2]
CAPTIONS = {
    "c0": "A red cube slides to the left over a grey floor.",
    "c1": "Two green spheres bounce in front of a striped wall.",
    "c2": "A blue cylinder rolls towards the camera.",
}
METRICS = ["subject_consistency", "background_consistency", "motion_smoothness"]
LABEL_SHAPE = (5, 16, 24)  # coarser than the samples (9 x 32 x 48): the stage resizes to the label


def make_params(models_update=None, **evaluate_update):
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    data["udpdiff"]["sample"].update(
        {"steps": 2, "frames": 9, "height": 32, "width": 48, "max_prompts": 2, "batch_size": 2}
    )
    data["udpdiff"]["evaluate"] = {"batch_size": 2, "max_reference_clips": 3, **evaluate_update}
    data["models"].update(models_update or {})
    return params_from_dict(data)


def register_version(root: Path, name: str) -> Path:
    client = client_of()
    client.create_registered_model(name)
    run = client.create_run(client.create_experiment(f"{name}-register"))
    version = client.create_model_version(name, f"runs:/{run.info.run_id}/model", run_id=run.info.run_id)
    (root / "registered").mkdir()
    (root / "registered" / REGISTERED_FILE).write_text(json.dumps({"name": name, "version": version.version}))
    return root / "registered"


def dataset_with_media(root: Path) -> Path:
    """The dataset manifest with its clips (moving stripes) and depth labels written."""
    make_dataset_dir(root, CAPTIONS)
    g = np.random.default_rng(0)
    for k, clip_id in enumerate(CAPTIONS):
        x = np.arange(48)[None, None, :] + 3 * np.arange(9)[:, None, None] + 7 * k
        frames = np.broadcast_to((x % 16 < 8)[..., None] * 200, (9, 32, 48, 3)).astype(np.uint8)
        write_video(root / "clips" / f"{clip_id}.mp4", frames, 8)
        depth = g.uniform(0.2, 0.9, LABEL_SHAPE).astype(np.float32)
        (root / "depth").mkdir(exist_ok=True)
        np.savez_compressed(root / "depth" / f"{clip_id}.npz", depth=depth)
    return root


def client_of():
    return mlflow.MlflowClient(tracking_uri=os.environ["MLFLOW_TRACKING_URI"])


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow")
    uri = fresh_store(root)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        patch.setenv("VIDPRIOR_HOME", str(root))
        patch.delenv("VIDPRIOR_PARENT_RUN_ID", raising=False)
        patch.delenv("MLFLOW_REGISTRY_URI", raising=False)
        # mlflow.set_tracking_uri (which stages call) outlives a test module: start from this store.
        mlflow.set_tracking_uri(uri)
        yield root


@pytest.fixture(scope="module")
def inputs(store, tmp_path_factory) -> list[Path]:
    """udpdiff.sample's output on c0 and c1 (both tasks), c1's segmentation video then broken."""
    root = tmp_path_factory.mktemp("udpdiff-evaluate-inputs")
    dataset = dataset_with_media(root / "dataset")
    samples = root / "samples"
    sample.run(make_params(), [make_train_dir(root / "train"), dataset], samples)
    (samples / "videos" / "c1.segmentation.mp4").write_bytes(b"not a video")
    return [samples, dataset, register_version(root, "udpdiff")]


@pytest.fixture(scope="module")
def evaluated(inputs, tmp_path_factory):
    out = tmp_path_factory.mktemp("udpdiff-evaluation")
    return out, execute("udpdiff.evaluate", make_params(), inputs, out)


def test_table_rows_are_the_papers_with_sc_bc_ms_x100(evaluated, inputs):
    out, _ = evaluated
    table = pd.read_csv(out / "table.csv").set_index("method")
    assert table.index.tolist() == ["CogVideoX", "UDPDiff (seg)", "UDPDiff (depth)"]
    assert table.loc["CogVideoX", "subject_consistency_paper"] == pytest.approx(94.57)
    assert table.loc["UDPDiff (seg)", "fvd_paper"] == 316.76
    assert table.loc["UDPDiff (depth)", "motion_smoothness_paper"] == pytest.approx(99.23)
    assert table.loc["UDPDiff (depth)", "depth_delta1_paper"] == 0.4176
    assert table.loc["UDPDiff (depth)", "depth_rmse_paper"] == 0.1634
    assert table.loc[["CogVideoX", "UDPDiff (seg)"], "depth_rmse"].isna().all()
    assert table["videos"].tolist() == [2, 1, 2]
    manifest = read_manifest(out)
    depth_rows = manifest[manifest["task"] == "depth"]
    for metric in METRICS:  # the table prints the 0..1 metrics x100, as the paper
        assert table.loc["UDPDiff (depth)", metric] == pytest.approx(100 * depth_rows[metric].mean())
    assert np.isfinite(table.loc[:, "fvd"]).all() and (table["fvd"] >= 0).all()
    # A set's FVD is vidprior.evaluate.fvd of its videos against the dataset's first 3 clips.
    base = manifest[manifest["variant"] == "baseline"]
    reference = [read_video(inputs[1] / "clips" / f"{c}.mp4")[0] for c in CAPTIONS]
    videos = [read_video(out / p)[0] for p in base["video_path"]]
    assert table.loc["CogVideoX", "fvd"] == pytest.approx(fvd(videos, reference, make_params()))
    text = (out / "table.md").read_text()
    assert (
        "| method | videos | SC | SC (paper) | BC | BC (paper) | MS | MS (paper) | FVD | FVD (paper) |"
        in text
    )
    assert "| method | videos | delta1 | delta1 (paper) | RMSE | RMSE (paper) |" in text
    assert "343.92" in text and "0.4176" in text
    assert {p.name for p in (out / "plots").iterdir()} == {
        f"{m}.png" for m in [*METRICS, "fvd", "depth_delta1", "depth_rmse"]
    }


def test_base_model_samples_the_same_prompts_and_seeds(evaluated, inputs):
    out, _ = evaluated
    manifest = read_manifest(out)
    base = manifest[manifest["variant"] == "baseline"].set_index("clip_id")
    assert base.index.tolist() == ["c0", "c1"] and base["id"].tolist() == ["c0.cogvideox", "c1.cogvideox"]
    for row in manifest[manifest["variant"] == "candidate"].itertuples():
        assert row.seed == base.loc[row.clip_id, "seed"] == item_seed(0, sample.STAGE, row.clip_id)
        assert row.prompt == base.loc[row.clip_id, "prompt"] == CAPTIONS[row.clip_id]
    # The base video is what the base CogVideoX alone gives for that prompt and seed, saved alike.
    settings = read_manifest(inputs[0]).iloc[0]
    again = sample_base(
        load_base(SPEC),
        [CAPTIONS["c0"]],
        [int(base.loc["c0", "seed"])],
        steps=int(settings["steps"]),
        frames=9,
        height=32,
        width=48,
        guidance_scale=float(settings["guidance_scale"]),
        scheduler=settings["scheduler"],
    )
    expected, _ = read_video(write_video(out.parent / "expected.mp4", again.videos[0], 8))
    saved, fps = read_video(out / base.loc["c0", "video_path"])
    np.testing.assert_array_equal(saved, expected)
    assert fps == 8
    # UDPDiff's samples are linked into this output under their ids.
    seg = manifest.set_index("id").loc["c0.segmentation"]
    assert seg["video_path"] == "videos/c0.segmentation.mp4" and (out / seg["video_path"]).is_file()
    assert not np.array_equal(read_video(out / seg["video_path"])[0], saved)


def test_depth_is_scored_against_the_clips_depth_label(evaluated, inputs):
    out, _ = evaluated
    manifest = read_manifest(out).set_index("id")
    samples, dataset = inputs[0], inputs[1]
    with np.load(samples / "dense" / "c1.depth.npz") as values:
        predicted = values["depth"]
    with np.load(dataset / "depth" / "c1.npz") as values:
        label = values["depth"]
    expected = depth_metrics(evaluate.resize_depth(predicted, label.shape), label, align="scale_shift")
    assert evaluate.resize_depth(predicted, label.shape).shape == LABEL_SHAPE
    for key, value in expected.items():
        assert manifest.loc["c1.depth", key] == pytest.approx(value)
    assert manifest.loc[["c0.segmentation", "c0.cogvideox"], "depth_rmse"].isna().all()


def test_baselines_are_paired_with_each_tasks_clips_and_tag_the_version(evaluated):
    out, metrics = evaluated
    record = json.loads((out / "evaluation.json").read_text())
    assert (record["model"], record["version"]) == ("udpdiff", "1")
    task_keys = {f"{t}.{m}" for t in ("segmentation", "depth") for m in [*METRICS, "fvd"]}
    assert set(record["candidate"]) == task_keys | {"depth.depth_delta1", "depth.depth_rmse"}
    assert set(record["baseline"]) == task_keys
    manifest = read_manifest(out).set_index("id")
    # c1's segmentation sample was rejected: the segmentation baseline is the base model on c0 alone.
    for metric in METRICS:
        assert record["baseline"][f"segmentation.{metric}"] == pytest.approx(
            manifest.loc["c0.cogvideox", metric]
        )
        both = manifest.loc[["c0.cogvideox", "c1.cogvideox"], metric].mean()
        assert record["baseline"][f"depth.{metric}"] == pytest.approx(both)
        assert metrics[f"candidate.depth.{metric}"] == pytest.approx(record["candidate"][f"depth.{metric}"])
    assert record["paper"]["candidate"]["depth.depth_rmse"] == 0.1634
    assert record["paper"]["baseline"]["segmentation.subject_consistency"] == pytest.approx(0.9457)

    rejects = read_rejects(out)
    assert rejects[["id", "reason"]].values.tolist() == [["c1.segmentation", "unreadable_video"]]
    assert metrics["videos_in"] == 6 and metrics["kept"] == 5 and metrics["clips"] == 2

    client = client_of()
    tags = client.get_model_version("udpdiff", "1").tags
    assert float(tags["eval.depth.depth_delta1"]) == record["candidate"]["depth.depth_delta1"]
    assert float(tags["eval_baseline.segmentation.fvd"]) == record["baseline"]["segmentation.fvd"]
    run = client.get_run(tags["eval.run_id"])
    assert run.data.tags["vidprior.stage"] == evaluate.STAGE
    assert {"plots", "table", "evaluation"} <= {a.path for a in client.list_artifacts(run.info.run_id)}


def test_inputs_that_cannot_be_compared_are_explained(inputs, tmp_path):
    samples, dataset, registered = inputs
    with pytest.raises(ValueError, match=r"missing input #3: the udpdiff.register stage's output directory"):
        evaluate.run(make_params(), [samples, dataset], tmp_path / "out")
    other_base = make_params(models_update={"cogvideox": {"tiny": {"seed": 3}}})
    with pytest.raises(
        ValueError, match=r"fine-tuned from \['tiny-random\(seed=0\)'\], but models.cogvideox"
    ):
        evaluate.run(other_base, inputs, tmp_path / "out")
    mixed = tmp_path / "mixed"
    manifest = read_manifest(samples)
    manifest.loc[0, "steps"] = 50
    write_manifest(manifest, mixed)
    with pytest.raises(ValueError, match="made with 2 sampler settings"):
        evaluate.run(make_params(), [mixed, dataset, registered], tmp_path / "out")
    assert not (tmp_path / "out" / "manifest.parquet").exists()
