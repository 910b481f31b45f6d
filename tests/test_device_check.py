"""`bench/device_check.py --dry`: every GPU measurement's code path, tiny, on CPU, so the script a
GPU session runs in one go cannot rot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import device_check


def test_a_dry_run_never_writes_the_committed_results(tmp_path):
    assert device_check.result_path(True, None, tmp_path) == tmp_path / "gpu.json"
    assert device_check.result_path(False, None, tmp_path) == device_check.RESULTS / "gpu.json"
    assert device_check.result_path(True, tmp_path / "x.json", tmp_path) == tmp_path / "x.json"


@pytest.mark.slow
def test_the_dry_device_check_measures_every_section_on_cpu(ray_session, tmp_path):
    out = device_check.main(["--dry", "--out", str(tmp_path / "gpu.json")])

    result = json.loads(Path(out).read_text())
    assert result["device"] == "cpu"
    for row in result["update"]:
        assert min(row[f"{s}_updates_per_s"] for s in ("eager", "compiled", "compiled_bf16")) > 0
    assert {r["precision"] for r in result["teacher"]} == {"fp32", "bf16"}
    assert all(r["rows_per_s"] > 0 for r in result["teacher"])
    assert all(
        r["asked_updates_per_s"] > 0 and r["cached_updates_per_s"] > 0 for r in result["loop"]
    )
    assert [r["envs"] for r in result["planning"]] == list(device_check.DRY.envs)
    assert result["train_run"]["steps"] == device_check.DRY.train_steps
    assert result["mt30_eval"]["episodes"] == 2 and result["mt30_eval"]["wall_s"] > 0
