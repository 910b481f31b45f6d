"""Resource accounting: runs that fit are sized to fit (the default 2-worker run finishes on 2
CPUs); runs that cannot fit fail in seconds with one line that says what to change."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from tdmpc_ray.evaluate.config import PeriodicEvalConfig
from tdmpc_ray.resources import (
    CHECK_ENV,
    ResourceError,
    RunSettings,
    check_evaluation,
    check_training,
    fit_workers,
    plan_sweep,
)
from tdmpc_ray.train.config import TrainConfig

TWO_CPUS = {"CPU": 2.0, "GPU": 0.0}


def test_default_workers_are_fitted_beside_the_reads_and_evaluation():
    cfg = check_training(TrainConfig(data="d", num_workers=2), TWO_CPUS)
    assert cfg.cpus_per_worker == 0.85  # (2 - 0.25 for reads) / 2, rounded down to 0.05
    cfg = check_training(
        TrainConfig(data="d", num_workers=2, evaluation=PeriodicEvalConfig(eval_freq=10)), TWO_CPUS
    )
    assert cfg.cpus_per_worker == 0.35  # (2 - 0.25 - 1 eval actor) / 2
    assert check_training(TrainConfig(data="d"), {"CPU": 8.0}).cpus_per_worker == 1.0
    explicit = TrainConfig(data="d", cpus_per_worker=0.5)
    assert fit_workers(explicit, TWO_CPUS) is explicit


def test_resources_read_a_runs_settings_without_importing_training():
    """`RunSettings` names every TrainConfig field the accounting reads, so the module stays
    below `train` (no upward import)."""
    assert isinstance(TrainConfig(data="d"), RunSettings)
    code = "import sys, tdmpc_ray.resources; print(any('.train' in m for m in sys.modules))"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert run.stdout.strip() == "False"


def test_a_run_that_cannot_fit_fails_with_one_line_saying_what_to_change():
    with pytest.raises(ResourceError) as err:
        check_training(TrainConfig(data="d", num_workers=2, cpus_per_worker=1.0), TWO_CPUS)
    assert str(err.value) == (
        "training needs 2.25 CPUs (2 workers x 1 + reads 0.25), the cluster has 2: "
        "set cpus_per_worker=0.85"
    )
    with pytest.raises(
        ResourceError,
        match=r"needs 2 GPUs \(2 workers x 1\), the cluster has 1: "
        r"set num_workers=1$",
    ):
        check_training(TrainConfig(data="d", num_workers=2, use_gpu=True), {"CPU": 8.0, "GPU": 1.0})
    with pytest.raises(ResourceError, match=r"needs 1 GPU \(teachers 1\).*: set teacher_gpus=0$"):
        check_training(TrainConfig(data="d", teacher="t.pt", teacher_gpus=1.0), TWO_CPUS)
    with pytest.raises(
        ResourceError, match=r"needs 3.25 CPUs .*1 eval actor x 2.*: set eval_actors=1"
    ):
        check_training(
            TrainConfig(data="d", evaluation=PeriodicEvalConfig(eval_freq=5, eval_cpus=2.0)),
            TWO_CPUS,
        )


def test_warn_mode_logs_instead_of_failing(monkeypatch, caplog):
    monkeypatch.setenv(CHECK_ENV, "warn")
    cfg = check_training(TrainConfig(data="d", num_workers=4, cpus_per_worker=1.0), TWO_CPUS)
    assert cfg.num_workers == 4 and "training needs 4.25 CPUs" in caplog.text


def test_sweep_runs_as_many_trials_as_fit_and_refuses_a_trial_that_never_fits():
    students = [TrainConfig(data="d", teacher=t, cpus_per_worker=0.5) for t in ("a.pt", None)]
    assert plan_sweep(students, 0.25, None, TWO_CPUS) == 2  # 2 x (0.25 + 0.5 + reads 0.25)
    # one CPU held by other work: one trial at a time, or the second trial's function would
    # hold the CPUs the first one's reads wait for
    assert plan_sweep(students, 0.25, None, TWO_CPUS, free={"CPU": 1.2, "GPU": 0.0}) == 1
    assert plan_sweep(students, 0.25, None, TWO_CPUS, free={"CPU": 0.0, "GPU": 0.0}) == 1
    evaluated = [
        TrainConfig(data="d", evaluation=PeriodicEvalConfig(eval_freq=10, eval_cpus=0.25))
        for _ in range(3)
    ]
    assert plan_sweep(evaluated, 0.25, None, TWO_CPUS) == 1
    assert fit_workers(evaluated[0], TWO_CPUS, reserved=0.25).cpus_per_worker == 1.0
    assert plan_sweep(evaluated, 0.25, 3, TWO_CPUS) == 3  # asked for: warned, not refused
    with pytest.raises(
        ResourceError,
        match=r"^one trial needs 2.5 CPUs \(trial function 0.25 \+ "
        r"1 worker x 2 \+ reads 0.25\), the cluster has 2: set cpus_per_worker=1.5$",
    ):
        plan_sweep([TrainConfig(data="d", cpus_per_worker=2.0)], 0.25, None, TWO_CPUS)


def test_evaluation_needs_every_actor_at_once():
    check_evaluation(2, 1.0, TWO_CPUS)
    with pytest.raises(ResourceError) as err:
        check_evaluation(4, 1.0, TWO_CPUS)
    assert str(err.value) == (
        "evaluation needs 4 CPUs (4 actors x 1), the cluster has 2: use at most 2 actor(s), "
        "or 0.5 CPUs per actor"
    )


def within(seconds: float, fn: Callable[[], object]) -> object:
    """`fn()`, failing the test if it has not returned after `seconds` (a run waiting for
    resources never would)."""
    outcome: dict = {}
    runner = threading.Thread(target=lambda: outcome.update(value=fn()), daemon=True)
    runner.start()
    runner.join(timeout=seconds)
    assert not runner.is_alive(), f"still running after {seconds} s: waiting for resources?"
    return outcome["value"]


@pytest.fixture(scope="module")
def small_run(tmp_path_factory) -> dict:
    """A tiny rollout data set and a random 1M MT30 world model to distil from."""
    from tdmpc_ray.data.generate import GenerateConfig, generate
    from tdmpc_ray.model import WorldModel, save_checkpoint
    from tdmpc_ray.model.config import model_config

    root = tmp_path_factory.mktemp("resources")
    generate(
        GenerateConfig(tasks="cartpole-balance,cup-catch", episodes_per_task=2, max_steps=24),
        root / "data",
        progress=False,
    )
    teacher = root / "teacher.pt"
    save_checkpoint(WorldModel(model_config(1, "mt30")), teacher)
    return {"root": root, "data": str(root / "data"), "teacher": str(teacher)}


@pytest.mark.slow
def test_two_worker_distillation_finishes_on_two_cpus(ray_session, small_run):
    from tdmpc_ray.train.trainer import train

    cfg = TrainConfig(
        data=small_run["data"],
        teacher=small_run["teacher"],
        num_workers=2,
        steps=4,
        batch_size=16,
        checkpoint_every=4,
        log_every=2,
        out=str(small_run["root"] / "runs"),
        name="two-workers",
    )
    assert ray_session.cluster_resources()["CPU"] == 2
    summary = within(900, lambda: train(cfg, progress=False))
    assert summary["metrics"]["step"] == 4 and Path(summary["student"]).is_file()
    record = json.loads((small_run["root"] / "runs" / "two-workers" / "run.json").read_text())
    assert record["config"]["cpus_per_worker"] == 0.85


def test_impossible_requests_fail_in_seconds_with_one_line(ray_session, small_run, capsys):
    from tdmpc_ray.cli import main

    argv = ["train", f"data={small_run['data']}", "num_workers=4", "cpus_per_worker=1"]
    assert within(120, lambda: main(argv)) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "tdmpc-ray train: error: training needs 4.25 CPUs (4 workers x 1 + reads 0.25), "
        "the cluster has 2: set cpus_per_worker=0.4"
    )
    argv = [
        "eval",
        "--checkpoint",
        small_run["teacher"],
        "--tasks",
        "cartpole-balance",
        "--episodes",
        "6",
        "--num-actors",
        "3",
        "--no-compile",
    ]
    assert within(120, lambda: main(argv)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("tdmpc-ray eval: error: evaluation needs 3 CPUs (3 actors x 1)")
    assert "\n" not in err
