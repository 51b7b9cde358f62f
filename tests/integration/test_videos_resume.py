"""Kill `unic.videos` with SIGKILL mid-stage, rerun, get the manifest of a clean run, no duplicates.

The stage runs in a child interpreter whose `ChunkStore.records` sends itself SIGKILL after N
freshly finished batches, leaving exactly what a `kill -9` (or an OOM kill) leaves on disk.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from vidprior.config import params_from_dict, params_to_yaml
from vidprior.io.checkpoint import PARTIAL_DIR
from vidprior.io.manifest import MANIFEST, read_manifest, read_rejects, write_manifest
from vidprior.unic import images, videos

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
KILL_AFTER = 2  # batches of 1 video

CHILD = """
import json, os, signal, sys

import torch

# The parent's thread count: the float kernels, and so the videos' bytes, depend on it.
torch.set_num_threads(int(sys.argv[5]))
from vidprior.config import load_params
from vidprior.io.checkpoint import ChunkStore
from vidprior.unic import videos

params_file, images_dir, out, kill_after = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
original = ChunkStore.records

def records(self, index, compute):
    result = original(self, index, compute)
    if self.computed >= kill_after:
        os.kill(os.getpid(), signal.SIGKILL)
    return result

ChunkStore.records = records
print("METRICS " + json.dumps(videos.run(load_params([params_file]), [images_dir], out)))
"""


@pytest.fixture(scope="module")
def params():
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    data["unic"]["images"].update({"per_prompt": 3, "steps": 2, "height": 32, "width": 32})
    data["unic"]["videos"].update({"frames": 4, "steps": 2, "batch_size": 1, "height": 32, "width": 32})
    return params_from_dict(data)


@pytest.fixture(scope="module")
def images_dir(params, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("images")
    prompts = pd.DataFrame(
        {"id": ["a", "b"], "prompt": ["a cat leaping over a wall", "waves crashing on rocks"]}
    )
    write_manifest(prompts, root / "prompts")
    images.run(params, [root / "prompts"], root / "images")
    return root / "images"


def test_killed_videos_stage_resumes_to_the_clean_result(params, images_dir, tmp_path):
    clean = tmp_path / "clean"
    videos.run(params, [images_dir], clean)

    out = tmp_path / "resumed"
    params_file = tmp_path / "params.yaml"
    params_file.write_text(params_to_yaml(params))
    threads = str(torch.get_num_threads())
    command = [sys.executable, "-c", CHILD, str(params_file), str(images_dir), str(out), str(KILL_AFTER)]
    command.append(threads)
    killed = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not (out / MANIFEST).exists()
    assert len(list((out / PARTIAL_DIR / "videos").glob("chunk-*.json"))) == KILL_AFTER

    metrics = videos.run(params, [images_dir], out)
    assert metrics["resumed_batches"] == KILL_AFTER
    resumed, expected = read_manifest(out), read_manifest(clean)
    assert resumed["id"].is_unique and len(resumed) == len(read_manifest(images_dir)) == 6
    pd.testing.assert_frame_equal(resumed, expected)  # same rows, seeds and file hashes
    pd.testing.assert_frame_equal(read_rejects(out), read_rejects(clean))
    assert sorted(p.name for p in (out / "videos").iterdir()) == sorted(
        Path(p).name for p in expected["path"]
    )
    assert not (out / PARTIAL_DIR).exists()
    assert "METRICS " not in killed.stdout
