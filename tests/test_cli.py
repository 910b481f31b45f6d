"""The `tdmpc-ray` entry point: every verb is registered; user errors are one line and exit 2."""

from __future__ import annotations

import pytest

from tdmpc_ray.cli import build_parser, main


def test_every_verb_is_registered():
    verbs = build_parser()._subparsers._group_actions[0].choices
    assert set(verbs) == {
        "quickstart",
        "eval",
        "data",
        "train",
        "quantize",
        "export",
        "sweep",
        "dashboard",
    }


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "stepz=10"], "unknown config key 'stepz'"),
        (["train", "steps=10"], "data=<folder of Parquet episodes> is required"),
        (["train", "data=x", "batch_size=many"], "batch_size: expected int"),
        (["sweep", "missing.yaml"], "missing.yaml: no such sweep spec"),
    ],
)
def test_user_errors_print_one_line_and_exit_2(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and err.startswith(f"tdmpc-ray {argv[0]}: error:")
