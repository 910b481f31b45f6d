"""MT30 DMControl environments with TD-MPC2's wrapper semantics.

One agent step repeats the action for 2 control steps and sums their rewards; an episode is
500 agent steps. Actions live in [-1, 1] (dm_control's action_scale wrapper maps them to the
actuator range) and may come padded to the task set's action dim; observations are the task's
observation dict flattened in spec order, float32, zero-padded to the task set's obs dim.

Importing this module imports dm_control; set `MUJOCO_GL=egl` before that to render headless.
"""

from __future__ import annotations

import numpy as np
from dm_control import suite
from dm_control.rl import control
from dm_control.suite.wrappers import action_scale

from tdmpc_ray.tasks.custom import CUSTOM_TASKS
from tdmpc_ray.tasks.task_sets import MT30, episode_length, get_task_set

ACTION_REPEAT = 2
MT30_OBS_DIM = get_task_set("mt30").obs_dim
_SUITE_DOMAINS = {"cup": "ball_in_cup"}  # MT30 domain prefix -> dm_control suite domain


class DMControlEnv:
    """One DMControl task behind a small numpy reset/step/render interface.

    Attributes: `task` (name), `obs_dim` and `action_dim` (unpadded), `episode_length` (agent
    steps), `obs_pad` (length of returned observations; `obs_dim` when built without padding).
    """

    def __init__(self, task: str, env: control.Environment, obs_pad: int | None) -> None:
        self.task = task
        self._env = action_scale.Wrapper(env, minimum=-1.0, maximum=1.0)
        self.obs_dim = sum(int(np.prod(spec.shape)) for spec in env.observation_spec().values())
        self.action_dim = int(env.action_spec().shape[0])
        self.episode_length = episode_length(task)
        self.obs_pad = self.obs_dim if obs_pad is None else obs_pad
        if self.obs_pad < self.obs_dim:
            raise ValueError(f"{task}: obs_pad={obs_pad} is below its obs dim {self.obs_dim}")
        self._t = self.episode_length

    @property
    def physics(self) -> control.Physics:
        """The underlying MuJoCo physics (for tests and diagnostics; mutate with care)."""
        return self._env.physics

    def reset(self) -> np.ndarray:
        """Start an episode; returns the padded first observation."""
        self._t = 0
        return self._observation(self._env.reset().observation)

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, dict]:
        """One agent step: `action` held for `ACTION_REPEAT` control steps, rewards summed.

        `action` has at least `action_dim` values in [-1, 1]; values past `action_dim` are the
        task set's padding and are ignored. Returns (obs, reward, done, info) with done True on
        the episode's last agent step. dm_control's PhysicsError propagates so the caller can
        rebuild and retry. info["success"] is always 0.0: DMControl has no success signal.
        """
        if self._t >= self.episode_length:
            raise RuntimeError(f"{self.task}: episode is over or not started; call reset()")
        action = np.asarray(action)
        if action.ndim != 1 or action.shape[0] < self.action_dim:
            raise ValueError(
                f"{self.task}: expected a 1-D action with at least {self.action_dim} values, "
                f"got shape {action.shape}"
            )
        action = action[: self.action_dim]
        reward = 0.0
        for _ in range(ACTION_REPEAT):
            time_step = self._env.step(action)
            reward += time_step.reward
        self._t += 1
        done = self._t >= self.episode_length
        return self._observation(time_step.observation), reward, done, {"success": 0.0}

    def render(self, width: int = 384, height: int = 384) -> np.ndarray:
        """RGB frame (height, width, 3) from camera 0, as TD-MPC2's videos use."""
        return self._env.physics.render(height=height, width=width, camera_id=0)

    def close(self) -> None:
        """Free MuJoCo's native data and rendering contexts; the env is unusable afterwards."""
        self._env.physics.free()

    def _observation(self, observation: dict[str, np.ndarray]) -> np.ndarray:
        """Concatenate the observation dict in spec order into a zero-padded float32 vector."""
        padded = np.zeros(self.obs_pad, dtype=np.float32)
        flat = [np.asarray(value, dtype=np.float32).ravel() for value in observation.values()]
        padded[: self.obs_dim] = np.concatenate(flat)
        return padded


def make_env(task: str, seed: int = 0, obs_pad: int | None = MT30_OBS_DIM) -> DMControlEnv:
    """Build one MT30 task; `seed` seeds the task's `random` (initial states, targets)."""
    return DMControlEnv(task, _load(task, seed), obs_pad)


def _load(task: str, seed: int) -> control.Environment:
    """The dm_control environment of an MT30 task: ours for the custom ones, else the suite's."""
    if task.startswith("mw-"):
        raise NotImplementedError(f"Meta-World tasks are not supported yet: {task}")
    if task not in MT30:
        raise ValueError(f"unknown task {task!r}: make_env supports the 30 MT30 DMControl tasks")
    if task in CUSTOM_TASKS:
        return CUSTOM_TASKS[task](seed)
    domain, name = task.replace("-", "_").split("_", 1)
    return suite.load(_SUITE_DOMAINS.get(domain, domain), name, task_kwargs={"random": seed})
