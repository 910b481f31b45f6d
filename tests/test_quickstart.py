"""`tdmpc-ray quickstart`: the tiny run is clean and states distilled vs scratch with an interval;
`--full` prints only commands that run."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys

import pytest

from tdmpc_ray.cli import build_parser, main
from tdmpc_ray.quickstart import FULL_PATH
from tests.helpers import REPO


@pytest.mark.slow
def test_tiny_quickstart_is_clean_short_and_compares_the_students_with_an_interval(tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "tdmpc_ray", "quickstart", "--tiny", "--out", str(tmp_path / "qs")],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-3000:]
    assert "Traceback" not in output, output
    assert len(output.splitlines()) <= 150, output
    interval = r"-?\d+\.\d+ \[-?\d+\.\d+, -?\d+\.\d+\]"
    assert re.search(rf"^distilled - scratch: {interval}: ", run.stdout, re.MULTILINE), run.stdout


def test_quickstart_refuses_a_folder_that_holds_files(tmp_path, capsys, monkeypatch):
    for name in ("MUJOCO_GL", "RAY_DATA_DISABLE_PROGRESS_BARS", "RAY_DATA_LOGGING_CONFIG"):
        monkeypatch.delenv(name, raising=False)  # the verb sets them; restored after the test
    (tmp_path / "old.txt").write_text("an earlier run")
    assert main(["quickstart", "--tiny", "--out", str(tmp_path)]) == 2
    assert "already holds files" in capsys.readouterr().err


def full_path_commands() -> list[list[str]]:
    """Every `tdmpc-ray ...` command `--full` prints (also those submitted with `ray job`)."""
    commands = []
    for line in FULL_PATH.splitlines():
        if "tdmpc-ray " in line:
            commands.append(shlex.split(line[line.index("tdmpc-ray ") :])[1:])
    return commands


def test_full_prints_the_real_mt30_path_with_commands_that_parse(capsys):
    assert main(["quickstart", "--full"]) == 0
    assert capsys.readouterr().out.strip() == FULL_PATH.strip()
    commands = full_path_commands()
    verbs = [c[0] if c[0] != "data" else f"data {c[1]}" for c in commands]
    assert verbs == [
        "data convert",
        "data label",
        "sweep",
        "dashboard",
        "eval",
        "quantize",
        "sweep",
    ]
    for argv in commands:
        build_parser().parse_args(argv)  # exits (fails the test) on an invalid command
    ours = re.findall(r"\b((?:tune|cluster|docs)/[\w./-]+\.(?:yaml|md))", FULL_PATH)
    assert ours and all((REPO / path).is_file() for path in ours), ours
