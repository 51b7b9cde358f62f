"""Kill `unic.prompts` with SIGKILL mid-stage, rerun, get the result of a clean run.

The stage runs in a real child interpreter. In the killed run, `ChunkStore.array` is wrapped so that
after N freshly computed embedding chunks the child sends itself SIGKILL: no Python cleanup runs, the
partial state on disk is exactly what a `kill -9` (or an OOM kill) leaves behind.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from vidprior.config import Params, params_from_dict, params_to_yaml
from vidprior.io.checkpoint import PARTIAL_DIR
from vidprior.io.manifest import MANIFEST, REJECTS, read_manifest, read_rejects
from vidprior.models import build_text_embedder
from vidprior.unic import prompts
from vidprior.unic.synthetic import synthetic_prompts

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
N_PROMPTS = 3000
CHUNK = 100
KILL_AFTER = 7
OLD_MANIFEST = b"an older manifest that a killed run must leave alone"

CHILD = """
import json, os, signal, sys
from vidprior.config import load_params
from vidprior.io.checkpoint import ChunkStore
from vidprior.unic import prompts

params_file, source, out, kill_after = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
if kill_after > 0:
    original = ChunkStore.array

    def array(self, index, compute):
        result = original(self, index, compute)
        if self.computed >= kill_after:
            os.kill(os.getpid(), signal.SIGKILL)
        return result

    ChunkStore.array = array
metrics = prompts.run(load_params([params_file]), [source], out)
print("METRICS " + json.dumps(metrics))
"""


def params_with(prompts_update: dict | None = None) -> Params:
    """params.yaml with whole `unic.prompts` subsections replaced."""
    data = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    data["unic"]["prompts"].update(prompts_update or {})
    return params_from_dict(data)


BASE = {"dedup": {"threshold": 0.8, "chunk_size": CHUNK}}


def run_child(tmp_path: Path, params: Params, source: Path, out: Path, kill_after: int = 0):
    params_file = tmp_path / f"params-{params.digest()}.yaml"
    params_file.write_text(params_to_yaml(params), encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(params_file), str(source), str(out), str(kill_after)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    metrics = None
    for line in proc.stdout.splitlines():
        if line.startswith("METRICS "):
            metrics = json.loads(line.removeprefix("METRICS "))
    return proc, metrics


def clean_run(params: Params, source: Path, out: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    prompts.run(params, [source], out)
    return read_manifest(out), read_rejects(out)


def assert_same_result(out: Path, clean: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    pd.testing.assert_frame_equal(read_manifest(out), clean[0])
    pd.testing.assert_frame_equal(read_rejects(out), clean[1])
    assert not (out / PARTIAL_DIR).exists()


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("input") / "synthetic.csv"
    synthetic_prompts(N_PROMPTS, seed=3, near_duplicate_fraction=0.3).to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def killed(tmp_path_factory, source) -> Path:
    """An output directory as a SIGKILL after KILL_AFTER embedding chunks left it (never modified)."""
    tmp = tmp_path_factory.mktemp("killed")
    out = tmp / "out"
    out.mkdir()
    (out / MANIFEST).write_bytes(OLD_MANIFEST)
    proc, metrics = run_child(tmp, params_with(BASE), source, out, kill_after=KILL_AFTER)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert metrics is None
    return out


def copy_of(killed: Path, tmp_path: Path) -> Path:
    out = tmp_path / "out"
    shutil.copytree(killed, out)
    return out


def test_kill_leaves_old_outputs_and_only_complete_chunks(killed, source, tmp_path):
    assert (killed / MANIFEST).read_bytes() == OLD_MANIFEST
    assert not (killed / REJECTS).exists()
    chunk_dir = killed / PARTIAL_DIR / "embeddings"
    files = sorted(p.name for p in chunk_dir.iterdir())
    expected = [f"chunk-{i:06d}.npy" for i in range(KILL_AFTER)]
    assert files == sorted([*expected, "fingerprint.json"])  # no stray temp files either
    assert not (killed / PARTIAL_DIR / "llm_filter").exists()

    # Each chunk on disk is complete and holds the embeddings of its slice of the filtered prompts.
    params = params_with(BASE)
    _, clean_rejects = clean_run(params, source, tmp_path / "clean")
    # The embedder sees the rows that pass the rules, whitespace-normalised, in input order.
    rows = pd.read_csv(source, dtype=str, keep_default_na=False)
    ruled_out = clean_rejects.loc[clean_rejects["stage"].isin(["sources", "rule_filter"]), "id"]
    texts = rows.loc[~rows["uuid"].isin(ruled_out), "prompt"].str.split().str.join(" ").tolist()
    assert len(texts) > KILL_AFTER * CHUNK
    embedder = build_text_embedder(params.unic.prompts.embedder)
    for index, name in enumerate(expected):
        chunk = np.load(chunk_dir / name, allow_pickle=False)
        assert chunk.shape == (CHUNK, embedder.dim) and chunk.dtype == np.float32
        np.testing.assert_array_equal(chunk, embedder.embed(texts[index * CHUNK : (index + 1) * CHUNK]))


def test_rerun_after_kill_resumes_and_matches_a_clean_run(killed, source, tmp_path):
    out = copy_of(killed, tmp_path)
    params = params_with(BASE)
    proc, metrics = run_child(tmp_path, params, source, out)
    assert proc.returncode == 0, proc.stderr
    assert metrics["resumed_chunks"] == KILL_AFTER
    clean = clean_run(params, source, tmp_path / "clean")
    assert_same_result(out, clean)
    assert len(clean[0]) < N_PROMPTS  # the data really has near-duplicates to remove
    assert metrics["prompts_kept"] == len(clean[0])


@pytest.mark.parametrize(
    ("change", "reused", "changes_result"),
    [
        ({"embedder": {"hashing": {"dim": 256, "ngram_min": 3, "ngram_max": 5}}}, 0, True),
        ({"embedder": {"hashing": {"dim": 512, "ngram_min": 2, "ngram_max": 4}}}, 0, True),
        # Chunk boundaries move: old chunk files must not be read at the new offsets.
        ({"dedup": {"threshold": 0.8, "chunk_size": CHUNK + 28}}, 0, False),
        ({"rule_filter": {"max_words": 12}}, 0, True),  # other texts reach the embedder
        # Embeddings do not depend on the threshold, so the killed run's chunks are still valid.
        ({"dedup": {"threshold": 0.9, "chunk_size": CHUNK}}, KILL_AFTER, True),
    ],
    ids=["dim", "ngrams", "chunk_size", "rules", "threshold"],
)
def test_rerun_with_changed_params_gives_the_clean_result_for_them(
    killed, source, tmp_path, change, reused, changes_result
):
    out = copy_of(killed, tmp_path)
    params = params_with({**BASE, **change})
    proc, metrics = run_child(tmp_path, params, source, out)
    assert proc.returncode == 0, proc.stderr
    assert metrics["resumed_chunks"] == reused
    clean = clean_run(params, source, tmp_path / "clean")
    assert_same_result(out, clean)
    if changes_result:  # the change matters for the outputs, so reusing stale state would have shown
        baseline = clean_run(params_with(BASE), source, tmp_path / "baseline")
        assert not (clean[0].equals(baseline[0]) and clean[1].equals(baseline[1]))


def test_embedder_dtype_change_does_not_reuse_chunks(tmp_path):
    source = tmp_path / "few.csv"
    synthetic_prompts(200, seed=5).to_csv(source, index=False)
    fp32 = params_with({"embedder": {"tiny": {"seed": 0}}, "dedup": {"threshold": 0.8, "chunk_size": 50}})
    out = tmp_path / "out"
    proc, _ = run_child(tmp_path, fp32, source, out, kill_after=2)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert len(list((out / PARTIAL_DIR / "embeddings").glob("chunk-*.npy"))) == 2

    data = yaml.safe_load(params_to_yaml(fp32))
    data["unic"]["prompts"]["embedder"]["dtype"] = "bfloat16"
    bf16 = params_from_dict(data)
    proc, metrics = run_child(tmp_path, bf16, source, out)
    assert proc.returncode == 0, proc.stderr
    assert metrics["resumed_chunks"] == 0
