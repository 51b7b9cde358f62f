"""Launching a training stage's `main` under `torchrun --nproc_per_node 2`, optionally killed mid-save.

The killed launch's rank 0 sends itself SIGKILL while saving the checkpoint `kill_tag`: DeepSpeed has
written and fsynced every file, the `latest` pointer has not moved yet; torchrun then tears the other
rank down. That is what a `kill -9` (or an OOM kill) at the worst moment leaves on disk.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

CHILD = """
import importlib, os, signal, sys
from vidprior.training import engine

stage = importlib.import_module(sys.argv.pop(1))
kill_tag = sys.argv.pop(1)
original = engine._write_latest


def write_latest(ckpt_dir, tag):
    if tag == kill_tag:  # the checkpoint's files are complete; `latest` still names the previous one
        os.kill(os.getpid(), signal.SIGKILL)
    original(ckpt_dir, tag)


engine._write_latest = write_latest
sys.exit(stage.main(sys.argv[1:]))
"""


def torchrun(
    tmp: Path,
    module: str,
    inputs: Sequence[Path],
    params_file: Path,
    out: Path,
    *,
    kill_tag: str | None = None,
    timeout: float = 240,
) -> tuple[subprocess.CompletedProcess, dict | None]:
    """Run `python -m <module> INPUTS --output OUT --params PARAMS` on 2 ranks; (process, METRICS line)."""
    if kill_tag is None:
        entry = ["-m", module]
    else:
        script = tmp / "killed_child.py"
        script.write_text(CHILD, encoding="utf-8")
        entry = [str(script), module, kill_tag]
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        *entry,
        *map(str, inputs),
        "--output",
        str(out),
        "--params",
        str(params_file),
    ]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=tmp)
    metrics = None
    for line in proc.stdout.splitlines():
        if line.startswith("METRICS "):
            metrics = json.loads(line.removeprefix("METRICS "))
    return proc, metrics
