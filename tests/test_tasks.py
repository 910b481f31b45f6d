"""MT30 DMControl environments: dims, wrapper semantics, and the custom tasks' rewards.

Reward checks put the physics into a hand-picked state and compare the task's reward with
the value worked out by hand from TD-MPC2's definition of that task.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from dm_control.rl import control

from tdmpc_ray.tasks.custom import CUSTOM_TASKS
from tdmpc_ray.tasks.dmcontrol import ACTION_REPEAT, make_env
from tdmpc_ray.tasks.task_sets import MT30, get_task_set, task_dims

PAD = get_task_set("mt30").obs_dim


def _check_obs(obs: np.ndarray, obs_dim: int) -> None:
    """Finite float32 of the padded length, zero past the task's own dims."""
    assert obs.dtype == np.float32 and obs.shape == (PAD,)
    assert np.isfinite(obs).all()
    assert not obs[obs_dim:].any()


@pytest.mark.parametrize("task", MT30)
def test_dims_reset_and_step(task: str) -> None:
    env = make_env(task, seed=0)
    assert (env.obs_dim, env.action_dim) == task_dims(task)
    assert env.obs_pad == PAD == 24 and env.episode_length == 500
    obs = env.reset()
    rng = np.random.default_rng(0)
    for _ in range(3):
        _check_obs(obs, env.obs_dim)
        obs, reward, done, _ = env.step(rng.uniform(-1, 1, env.action_dim))
        assert 0.0 <= reward <= ACTION_REPEAT and not done
    _check_obs(obs, env.obs_dim)
    env.close()


def test_episode_is_500_agent_steps() -> None:
    env = make_env("pendulum-swingup")
    env.reset()
    action = np.zeros(env.action_dim)
    assert not any(env.step(action)[2] for _ in range(499))
    assert env.step(action)[2]
    with pytest.raises(RuntimeError, match="call reset"):
        env.step(action)
    env.reset()
    assert not env.step(action)[2]


@pytest.mark.parametrize("task", ["walker-walk", "reacher-three-easy", "cup-spin"])
def test_seed_determines_first_observation(task: str) -> None:
    first = make_env(task, seed=7).reset()
    np.testing.assert_array_equal(first, make_env(task, seed=7).reset())
    assert not np.array_equal(first, make_env(task, seed=8).reset())


def test_unknown_and_metaworld_tasks_fail_clearly() -> None:
    with pytest.raises(ValueError, match="unknown task 'walker-fly'"):
        make_env("walker-fly")
    with pytest.raises(
        NotImplementedError, match="Meta-World tasks are not supported yet: mw-reach"
    ):
        make_env("mw-reach")


def test_padded_action_is_sliced_to_the_task() -> None:
    padded, exact = make_env("reacher-three-hard", seed=1), make_env("reacher-three-hard", seed=1)
    padded.reset(), exact.reset()
    action = np.array([0.3, -0.7, 0.9])
    obs_padded, reward_padded, _, _ = padded.step(np.concatenate([action, [5.0, -5.0, 5.0]]))
    obs_exact, reward_exact, _, _ = exact.step(action)
    np.testing.assert_array_equal(obs_padded, obs_exact)
    assert reward_padded == reward_exact
    np.testing.assert_allclose(padded.physics.data.ctrl, action)  # [-1, 1] == ctrlrange here
    with pytest.raises(ValueError, match="at least 3 values"):
        padded.step(action[:2])


def test_render_under_egl() -> None:
    code = (
        "from tdmpc_ray.tasks.dmcontrol import make_env\n"
        "env = make_env('pendulum-spin'); env.reset()\n"
        "frame = env.render(width=64, height=48)\n"
        "print(frame.shape, frame.dtype, frame.std() > 0)\n"
    )
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "MUJOCO_GL": "egl", "PYTHONPATH": repo}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    if result.returncode and "EGL" in result.stderr:
        pytest.skip("no EGL on this machine")
    assert result.stdout.strip() == "(48, 64, 3) uint8 True", result.stderr


def _custom(task: str, seed: int = 0) -> control.Environment:
    """A custom task's dm_control environment, reset."""
    env = CUSTOM_TASKS[task](seed)
    env.reset()
    return env


def _reward(env: control.Environment, qpos: dict[str, float], qvel: dict[str, float]) -> float:
    """The task's reward in the default pose with the given joint positions/velocities."""
    physics = env.physics
    with physics.reset_context():
        for joint, value in qpos.items():
            physics.named.data.qpos[joint] = value
        for joint, value in qvel.items():
            physics.named.data.qvel[joint] = value
    return env.task.get_reward(physics)


def test_custom_tasks_are_the_mt30_extras() -> None:
    assert set(CUSTOM_TASKS) == set(MT30[19:])


@pytest.mark.parametrize(
    ("task", "velocity", "expected"),
    [
        ("walker-walk-backwards", -1.0, 1.0),
        ("walker-walk-backwards", -0.5, (5 * 0.5 + 1) / 6),  # half way to 1 m/s -> 0.5
        ("walker-walk-backwards", 1.0, 1 / 6),  # forwards earns only the standing share
        ("walker-run-backwards", -8.0, 1.0),
        ("walker-run-backwards", -6.0, (5 * 0.75 + 1) / 6),
    ],
)
def test_walker_backwards_reward(task: str, velocity: float, expected: float) -> None:
    # The default pose stands upright with the torso above 1.2 m, so only velocity matters.
    env = _custom(task)
    assert _reward(env, {}, {"rootx": velocity}) == pytest.approx(expected)
    assert env.physics.named.model.geom_size["floor", 0] == 500


@pytest.mark.parametrize(
    ("velocity", "expected"), [(-8.0, 1.0), (-4.0, 0.5), (0.0, 0.0), (8.0, 0.0)]
)
def test_cheetah_run_backwards_reward(velocity: float, expected: float) -> None:
    env = _custom("cheetah-run-backwards")
    assert _reward(env, {}, {"rootx": velocity}) == pytest.approx(expected)
    assert env.physics.named.model.geom_size["ground", 0] == 200


@pytest.mark.parametrize("task", ["cheetah-run-front", "cheetah-run-back"])
@pytest.mark.parametrize(
    ("velocity", "speed_term"), [(6.0, 1.0), (3.0, 0.5), (0.0, 0.0), (-6.0, 0.0)]
)
def test_cheetah_one_foot_speed_term(task: str, velocity: float, speed_term: float) -> None:
    # Lifted 2 m, torso and both feet are above 1.2 m: only the speed term is left.
    reward = _reward(_custom(task), {"rootz": 2.0}, {"rootx": velocity})
    assert reward == pytest.approx((5 * speed_term + 1) / 6)


def test_cheetah_run_front_raises_back_foot_and_run_back_the_front_one() -> None:
    # Nose down, 0.6 m up: torso (1.3 m) and back foot above 1.2 m, front foot below.
    qpos, qvel = {"rootz": 0.6, "rooty": np.pi / 2}, {"rootx": 6.0}
    front, back = _custom("cheetah-run-front"), _custom("cheetah-run-back")
    assert _reward(front, qpos, qvel) == pytest.approx(1.0)
    reward = _reward(back, qpos, qvel)
    low_foot = back.physics.named.data.xpos["ffoot", "z"]
    assert low_foot < 1.0
    foot_up = 0.1 ** (((1.2 - low_foot) / 0.6) ** 2)  # Gaussian tolerance, 0.1 at the margin
    assert reward == pytest.approx((3 * foot_up + 2) / 5)


@pytest.mark.parametrize(
    ("rootz", "velocity", "expected"),
    [(2.0, 0.0, 1.0), (2.0, 0.75, (5 + 0.5) / 6), (2.0, 1.5, 5 / 6), (2.0, -0.5, 1.0)],
)
def test_cheetah_jump_reward(rootz: float, velocity: float, expected: float) -> None:
    env = _custom("cheetah-jump")
    assert _reward(env, {"rootz": rootz}, {"rootx": velocity}) == pytest.approx(expected)
    assert _reward(env, {}, {}) < 0.5  # lying at its start height, only staying still pays


@pytest.mark.parametrize(
    ("qpos", "velocity", "expected"),
    [({}, -1.0, 1.0), ({}, -0.5, 0.5), ({}, 0.0, 0.0), ({}, 1.0, 0.0), ({"rooty": 1.6}, -1.0, 0.0)],
)
def test_hopper_hop_backwards_reward(qpos: dict, velocity: float, expected: float) -> None:
    # Upright default pose stands 0.98 m above the foot (needs 0.6-2 m); tipped over it doesn't.
    assert _reward(_custom("hopper-hop-backwards"), qpos, {"rootx": velocity}) == pytest.approx(
        expected
    )


@pytest.mark.parametrize(
    ("task", "target_size"), [("reacher-three-easy", 0.05), ("reacher-three-hard", 0.015)]
)
def test_reacher_three_links_and_target(task: str, target_size: float) -> None:
    env = _custom(task)
    physics = env.physics
    assert physics.named.model.geom_size["target", 0] == target_size
    np.testing.assert_allclose(
        physics.named.model.jnt_range[["shoulder1", "wrist"]], np.deg2rad([[-80, 80]] * 2)
    )
    with physics.reset_context():
        pass
    np.testing.assert_allclose(physics.named.data.geom_xpos["finger", :2], [0.27, 0.0])  # 3 x .09
    reach = target_size + 0.01  # target radius + finger radius
    for offset, expected in [(reach - 1e-3, 1.0), (reach + 1e-3, 0.0)]:
        physics.named.model.geom_pos["target", ["x", "y"]] = [0.27 + offset, 0.0]
        assert _reward(env, {}, {}) == expected


@pytest.mark.parametrize(
    ("qpos", "qvel", "expected"),
    [
        ({"ball_z": 0.35}, {"ball_x": 8.0}, 0.0),  # in the cup: nothing, however fast
        ({"ball_x": 0.6}, {}, 1 / 3),  # far out but still
        ({"ball_x": 0.6}, {"ball_x": 6.0}, 1.0),
        ({"ball_x": 0.6}, {"ball_z": -3.0}, (1 + 2 * 0.5) / 3),
        ({"ball_z": -0.025}, {"ball_x": 6.0}, (0.75 + 2) / 3),  # 0.375 m away
    ],
)
def test_cup_spin_reward(qpos: dict, qvel: dict, expected: float) -> None:
    # Default pose: the ball hangs 0.35 m straight below the cup's target site.
    assert _reward(_custom("cup-spin"), qpos, qvel) == pytest.approx(expected)


def test_cup_spin_mostly_starts_in_the_cup() -> None:
    starts_in_cup = [_custom("cup-spin", seed).physics.in_target() for seed in range(10)]
    assert sum(starts_in_cup) >= 8


@pytest.mark.parametrize(
    ("velocity", "expected"), [(9.0, 1.0), (-12.0, 1.0), (4.5, 0.5), (-6.75, 0.75), (0.0, 0.0)]
)
def test_pendulum_spin_reward(velocity: float, expected: float) -> None:
    assert _reward(_custom("pendulum-spin"), {}, {"hinge": velocity}) == pytest.approx(expected)
