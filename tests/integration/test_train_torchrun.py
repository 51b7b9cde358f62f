"""`unic.train` under `torchrun --nproc_per_node 2` on CPU (gloo), and its resume after a SIGKILL.

The killed run is a real torchrun launch whose rank 0 sends itself SIGKILL while saving the step-8
checkpoint: DeepSpeed has written and fsynced every file, the `latest` pointer has not moved yet.
torchrun then tears the other rank down. The rerun must resume from step 4 and reproduce the
uninterrupted run's loss history and head exactly.
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
from vidprior.unic import train

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from test_train import make_dataset, params_with  # noqa: E402

pytestmark = pytest.mark.integration

STEPS, EVERY = 12, 4
KILL_TAG = ds.tag_for(8)

MODULE = "vidprior.unic.train"


def torchrun(tmp: Path, dataset, params_file: Path, out: Path, kill_tag: str | None = None):
    return launch(tmp, MODULE, dataset, params_file, out, kill_tag=kill_tag, timeout=150)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("torchrun")
    dataset = make_dataset(tmp / "data")
    # micro-batch 2 on each of 2 ranks: the same global batch (4) as the single-process run below.
    params = params_with(steps=STEPS, micro_batch=2, checkpoint_every=EVERY, eval_every=EVERY)
    params_file = tmp / "params.yaml"
    params_file.write_text(params_to_yaml(params), encoding="utf-8")
    return tmp, dataset, params_file


@pytest.fixture(scope="module")
def uninterrupted(setup):
    tmp, dataset, params_file = setup
    out = tmp / "uninterrupted"
    proc, metrics = torchrun(tmp, dataset, params_file, out)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out, metrics


def test_two_ranks_train_and_write_the_head(setup, uninterrupted):
    tmp, dataset, _ = setup
    out, metrics = uninterrupted
    assert metrics is not None
    assert metrics["global_batch"] == 4 and metrics["steps"] == STEPS
    assert metrics["resumed_from_step"] == 0
    assert (out / "head.safetensors").exists()
    assert (out / train.REPORT_DIR / train.PLOT).exists()
    summary = json.loads((out / train.CLASSIFIER_JSON).read_text())
    assert summary["train"]["world_size"] == 2
    frame = pd.read_csv(out / train.HISTORY)
    assert frame["step"].tolist() == list(range(1, STEPS + 1))
    assert frame["loss"].iloc[-3:].mean() < frame["loss"].iloc[:3].mean()

    # Samples are a function of their position in the run, not of the rank that draws them: one
    # process with micro-batch 4 sees the same batches, so the curve agrees up to float rounding.
    single = tmp / "single"
    train.run(
        params_with(steps=STEPS, micro_batch=4, checkpoint_every=EVERY, eval_every=EVERY),
        list(dataset),
        single,
    )
    pd.testing.assert_series_equal(
        pd.read_csv(single / train.HISTORY)["loss"], frame["loss"], check_exact=False, rtol=1e-4
    )


def test_killed_run_resumes_from_latest_and_continues_the_same_curve(setup, uninterrupted):
    tmp, dataset, params_file = setup
    out = tmp / "killed"
    proc, metrics = torchrun(tmp, dataset, params_file, out, kill_tag=KILL_TAG)
    assert proc.returncode != 0 and metrics is None, proc.stderr[-4000:]
    assert "SIGKILL" in proc.stderr  # torchrun names the signal that ended rank 0
    checkpoints = out / train.CHECKPOINTS
    assert ds.latest_step(checkpoints) == 4  # the save at step 8 never became `latest`
    assert (checkpoints / KILL_TAG).is_dir()
    assert not (out / "head.safetensors").exists()

    proc, metrics = torchrun(tmp, dataset, params_file, out)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert metrics["resumed_from_step"] == 4
    reference, _ = uninterrupted
    pd.testing.assert_frame_equal(
        pd.read_csv(out / train.HISTORY), pd.read_csv(reference / train.HISTORY), check_exact=True
    )
    assert (out / "head.safetensors").read_bytes() == (reference / "head.safetensors").read_bytes()
    assert ds.latest_step(checkpoints) == STEPS
