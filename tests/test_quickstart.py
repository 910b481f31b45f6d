"""`tdmpc-ray quickstart --tiny`: every stage of the pipeline on a clean folder, both students
scored, and `--full` documenting the real MT30 path."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest

from tdmpc_ray.cli import main


@pytest.mark.slow
def test_tiny_quickstart_runs_every_stage_and_scores_both_students(ray_session, tmp_path):
    out = tmp_path / "qs"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["quickstart", "--tiny", "--out", str(out)]) == 0

    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["scores"]) == {"scratch", "distilled", "teacher"}
    assert all(isinstance(score, float) for score in summary["scores"].values())
    for path in summary["paths"].values():
        assert Path(path).exists(), path
    assert summary["student_mib"]["int8"] < summary["student_mib"]["fp32"]
    screen = printed.getvalue().split("quickstart finished", 1)[1]
    assert "scratch" in screen and "distilled" in screen and "MiB int8" in screen
    assert main(["quickstart", "--out", str(out)]) == 2  # refuses to mix runs in one folder


def test_full_documents_the_real_mt30_path(capsys):
    assert main(["quickstart", "--full"]) == 0
    text = capsys.readouterr().out
    for step in ("tdmpc-ray data convert", "tune/dcoef.yaml", "--tasks mt30", "--mode int8",
                 "ray job submit"):  # fmt: skip
        assert step in text
