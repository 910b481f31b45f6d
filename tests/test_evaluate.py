"""Evaluation: lockstep rollouts, the Ray pool and its fault handling, scores, and `tdmpc-ray eval`.

Everything runs for real (dm_control, Ray, the published 1M student) with tiny planning and
episodes cut at a few dozen steps, so the whole file takes well under two minutes.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import sys
from dataclasses import replace

import numpy as np
import pytest
import ray.cloudpickle
import torch

from tdmpc_ray import cli
from tdmpc_ray.evaluate.config import EvalConfig
from tdmpc_ray.evaluate.pool import EvalPool, model_payload
from tdmpc_ray.evaluate.report import format_summary, training_metrics
from tdmpc_ray.evaluate.rollout import EpisodeSpec, run_lockstep
from tdmpc_ray.evaluate.score import _actors, evaluate, normalized_score
from tdmpc_ray.evaluate.stats import TOO_FEW, iqm_interval, score_interval, task_interval
from tdmpc_ray.model import load_world_model
from tdmpc_ray.model.published import find_published
from tdmpc_ray.planning import Planner, PlannerConfig
from tdmpc_ray.tasks.dmcontrol import make_env
from tdmpc_ray.tasks.task_sets import get_task_set

CHECKPOINT = find_published("mt30-1M-fp16")
needs_checkpoint = pytest.mark.skipif(
    CHECKPOINT is None,
    reason="published student mt30-1M-fp16 not found locally (tdmpc-ray download, or ../shared)",
)
TINY = PlannerConfig(iterations=1, num_samples=32, num_elites=8, num_pi_trajs=4, horizon=2)
TASKS = ["cartpole-balance", "pendulum-swingup", "cup-catch"]
EPISODES = 2
STEPS = 40
CFG = EvalConfig(planner=TINY, seed=3, envs_per_actor=2, cpus_per_actor=0.5, max_steps=STEPS)
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
HAS_VIDEO = all(importlib.util.find_spec(m) for m in ("imageio", "imageio_ffmpeg"))
TINY_ARGS = [
    "--iterations",
    "1",
    "--num-samples",
    "32",
    "--num-elites",
    "8",
    "--num-pi-trajs",
    "4",
    "--horizon",
    "2",
    "--no-compile",
]

# Ray workers cannot import this test module: ship the fault-injecting factory by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


class DivergeOnce:
    """Env factory: real MT30 envs, but the one built with `seed` gets an infinite joint
    velocity before its 4th step, so MuJoCo really diverges and dm_control raises
    PhysicsError. Retries get a fresh env seed, so it happens once."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def __call__(self, task: str, seed: int, obs_pad: int):
        env = make_env(task, seed, obs_pad)
        if seed == self.seed:
            original, calls = env.step, [0]

            def step(action):
                calls[0] += 1
                if calls[0] == 4:
                    env.physics.data.qvel[:] = np.inf
                return original(action)

            env.step = step
        return env


def _returns(result: dict) -> dict[str, list[float]]:
    return {task: row["returns"] for task, row in result["tasks"].items()}


@pytest.fixture(scope="module")
def pool(ray_session):
    with EvalPool(2, cpus_per_actor=CFG.cpus_per_actor) as pool:
        yield pool


@pytest.fixture(scope="module")
def reference(pool) -> dict:
    return evaluate(CHECKPOINT, TASKS, EPISODES, cfg=CFG, pool=pool)


def test_normalized_score_is_mean_over_tasks_of_mean_return_over_ten() -> None:
    assert normalized_score({"walker-walk": 950.0, "cup-catch": 150.0}) == pytest.approx(55.0)
    with pytest.raises(NotImplementedError, match="Meta-World"):
        normalized_score({"mw-reach": 0.5})
    with pytest.raises(ValueError):
        normalized_score({})


@needs_checkpoint
def test_lockstep_rollout_records_trajectories_in_the_episode_layout() -> None:
    model = load_world_model(CHECKPOINT)
    specs = [EpisodeSpec(0, task, model.cfg.tasks.index(task), 0) for task in TASKS[:2]]
    planner = Planner(model, TINY, num_envs=2, seed=0)
    results = run_lockstep(planner, specs, eval_mode=True, obs_pad=24, max_steps=10, record=True)
    for spec, result in zip(specs, results, strict=True):
        traj = result.trajectory
        assert result.length == 10 and result.error is None
        assert traj.obs.shape == (11, 24) and traj.action.shape == (11, 6)
        assert np.isnan(traj.action[0]).all() and np.isnan(traj.reward[0])
        assert traj.reward[1:].sum() == pytest.approx(result.ret, rel=1e-5)
        np.testing.assert_array_equal(traj.obs[0], make_env(spec.task, spec.env_seed).reset())
    again = run_lockstep(
        Planner(model, TINY, 2, seed=0), specs, eval_mode=True, obs_pad=24, max_steps=10
    )
    assert [r.ret for r in again] == [r.ret for r in results]
    assert all(r.trajectory is None for r in again)


@needs_checkpoint
@pytest.mark.slow
def test_evaluate_reports_each_task_and_the_normalized_score(reference: dict) -> None:
    assert list(reference["tasks"]) == TASKS
    for row in reference["tasks"].values():
        assert len(row["returns"]) == EPISODES and row["lengths"] == [STEPS] * EPISODES
        assert row["mean"] == pytest.approx(np.mean(row["returns"]))
        assert row["std"] == pytest.approx(np.std(row["returns"]))
        assert len(set(row["env_seeds"])) == EPISODES
    means = [row["mean"] for row in reference["tasks"].values()]
    assert reference["normalized_score"] == pytest.approx(np.mean(means) / 10)
    returns = _returns(reference)
    score = score_interval(returns)
    assert (reference["normalized_score_low"], reference["normalized_score_high"]) == (
        score.low,
        score.high,
    )
    assert reference["iqm"] == iqm_interval(returns).value
    assert reference["normalized_score_note"] == reference["iqm_note"] == TOO_FEW  # 3 tasks x 2
    for task, row in reference["tasks"].items():
        assert (row["mean_low"], row["mean_high"], row["mean_note"]) == (None, None, TOO_FEW)
        assert task_interval(returns[task]).note == TOO_FEW
    assert reference["episodes_per_task"] == EPISODES
    assert reference["intervals"]["samples"] == 5000 and reference["intervals"]["seed"] == 0
    assert reference["env_steps"] == len(TASKS) * EPISODES * STEPS
    assert reference["retries"] == []
    config = reference["config"]
    assert config["eval_mode"] is False and config["planner"]["num_samples"] == 32
    assert config["checkpoint_sha256"] and config["num_actors"] == 2
    assert reference["provenance"]["versions"]["torch"]


@needs_checkpoint
def test_one_episode_per_task_says_no_interval(pool) -> None:
    result = evaluate(CHECKPOINT, TASKS[:1], 1, cfg=CFG, pool=pool)
    assert result["normalized_score_low"] is None and result["normalized_score_high"] is None
    assert result["tasks"][TASKS[0]]["mean_low"] is None and result["episodes_per_task"] == 1
    summary = format_summary(result, [])
    assert "[too few episodes for an interval]  (1 tasks x 1 episodes; an interval needs" in summary
    assert training_metrics(result).keys() == {
        "normalized_score",
        "iqm",
        "eval_episodes",
        f"score/{TASKS[0]}",
    }


@needs_checkpoint
@pytest.mark.slow
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=needs_cuda)])
def test_returns_do_not_depend_on_the_layout(request, device: str) -> None:
    """Jobs fix every seed: two actors or one, with half a CPU or a whole one, and on a GPU two
    actors sharing it or one holding it, give the same returns. (A device's arithmetic and
    random stream differ from another's, so each device is compared with itself.)"""
    gpus = 1.0 if device == "cuda" else 0.0
    if device == "cpu":
        first = request.getfixturevalue("reference")
    else:
        first = evaluate(CHECKPOINT, TASKS, EPISODES, 2, replace(CFG, gpus_per_actor=gpus / 2))
    layouts = [
        evaluate(CHECKPOINT, TASKS, EPISODES, 1, replace(CFG, gpus_per_actor=gpus)),
        evaluate(
            CHECKPOINT, TASKS, EPISODES, 1, replace(CFG, cpus_per_actor=1.0, gpus_per_actor=gpus)
        ),
    ]
    assert first["config"]["num_actors"] == 2
    assert all(_returns(r) == _returns(first) for r in layouts)


def test_job_size_is_the_cpu_planner_block_or_a_gpu_batch() -> None:
    assert EvalConfig().job_size() == 2
    assert EvalConfig(gpus_per_actor=0.25).job_size() == 10
    assert EvalConfig(planner=PlannerConfig(mpc=False)).job_size() == 10
    assert EvalConfig(envs_per_actor=7, gpus_per_actor=1.0).job_size() == 7


@needs_checkpoint
def test_no_more_actors_start_than_there_are_jobs(ray_session) -> None:
    """Two episodes in jobs of two are one job: a second actor would only idle."""
    result = evaluate(CHECKPOINT, TASKS[:1], 2, num_actors=3, cfg=CFG)
    assert result["config"]["num_actors"] == 1 and result["config"]["envs_per_actor"] == 2


def test_by_default_actors_fill_the_cpus_but_never_outnumber_the_jobs(ray_session) -> None:
    """The test session's Ray has 2 CPUs: 4 actors of half a CPU, 2 of one CPU, at most one
    per job."""
    assert _actors(None, CFG, jobs=10) == 4 and _actors(None, CFG, jobs=3) == 3
    assert _actors(None, replace(CFG, cpus_per_actor=1.0), jobs=10) == 2
    assert _actors(50, CFG, jobs=1) == 1


@needs_checkpoint
@pytest.mark.slow
def test_progress_moves_within_a_job_and_says_how_many_actors_work(pool, capsys) -> None:
    """An actor answers how far its running job is, so the bar moves before any episode ends;
    a run of one job on more actors says in one line that one works."""
    weights = ray.put(model_payload(load_world_model(CHECKPOINT)))
    task = "cartpole-balance"
    spec = EpisodeSpec(seed=0, task=task, task_id=get_task_set("mt30").index(task), episode=0)
    seen: list[int] = []
    results, _ = pool.run(weights, EvalConfig(planner=TINY), [[spec]], on_progress=seen.append)
    assert results[0].length == 500 and any(0 < s < 500 for s in seen), seen
    evaluate(CHECKPOINT, TASKS[:1], 2, num_actors=3, cfg=CFG, progress=True, label="A = fp16")
    printed = capsys.readouterr()
    assert "A = fp16: 2 episodes in 1 job of up to 2 on 1 actor (3 asked for" in printed.out
    assert "80/80 [" in printed.err and "episodes 2/2" in printed.err  # 2 x 40 env steps


@needs_checkpoint
@pytest.mark.slow
def test_in_memory_model_scores_like_its_checkpoint(pool, reference: dict) -> None:
    model = load_world_model(CHECKPOINT)
    from_state = evaluate(model.state_dict(), TASKS, EPISODES, cfg=CFG, pool=pool)
    assert _returns(from_state) == _returns(reference)
    assert from_state["config"]["checkpoint"] == "<in memory>"


@needs_checkpoint
@pytest.mark.slow
def test_killed_actors_are_replaced_and_their_episodes_rerun(pool, reference: dict) -> None:
    """Both actors are killed when the first episode is in: one job is then still waiting, so
    at least one job is sent to or running on a dead actor, whichever finished first."""
    killed = []

    def kill_actors(result) -> None:
        if not killed:
            killed.extend(pool.actors)
            for actor in killed:
                ray.kill(actor)

    result = evaluate(CHECKPOINT, TASKS, EPISODES, cfg=CFG, pool=pool, on_result=kill_actors)
    assert _returns(result) == _returns(reference)
    assert result["retries"] and {r["reason"] for r in result["retries"]} == {"actor_died"}
    assert len(pool.actors) == 2 and set(map(id, pool.actors)) != set(map(id, killed))


@needs_checkpoint
@pytest.mark.slow
def test_a_physics_error_is_retried_with_a_fresh_env_seed(ray_session, reference: dict) -> None:
    broken = EpisodeSpec(CFG.seed, "pendulum-swingup", 7, episode=1)
    with EvalPool(1, CFG.cpus_per_actor, env_factory=DivergeOnce(broken.env_seed)) as faulty:
        result = evaluate(CHECKPOINT, TASKS, EPISODES, cfg=CFG, pool=faulty)
    [retry] = result["retries"]
    assert (retry["task"], retry["episode"], retry["attempt"]) == ("pendulum-swingup", 1, 0)
    assert retry["reason"] == "physics_error" and "PhysicsError" in retry["error"]
    row = result["tasks"]["pendulum-swingup"]
    assert row["env_seeds"][1] == broken.retry().env_seed and row["lengths"][1] == STEPS
    expected, got = _returns(reference), _returns(result)
    assert got["pendulum-swingup"][0] == expected["pendulum-swingup"][0]
    assert all(got[task] == expected[task] for task in TASKS if task != "pendulum-swingup")


@needs_checkpoint
@pytest.mark.slow
def test_eval_cli_writes_json_csv_and_summary(ray_session, tmp_path, capsys, monkeypatch) -> None:
    """Films each task's first episode too when the `video` extra is installed."""
    monkeypatch.setenv("MUJOCO_GL", "egl")
    out, video = tmp_path / "run", tmp_path / "videos"
    argv = [
        "eval",
        "--checkpoint",
        str(CHECKPOINT),
        "--tasks",
        ",".join(TASKS[:2]),
        "--episodes",
        "6",
        "--num-actors",
        "1",
        "--envs-per-actor",
        "6",
        "--cpus-per-actor",
        "0.5",
        "--max-steps",
        "20",
        "--eval-mode",
        "--seed",
        "5",
        "--out",
        str(out),
        *TINY_ARGS,
        *(["--video", str(video)] if HAS_VIDEO else []),
    ]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    data = json.loads((out / "eval.json").read_text())
    assert data["config"]["eval_mode"] is True and data["config"]["seed"] == 5
    assert data["config"]["planner"]["compile"] is False and data["env_steps_per_s"] > 0
    with open(out / "eval.csv") as f:
        rows = list(csv.DictReader(f))
    assert [row["task"] for row in rows] == [*TASKS[:2], "iqm", "all"]
    for row, name in ((rows[-1], "normalized_score"), (rows[-2], "iqm")):
        for column, suffix in (("score", ""), ("score_low", "_low"), ("score_high", "_high")):
            assert float(row[column]) == pytest.approx(data[name + suffix], abs=1e-4)
    first = data["tasks"][TASKS[0]]
    assert [float(r) for r in rows[0]["returns"].split()] == pytest.approx(
        first["returns"], abs=1e-4
    )
    assert [int(s) for s in rows[0]["env_seeds"].split()] == first["env_seeds"]
    assert float(rows[0]["mean_return_low"]) == pytest.approx(first["mean_low"], abs=1e-4)
    score = f"{data['normalized_score']:.2f} [{data['normalized_score_low']:.2f}, "
    assert (
        f"normalized score  {score}" in printed
        and "(95% interval, 2 tasks x 6 episodes)" in printed
    )
    assert "IQM" in printed and "5000 samples, seed 0" in printed
    assert str(out / "eval.json") in printed
    if HAS_VIDEO:
        assert sorted(p.name for p in video.iterdir()) == [f"{task}.mp4" for task in TASKS[:2]]
        assert (video / f"{TASKS[0]}.mp4").read_bytes()[4:8] == b"ftyp"


@needs_checkpoint
@pytest.mark.parametrize(
    "args, message",
    [
        (["--tasks", "walker-wlak"], "has no task 'walker-wlak'; did you mean 'walker-walk'"),
        (["--tasks", "mt80"], "the model is for task set 'mt30', which has no task 'mw-"),
        (["--tasks", "cup-catch,cup-catch"], "given more than once"),
        (["--episodes", "0"], "must be at least 1"),
        (["--envs-per-actor", "0"], "envs_per_actor must be at least 1"),
        (["--gpus-per-actor", "-1"], "gpus_per_actor must be non-negative"),
        (["--iterations", "0"], "planner iterations must be at least 1, got 0"),
    ],
)
def test_eval_cli_bad_arguments_fail_with_one_line(capsys, args, message) -> None:
    assert cli.main(["eval", "--checkpoint", str(CHECKPOINT), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tdmpc-ray eval: error: ") and message in err
    assert err.count("\n") == 1


def test_eval_cli_missing_checkpoint_fails_with_one_line(tmp_path, capsys) -> None:
    assert cli.main(["eval", "--checkpoint", str(tmp_path / "nope.pt")]) == 2
    err = capsys.readouterr().err
    assert "nope.pt: no such checkpoint file" in err and err.count("\n") == 1


@needs_checkpoint
def test_a_recorded_run_extends_to_the_same_returns_as_one_run(pool, reference, tmp_path) -> None:
    """Episode 0 of the three tasks first (jobs of 2: the first two, then the third alone),
    then two episodes each: the first job is the 2-episode run's first job and is reused; the
    third task's episode 0 shares a job with the next episode there, so it runs again; the
    returns are those of one 2-episode run."""
    record = tmp_path / "episodes.jsonl"
    first = evaluate(CHECKPOINT, TASKS, 1, cfg=CFG, pool=pool, record=record)
    assert first["resumed_episodes"] == 0
    assert [_returns(first)[t] for t in TASKS[:2]] == [
        _returns(reference)[t][:1] for t in TASKS[:2]
    ]
    extended = evaluate(CHECKPOINT, TASKS, EPISODES, cfg=CFG, pool=pool, record=record)
    assert extended["resumed_episodes"] == 2
    assert _returns(extended) == _returns(reference)
    again = evaluate(CHECKPOINT, TASKS, EPISODES, cfg=CFG, pool=pool, record=record)
    assert again["resumed_episodes"] == len(TASKS) * EPISODES and again["env_steps_run"] == 0
    assert _returns(again) == _returns(reference)
    with pytest.raises(ValueError, match="were run with planner.num_samples=32, this run has 64"):
        bigger = replace(CFG, planner=replace(TINY, num_samples=64))
        evaluate(CHECKPOINT, TASKS, EPISODES, cfg=bigger, pool=pool, record=record)


@needs_checkpoint
def test_eval_cli_keeps_an_earlier_record_unless_resumed(tmp_path, capsys) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "episodes.jsonl").write_text('{"header": {}}\n')
    for args, message in (
        (["--out", str(out)], "holds episodes of an earlier run; --resume continues"),
        (["--resume"], "--resume continues the run in --out DIR"),
    ):
        assert cli.main(["eval", "--checkpoint", str(CHECKPOINT), *args]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1
