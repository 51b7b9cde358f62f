"""`udpdiff.train` under `torchrun --nproc_per_node 2` on CPU (gloo), and its resume after a SIGKILL.

The killed run is a real torchrun launch whose rank 0 sends itself SIGKILL while saving the step-4
checkpoint: DeepSpeed has written and fsynced every file, the `latest` pointer has not moved yet.
torchrun then tears the other rank down. The rerun must resume from step 2 and reproduce the
uninterrupted 2-rank run's loss history and transformer exactly.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd
import pytest
from torchrun_launch import torchrun as launch

from vidprior.config import params_to_yaml
from vidprior.training import engine as ds
from vidprior.udpdiff import train

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from test_udpdiff_train import make_latents, params_with  # noqa: E402

pytestmark = pytest.mark.integration

STEPS, EVERY = 6, 2
KILL_TAG = ds.tag_for(4)
WEIGHTS = Path(train.TRANSFORMER_DIR) / "diffusion_pytorch_model.safetensors"

MODULE = "vidprior.udpdiff.train"


def torchrun(tmp: Path, latents: Path, params_file: Path, out: Path, kill_tag: str | None = None):
    return launch(tmp, MODULE, [latents], params_file, out, kill_tag=kill_tag)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("udpdiff_torchrun")
    latents = make_latents(tmp / "data")
    # Micro-batch 1 on each of 2 ranks: the same global batch (2) as the single-process run below.
    params_file = tmp / "params.yaml"
    params_file.write_text(
        params_to_yaml(params_with(steps=STEPS, micro_batch=1, checkpoint_every=EVERY)), encoding="utf-8"
    )
    return tmp, latents, params_file


@pytest.fixture(scope="module")
def uninterrupted(setup):
    tmp, latents, params_file = setup
    out = tmp / "uninterrupted"
    proc, metrics = torchrun(tmp, latents, params_file, out)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out, metrics


def test_two_ranks_train_and_write_the_transformer(setup, uninterrupted):
    from vidprior.udpdiff.model import UDPDiffTransformer3DModel

    tmp, latents, _ = setup
    out, metrics = uninterrupted
    assert metrics is not None
    assert metrics["global_batch"] == 2 and metrics["steps"] == STEPS
    assert metrics["resumed_from_step"] == 0
    assert metrics["samples_segmentation"] + metrics["samples_depth"] == 2 * STEPS
    summary = json.loads((out / train.SUMMARY_JSON).read_text())
    assert summary["train"]["world_size"] == 2 and summary["steps"] == STEPS
    assert UDPDiffTransformer3DModel.from_pretrained(out / train.TRANSFORMER_DIR).config.in_channels == 8
    assert (out / train.REPORT_DIR / train.PLOT).exists()
    frame = pd.read_csv(out / train.HISTORY)
    assert frame["step"].tolist() == list(range(1, STEPS + 1))

    # Samples are a function of their position in the run, not of the rank that draws them: one
    # process with micro-batch 2 sees the same batches, so the curve agrees up to float rounding.
    single = tmp / "single"
    train.run(params_with(steps=STEPS, micro_batch=2, checkpoint_every=EVERY), [latents], single)
    reference = pd.read_csv(single / train.HISTORY)
    pd.testing.assert_series_equal(reference["loss"], frame["loss"], check_exact=False, rtol=1e-4)
    pd.testing.assert_series_equal(reference["segmentation"], frame["segmentation"])


def test_killed_run_resumes_from_latest_and_continues_the_same_curve(setup, uninterrupted):
    tmp, latents, params_file = setup
    out = tmp / "killed"
    proc, metrics = torchrun(tmp, latents, params_file, out, kill_tag=KILL_TAG)
    assert proc.returncode != 0 and metrics is None, proc.stderr[-4000:]
    assert "SIGKILL" in proc.stderr  # torchrun names the signal that ended rank 0
    checkpoints = out / train.CHECKPOINTS
    assert ds.latest_step(checkpoints) == 2  # the save at step 4 never became `latest`
    assert (checkpoints / KILL_TAG).is_dir()
    assert not (out / train.SUMMARY_JSON).exists() and not (out / WEIGHTS).exists()

    proc, metrics = torchrun(tmp, latents, params_file, out)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert metrics["resumed_from_step"] == 2
    reference, _ = uninterrupted
    pd.testing.assert_frame_equal(
        pd.read_csv(out / train.HISTORY), pd.read_csv(reference / train.HISTORY), check_exact=True
    )
    assert (out / WEIGHTS).read_bytes() == (reference / WEIGHTS).read_bytes()
    assert ds.latest_step(checkpoints) == STEPS
