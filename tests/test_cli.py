"""The `tdmpc-ray` entry point: every verb is registered; user errors are one line and exit 2."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from dataclasses import dataclass, field

import pytest

from tdmpc_ray import __version__
from tdmpc_ray.cli import build_parser, main
from tdmpc_ray.config import config_keys, describe_fields
from tdmpc_ray.sweep.spec import SweepSpec
from tdmpc_ray.train.config import TrainConfig


def test_every_verb_is_registered():
    verbs = build_parser()._subparsers._group_actions[0].choices
    assert set(verbs) == {
        "quickstart",
        "download",
        "eval",
        "compare",
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
        (
            ["train", "stepz=10"],
            "unknown config key 'stepz' for TrainConfig; did you mean 'steps'?",
        ),
        (["train", "steps=10"], "data=<folder of Parquet episodes> is required"),
        (["train", "data=x", "batch_size=many"], "batch_size: expected int"),
        (["sweep", "missing.yaml"], "missing.yaml: no such sweep spec"),
    ],
)
def test_user_errors_print_one_line_and_exit_2(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and err.startswith(f"tdmpc-ray {argv[0]}: error:")


def test_an_unknown_key_names_close_matches_not_every_key(capsys):
    assert main(["train", "data=x", "stepz=10"]) == 2
    err = capsys.readouterr().err
    assert len(err) < 160 and "--help lists every key" in err and "d_coef" not in err


def test_version(capsys):
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.strip() == f"tdmpc-ray {__version__}"


@pytest.mark.parametrize(
    ("argv", "shown"),
    [
        (
            ["eval"],
            [
                "--tasks NAMES",
                "(default mt30)",
                "--num-actors INT",
                "--episodes INT",
                "--cpus-per-actor FLOAT",
                "torch threads (default 1.0)",
                "--iterations INT",
                "--env-block INT",
                "2 on CPU",
            ],
        ),
        (["compare"], ["--tasks NAMES", "--num-actors INT", "--seed INT"]),
        (["data", "convert"], ["task set of the chunks: task ids index it (default mt30)"]),
    ],
)
def test_help_shows_types_and_defaults(argv, shown, capsys):
    with pytest.raises(SystemExit):
        main([*argv, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert all(item in text for item in shown), [item for item in shown if item not in text]
    assert "default None" not in text


@pytest.mark.slow
def test_ray_keeps_token_auth_on_without_its_notice(tmp_path):
    """A verb's Ray starts with token authentication on and no notice about it on stderr."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    code = (
        "import os, ray; from tdmpc_ray.cli import hide_token_auth_notice; "
        "hide_token_auth_notice(); ray.init(address='local', num_cpus=1, "
        "include_dashboard=False); print(os.environ['RAY_AUTH_MODE']); ray.shutdown()"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        env={**env, "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[-1] == "token" and "Token authentication" not in done.stderr


@pytest.mark.parametrize("verb", ["train", "sweep"])
def test_help_lists_every_training_key_with_its_type_default_and_meaning(verb, capsys):
    with pytest.raises(SystemExit):
        main([verb, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    keys = describe_fields(TrainConfig) + (describe_fields(SweepSpec) if verb == "sweep" else [])
    assert [key for key, *_ in describe_fields(TrainConfig)] == list(config_keys(TrainConfig))
    for key, kind, default, doc in keys:
        assert kind and doc, f"{key} has no type or no docstring"
        shown = "required" if default is dataclasses.MISSING else repr(default)
        assert f" {key}: {kind} = {shown} {doc}" in text


@dataclass(frozen=True)
class _Inner:
    lr: float = 3e-4
    """Learning rate."""
    tau: float = 0.01


@dataclass(frozen=True)
class _Outer:
    steps: int = 10
    """Updates."""
    optim: _Inner = field(default_factory=_Inner)
    tags: list[str] = field(default_factory=list)
    """Labels."""


def test_describe_fields_walks_nested_configs_and_flattens_their_keys():
    assert describe_fields(_Outer) == [
        ("steps", "int", 10, "Updates."),
        ("lr", "float", 3e-4, "Learning rate."),
        ("tau", "float", 0.01, ""),
        ("tags", "list[str]", [], "Labels."),
    ]
