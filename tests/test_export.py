"""`tdmpc-ray export`: the exported controller acts like the library's Planner given the same
noise, and runs in a Python that cannot import tdmpc_ray."""

from __future__ import annotations

import json
import logging
import os
import re
import site
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tdmpc_ray.cli import main
from tdmpc_ray.deploy.controller import MPPIStep, PriorStep
from tdmpc_ray.deploy.exporter import ExportConfig, export_controller
from tdmpc_ray.deploy.runtime import ExportedPolicy, planner_noise, prior_noise
from tdmpc_ray.model import checkpoint_hash, load_world_model
from tdmpc_ray.planning import Planner, PlannerConfig
from tests.helpers import shared_checkpoint

SMALL = PlannerConfig(iterations=2, num_samples=64, num_elites=8, num_pi_trajs=4)
TINY = PlannerConfig(iterations=1, num_samples=16, num_elites=4, num_pi_trajs=2)
TASKS = torch.tensor([6, 16, 26])
"""acrobot (1 action dim), fish (5), reacher-three (3): three blocks of the Planner's 2 envs."""


@pytest.fixture(scope="module")
def student():
    return load_world_model(shared_checkpoint("mt30_1M_steps_045dist_fp16.pt"))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny controller for 3 environments: MPPI and prior, fp32 (.pt2) and int8 (.onnx);
    (folder, manifest, checkpoint, pin)."""
    pytest.importorskip("onnxruntime")
    path = shared_checkpoint("mt30_1M_steps_045dist_fp16.pt")
    out = tmp_path_factory.mktemp("export") / "controller"
    cfg = ExportConfig(planner=TINY, num_envs=3, precisions=("fp32", "int8"))
    manifest, pin = export_controller(path, out, cfg)
    return out, manifest, path, pin


def _planner_actions(student, cfg, obs_steps, eval_mode, seed=3):
    planner = Planner(student, cfg, num_envs=len(TASKS), seed=seed)
    return [planner.act(obs, TASKS, eval_mode=eval_mode) for obs in obs_steps], planner


@pytest.mark.parametrize("eval_mode", [True, False])
def test_mppi_step_acts_like_the_planner_given_its_noise(student, eval_mode):
    torch.manual_seed(0)
    obs_steps = [torch.randn(3, 24) for _ in range(4)]
    expected, planner = _planner_actions(student, SMALL, obs_steps, eval_mode)
    step = MPPIStep(student, SMALL, num_envs=3)
    generator = torch.Generator().manual_seed(3)
    plan = torch.zeros(3, SMALL.horizon, 6)
    with torch.no_grad():
        for obs, action in zip(obs_steps, expected, strict=True):
            noise = planner_noise(generator, SMALL, 3, 6, num_q=2, eval_mode=eval_mode)
            got, plan = step(obs, TASKS, plan, *noise.values())
            torch.testing.assert_close(got, action, atol=1e-4, rtol=0)
    torch.testing.assert_close(plan, planner._prev_mean, atol=1e-4, rtol=0)


def test_prior_step_is_the_planners_prior(student):
    obs = torch.randn(3, 24)
    cfg = PlannerConfig(mpc=False)
    for eval_mode in (True, False):
        expected, _ = _planner_actions(student, cfg, [obs], eval_mode, seed=5)
        eps = prior_noise(torch.Generator().manual_seed(5), cfg, 3, 6, eval_mode)
        with torch.no_grad():
            got = PriorStep(student, num_envs=3)(obs, TASKS, eps)
        torch.testing.assert_close(got, expected[0], atol=1e-5, rtol=0)


def test_bf16_prior_stays_close_to_fp32(student):
    obs, eps = torch.randn(3, 24), torch.zeros(3, 6)
    with torch.no_grad():
        fp32 = PriorStep(student, 3)(obs, TASKS, eps)
        bf16 = PriorStep(student, 3, "bf16")(obs, TASKS, eps)
    assert PriorStep(student, 3, "bf16").heads.pi_rest[0].weight_t.dtype == torch.bfloat16
    assert 0 < (bf16 - fp32).abs().max() < 0.25  # bf16 rounding, near-saturated tanh


@pytest.mark.slow
def test_exported_programs_act_like_the_planner(student, exported):
    """The .pt2 and .onnx programs, loaded back, through the evaluation's Policy adapter."""
    out, _, _, pin = exported
    torch.manual_seed(1)
    obs_steps = [torch.randn(3, 24) for _ in range(3)]
    expected, _ = _planner_actions(student, TINY, obs_steps, eval_mode=False)
    for program, atol in (("mppi-fp32.pt2", 1e-4),):
        policy = ExportedPolicy(out, program, seed=3, sha256=pin)
        policy.reset()
        for obs, action in zip(obs_steps, expected, strict=True):
            torch.testing.assert_close(policy.act(obs, TASKS, False), action, atol=atol, rtol=0)
    prior_expected, _ = _planner_actions(student, PlannerConfig(mpc=False), obs_steps[:1], True)
    got = ExportedPolicy(out, "prior-fp32.pt2", seed=3, sha256=pin).act(obs_steps[0], TASKS, True)
    torch.testing.assert_close(got, prior_expected[0], atol=1e-5, rtol=0)
    int8 = ExportedPolicy(out, "prior-int8.onnx", seed=3).act(obs_steps[0], TASKS, True)
    padded = torch.arange(6) >= torch.tensor([1, 5, 3]).unsqueeze(1)
    assert torch.all(int8[padded] == 0) and int8.abs().max() <= 1
    assert (int8 - prior_expected[0]).abs().mean() < 0.1  # int8 rounding; flips near tanh's 0


@pytest.mark.slow
def test_manifest_and_files_describe_the_controller(exported):
    out, manifest, source, pin = exported
    assert manifest["source"]["sha256"] == checkpoint_hash(source)
    assert pin == checkpoint_hash(out / "manifest.json")  # the sha256 of the file written
    assert manifest["num_envs"] == 3 and manifest["planner"]["num_samples"] == TINY.num_samples
    assert sorted(manifest["programs"]) == sorted(
        ["mppi-fp32.pt2", "mppi-int8.onnx", "prior-fp32.pt2", "prior-int8.onnx"]
    )
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [*manifest["programs"], "manifest.json", "README.md"]
    )
    fish = manifest["tasks"][16]
    assert (fish["name"], fish["id"], fish["obs_dim"], fish["action_dim"]) == (
        "fish-swim",
        16,
        24,
        5,
    )
    assert fish["action_mask"] == [1, 1, 1, 1, 1, 0]
    entry = manifest["programs"]["mppi-fp32.pt2"]
    assert [i["name"] for i in entry["inputs"]][:3] == ["obs", "task", "plan"]
    assert entry["max_abs_diff_vs_fp32"] == 0.0 and entry["outputs"][1]["shape"] == [3, 1 + 2, 6]
    assert json.loads((out / "manifest.json").read_text())["programs"] == manifest["programs"]


@pytest.mark.slow
def test_int8_program_computes_in_int8_and_is_small(exported):
    import onnx

    out, manifest, _, _ = exported
    graph = onnx.load(out / "mppi-int8.onnx").graph
    ops = [n.op_type for n in graph.node]
    constants = {i.name for i in graph.initializer}
    float_matmuls = [n for n in graph.node if n.op_type == "MatMul" and n.input[1] in constants]
    assert ops.count("MatMulInteger") >= 10 and not float_matmuls
    assert manifest["programs"]["mppi-int8.onnx"]["bytes"] <= 2.1 * 2**20


_CHILD = """
import sys
sys.path = [p for p in sys.path if p] + sys.argv[1:]
try:
    import tdmpc_ray
except ImportError:
    pass
else:
    raise SystemExit("tdmpc_ray is importable: not a standalone test")
import torch
inputs = torch.load("inputs.pt", weights_only=True)
step = torch.export.load("mppi-fp32.pt2").module()
prior = torch.export.load("prior-fp32.pt2").module()
plan, actions = inputs["plan"], []
for noise in inputs["noise"]:
    action, plan = step(inputs["obs"], inputs["task"], plan, *noise)
    actions.append(action)
prior_action = prior(inputs["obs"], inputs["task"], torch.zeros_like(actions[0]))
torch.save({"actions": actions, "prior": prior_action}, "outputs.pt")
readme = open("README.md").read()
for block in __import__("re").findall("```python\\n(.*?)```", readme, flags=16):
    exec(block, {})
print("standalone ok")
"""


@pytest.mark.slow
def test_controller_runs_where_tdmpc_ray_cannot_be_imported(student, exported):
    """A clean `python -I -S` (no site, no .pth files, so no editable install) with only the
    interpreter's site-packages for torch/onnxruntime; it proves tdmpc_ray does not import,
    runs the programs on the Planner's noise, and runs the README's control loops."""
    out, *_ = exported
    torch.manual_seed(2)
    obs = torch.randn(3, 24)
    generator = torch.Generator().manual_seed(3)
    noise = [
        list(planner_noise(generator, TINY, 3, 6, 2, eval_mode=True).values()) for _ in range(2)
    ]
    torch.save(
        {"obs": obs, "task": TASKS, "plan": torch.zeros(3, 3, 6), "noise": noise}, out / "inputs.pt"
    )
    try:
        site_dirs = [d for d in site.getsitepackages() if Path(d).is_dir()]
        run = subprocess.run(
            [sys.executable, "-I", "-S", "-c", _CHILD, *site_dirs],
            cwd=out,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert run.returncode == 0 and "standalone ok" in run.stdout, run.stderr[-3000:]
        got = torch.load(out / "outputs.pt", weights_only=True)
    finally:
        for name in ("inputs.pt", "outputs.pt"):
            (out / name).unlink(missing_ok=True)
    expected, _ = _planner_actions(student, TINY, [obs, obs], eval_mode=True)
    for action, want in zip(got["actions"], expected, strict=True):
        torch.testing.assert_close(action, want, atol=1e-4, rtol=0)
    prior, _ = _planner_actions(student, PlannerConfig(mpc=False), [obs], eval_mode=True)
    torch.testing.assert_close(got["prior"], prior[0], atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--precision", "fp64"], "unknown precision 'fp64'"),
        (["--num-pi-trajs", "600"], "need num_pi_trajs < num_samples"),
        (["--num-envs", "0"], "num_envs must be at least 1"),
    ],
)
def test_bad_settings_fail_with_one_line(tmp_path, capsys, args, message):
    ckpt = shared_checkpoint("mt30_1M_steps_045dist_fp16.pt")
    assert main(["export", str(ckpt), "--out", str(tmp_path / "c"), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
    assert not (tmp_path / "c").exists()


def test_non_empty_out_and_missing_checkpoint_are_refused(tmp_path, capsys):
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "keep.txt").write_text("x")
    ckpt = shared_checkpoint("mt30_1M_steps_045dist_fp16.pt")
    assert main(["export", str(ckpt), "--out", str(tmp_path / "c")]) == 2
    assert "exists and is not an empty folder" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "nope.pt"), "--out", str(tmp_path / "d")]) == 2
    assert re.search(r"nope\.pt: no such checkpoint file", capsys.readouterr().err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]


@pytest.mark.slow
def test_int8_export_is_quiet_and_publishes_a_normal_folder(tmp_path, capfd, caplog):
    """With the deploy extra: none of the ONNX tools' notices, a note on what max |diff| means,
    and a folder and files with the modes the umask gives (not a temporary folder's 0700)."""
    pytest.importorskip("onnxruntime")
    ckpt = shared_checkpoint("mt30_1M_steps_045dist_fp16.pt")
    out = tmp_path / "c"
    tiny = ["--iterations", "1", "--num-samples", "16", "--num-elites", "4", "--num-pi-trajs", "2"]

    assert main(["export", str(ckpt), "--out", str(out), "--precision", "fp32,int8", *tiny]) == 0

    stdout, stderr = capfd.readouterr()
    assert "max |diff|: the largest gap" in stdout
    logged = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    notices = "\n".join([stderr, *logged])  # torch logs to stderr; ONNX Runtime to the root logger
    assert not re.search(r"torchvision|pre-processing|Warning", notices), notices
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~mask
    assert {stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()} == {0o666 & ~mask}
