"""Paths and small builders shared by tests."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tdmpc_ray.model.published import find_published

REPO = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"
FP16_STUDENT = "mt30_1M_steps_045dist_fp16.pt"


def free_ports(count: int) -> list[int]:
    """`count` distinct local ports free at the moment: a test's Ray services must not collide
    with another Ray on the machine (its dashboard holds 8265)."""
    socks = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            socks.append(sock)
        return [s.getsockname()[1] for s in socks]
    finally:
        for sock in socks:
            sock.close()


def shared_checkpoint(name: str) -> Path:
    """A verified local copy of the published student `name` (a short or file name, found in the
    download cache or ../shared/checkpoints by `find_published`), or skip the test with the
    reason."""
    path = find_published(name)
    if path is None:
        pytest.skip(
            f"published student {name} not found locally (run `tdmpc-ray download`, or keep "
            "../shared/checkpoints beside the repo)"
        )
    return path


def near_deterministic(model):
    """`model` with its policy std at the floor (e^-10), so sampled actions equal the mean to
    ~1e-5: updates on different splits of a batch then draw the same actions."""
    import torch

    with torch.no_grad():
        half = model.cfg.action_dim
        model._pi[-1].weight[half:].zero_()
        model._pi[-1].bias[half:].fill_(-100.0)
    return model


def registered_checkpoints(run_dir: Path) -> int:
    """How many checkpoints Ray Train's controller has registered for the run in `run_dir`: the
    ones a restarted worker group resumes from. A checkpoint folder on disk is not enough: the
    controller registers it later, when it next polls the workers, and a worker lost in between
    restarts the run from the checkpoint before it (or from scratch)."""
    import json

    try:
        snapshot = json.loads((run_dir / "checkpoint_manager_snapshot.json").read_text())
    except (OSError, ValueError):
        return 0
    return len(snapshot.get("checkpoint_results", []))


def run_with_one_file_changed(
    tmp_path: Path, file: str, after: str, insert: str, script: str
) -> subprocess.CompletedProcess:
    """Run Python `script` against a copy of the package in which only `file` (relative to the
    package) differs: `insert` added after the first line holding `after`. Shows that a change
    needs that file alone; fails the test when `after` is not in the file or the script fails."""
    package = tmp_path / "tdmpc_ray"
    shutil.copytree(REPO / "tdmpc_ray", package, ignore=shutil.ignore_patterns("__pycache__"))
    target = package / file
    text = target.read_text()
    assert after in text, f"{file} has no line {after!r}"
    head, line_end, tail = text.partition(after)
    end = tail.index("\n") + 1
    target.write_text(head + line_end + tail[:end] + insert + tail[end:])
    guard = f"import tdmpc_ray; assert tdmpc_ray.__file__.startswith({str(tmp_path)!r})\n"
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    run = subprocess.run(
        [sys.executable, "-c", guard + script],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return run
