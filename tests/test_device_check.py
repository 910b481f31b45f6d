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


def test_a_failing_section_is_recorded_and_the_others_still_run_and_are_written(tmp_path):
    out = tmp_path / "gpu.json"
    device_check.main(
        ["--dry", "--out", str(out), "--sections", "environment,update_256", "--fail", "update_256"]
    )

    result = json.loads(out.read_text())
    assert result["update_256"]["error"].startswith(
        "exit code 1: RuntimeError: failure injected into section update_256"
    )
    assert result["environment"]["torch"] and result["environment"]["cpus"] > 0
    assert list(result["seconds"]) == ["update_256", "environment"]  # plan order
    assert "planning" not in result


def test_a_section_past_its_budget_is_killed_and_recorded(tmp_path):
    result = device_check.run_isolated("teacher", True, tmp_path, budget_s=1.0, fail=None)
    assert result["error"].startswith("ran past its budget of 1 s")


def test_unknown_sections_are_refused_with_one_line():
    with pytest.raises(SystemExit, match="unknown section"):
        device_check.main(["--dry", "--sections", "update,planning"])


@pytest.mark.slow
def test_the_dry_device_check_measures_every_section_on_cpu(tmp_path):
    sections = ",".join(device_check.BUDGETS)
    out = device_check.main(["--dry", "--out", str(tmp_path / "gpu.json"), "--sections", sections])

    result = json.loads(Path(out).read_text())
    assert result["device"] == "cpu"
    assert not [name for name in device_check.BUDGETS if "error" in result[name]]
    for name, batch_size in device_check.DRY.batches.items():
        row = result[name]
        assert row["batch_size"] == batch_size
        assert min(row[f"{s}_updates_per_s"] for s in ("eager", "compiled", "compiled_bf16")) > 0
    assert {r["precision"] for r in result["teacher"]} == {"fp32", "bf16"}
    assert all(r["rows_per_s"] > 0 for r in result["teacher"])
    assert result["loop"]["asked_updates_per_s"] > 0 and result["loop"]["cached_updates_per_s"] > 0
    assert [r["envs"] for r in result["planning"]] == list(device_check.DRY.envs)
    assert result["train_run"]["steps"] == device_check.DRY.train_steps
    assert result["mt30_eval"]["episodes"] == 2 and result["mt30_eval"]["wall_s"] > 0
