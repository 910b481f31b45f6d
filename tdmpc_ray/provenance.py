"""What produced a result: package versions, git commit, host and time, recorded with every run."""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path

_PACKAGES = ("tdmpc-ray", "torch", "ray", "dm-control", "mujoco", "numpy", "pyarrow")
COMMIT_ENV = "TDMPC_RAY_GIT_COMMIT"
"""Recorded as the commit where the code has no .git (a Ray job's working_dir): set it at submit."""


def git_commit(path: Path | None = None) -> str | None:
    """Commit of the checkout holding this package (with `-dirty` when it has changes); without a
    checkout, the `TDMPC_RAY_GIT_COMMIT` environment variable, if set."""
    root = path or Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return os.environ.get(COMMIT_ENV) or None
    return f"{commit}-dirty" if dirty else commit


def versions() -> dict[str, str | None]:
    """Installed versions of the packages a result depends on (None when absent)."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def provenance() -> dict:
    """Versions, git commit, host and UTC time: attach to every config, result and checkpoint."""
    return {
        "versions": versions(),
        "git_commit": git_commit(),
        "host": platform.node(),
        "machine": platform.machine(),
        "time_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
