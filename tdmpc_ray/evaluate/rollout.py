"""Lockstep rollouts: several environments stepped together, one batched policy call per step.

Pure Python (no Ray): `RolloutActor` wraps it for evaluation, and data generation can call it
directly with `record=True` to get each episode's observations, actions and rewards in the
Parquet episode layout.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch
from dm_control.rl.control import PhysicsError

from tdmpc_ray.tasks.dmcontrol import DMControlEnv, make_env

EnvFactory = Callable[[str, int, int], DMControlEnv]
"""Builds an environment from (task, seed, obs_pad); `make_env` in production."""


def derive_seed(*parts: object) -> int:
    """A 31-bit seed determined by `parts` alone (stable across processes and Python runs)."""
    digest = hashlib.blake2b("/".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & 0x7FFF_FFFF


@dataclass(frozen=True)
class EpisodeSpec:
    """One episode to run: its task, index within the task, and the run seed it derives from.

    `attempt` counts physics-error retries; each attempt gets a fresh environment seed, so a
    deterministic blow-up does not repeat.
    """

    seed: int
    task: str
    task_id: int
    """Row of the task in the model's task embedding (0 for single-task models)."""
    episode: int
    attempt: int = 0
    record_video: bool = False

    @property
    def env_seed(self) -> int:
        """Seed of the environment's initial states and targets."""
        return derive_seed("env", self.seed, self.task, self.episode, self.attempt)

    def retry(self) -> EpisodeSpec:
        """The same episode's next attempt."""
        return dataclasses.replace(self, attempt=self.attempt + 1)


def planner_seed(specs: Sequence[EpisodeSpec]) -> int:
    """Seed of the planner that steps exactly these episodes together: its one random stream
    serves the whole batch, so it is tied to the batch, not to an actor."""
    return derive_seed("planner", *((s.seed, s.task, s.episode, s.attempt) for s in specs))


@dataclass
class Trajectory:
    """An episode in the Parquet episode layout: step 0 of `action` and `reward` is NaN."""

    obs: np.ndarray
    """float32 [T+1, obs_pad]"""
    action: np.ndarray
    """float32 [T+1, action_dim]"""
    reward: np.ndarray
    """float32 [T+1]"""


@dataclass
class EpisodeResult:
    """What one episode gave: its return over `length` agent steps, or the physics error that
    ended it early (then the return is partial and the episode is to be retried)."""

    spec: EpisodeSpec
    ret: float
    length: int
    success: float = 0.0
    error: str | None = None
    video: bytes | None = None
    """mp4 of the episode when `spec.record_video`."""
    trajectory: Trajectory | None = field(default=None, repr=False)


class Policy(Protocol):
    """What `run_lockstep` needs from a policy; `Planner` is one (MPPI or its policy prior)."""

    def act(self, obs: torch.Tensor, task: torch.Tensor, eval_mode: bool) -> torch.Tensor: ...

    def reset(self, envs: list[int] | None = None) -> None: ...


class _Slot:
    """One environment of the lockstep batch and what its episode has gathered so far."""

    def __init__(self, spec: EpisodeSpec, env: DMControlEnv, max_steps: int | None, record: bool):
        self.spec, self.env, self.record = spec, env, record
        self.limit = min(env.episode_length, max_steps or env.episode_length)
        self.ret, self.length, self.success = 0.0, 0, 0.0
        self.error: str | None = None
        self.frames: list[np.ndarray] = []
        self.obs: list[np.ndarray] = []
        self.actions: list[np.ndarray] = []
        self.rewards: list[float] = []

    @property
    def active(self) -> bool:
        return self.error is None and self.length < self.limit

    def reset(self) -> np.ndarray:
        obs = self.env.reset()
        self.obs.append(obs)
        if self.spec.record_video:
            self.frames.append(self.env.render())
        return obs

    def step(self, action: np.ndarray) -> np.ndarray:
        """One agent step; returns the next observation (the last one again on a physics error)."""
        try:
            obs, reward, _, info = self.env.step(action)
        except PhysicsError as err:
            self.error = f"PhysicsError at step {self.length}: {err}"
            return self.obs[-1]
        self.ret += reward
        self.length += 1
        self.success = float(info.get("success", 0.0))
        if self.record:
            self.obs.append(obs)
            self.actions.append(action)
            self.rewards.append(reward)
        else:
            self.obs[-1] = obs
        if self.spec.record_video:
            self.frames.append(self.env.render())
        return obs

    def result(self) -> EpisodeResult:
        trajectory = video = None
        if self.record and self.error is None:
            nan_action = np.full((1, len(self.actions[0])), np.nan)
            trajectory = Trajectory(
                obs=np.stack(self.obs).astype(np.float32),
                action=np.concatenate([nan_action, self.actions]).astype(np.float32),
                reward=np.array([np.nan, *self.rewards], dtype=np.float32),
            )
        if self.frames and self.error is None:
            from tdmpc_ray.evaluate.video import encode_mp4

            video = encode_mp4(self.frames)
        return EpisodeResult(
            self.spec, self.ret, self.length, self.success, self.error, video, trajectory
        )


def run_lockstep(
    policy: Policy,
    specs: Sequence[EpisodeSpec],
    *,
    eval_mode: bool,
    obs_pad: int,
    env_factory: EnvFactory = make_env,
    max_steps: int | None = None,
    record: bool = False,
    on_step: Callable[[int], None] | None = None,
) -> list[EpisodeResult]:
    """Run one episode per spec, all environments stepped together with one `policy.act` per
    step for the whole batch; returns results in the order of `specs`. `on_step` hears after
    each batched step how many environments took it (progress).

    `policy` must serve len(specs) environments. An environment whose physics diverges
    (dm_control's PhysicsError) stops with its error recorded while the others go on; its slot
    stays in the batch with a frozen observation, so the others' actions are the same as in a
    run without the error. `max_steps` cuts episodes short (for tests and benchmarks);
    `record` returns each finished episode's `Trajectory`.
    """
    slots: list[_Slot] = []
    try:
        for spec in specs:
            env = env_factory(spec.task, spec.env_seed, obs_pad)
            slots.append(_Slot(spec, env, max_steps, record))
        obs = np.stack([slot.reset() for slot in slots])
        task = torch.tensor([spec.task_id for spec in specs], dtype=torch.long)
        policy.reset()
        while any(slot.active for slot in slots):
            actions = policy.act(torch.from_numpy(obs), task, eval_mode).cpu().numpy()
            active = [i for i, slot in enumerate(slots) if slot.active]
            for i in active:
                obs[i] = slots[i].step(actions[i])
            if on_step is not None:
                on_step(len(active))
        return [slot.result() for slot in slots]
    finally:
        for slot in slots:
            slot.env.close()
