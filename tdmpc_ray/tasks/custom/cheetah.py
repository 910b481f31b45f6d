"""Cheetah tasks TD-MPC2 adds for MT30: running backwards, running on one foot, jumping."""

from __future__ import annotations

import numpy as np
from dm_control.rl import control
from dm_control.suite import cheetah
from dm_control.utils import rewards

from tdmpc_ray.tasks.custom.common import Random, TaskFactory, longer_floor_model

_UP_HEIGHT = 1.2  # torso/foot height (m) at which a height term pays 1
_BACKWARDS_SPEED = 0.8 * cheetah._RUN_SPEED
_ONE_FOOT_SPEED = 0.6 * cheetah._RUN_SPEED
_JUMP_MAX_SPEED = 0.5  # |x-velocity| above which jumping in place starts losing reward


def _height_reward(height: float) -> float:
    """1 at or above `_UP_HEIGHT`, Gaussian below it (0.1 at half of `_UP_HEIGHT`)."""
    return rewards.tolerance(height, bounds=(_UP_HEIGHT, np.inf), margin=_UP_HEIGHT / 2)


def _speed_reward(speed: float, target: float) -> float:
    """1 at or above `target`, falling linearly to 0 at zero speed."""
    return rewards.tolerance(
        speed, bounds=(target, np.inf), margin=target, value_at_margin=0, sigmoid="linear"
    )


def _height(physics: cheetah.Physics, body: str) -> float:
    """World z of a body's frame."""
    return physics.named.data.xpos[body, "z"]


class RunBackwards(cheetah.Cheetah):
    """The stock run reward mirrored, at 80% of the stock target speed."""

    def get_reward(self, physics: cheetah.Physics) -> float:
        return _speed_reward(-physics.speed(), _BACKWARDS_SPEED)


class RunOnOneFoot(cheetah.Cheetah):
    """Run forwards with the torso and `raised_foot` high, i.e. on the other foot only."""

    def __init__(self, raised_foot: str, random: Random = None) -> None:
        self._raised_foot = raised_foot
        super().__init__(random=random)

    def get_reward(self, physics: cheetah.Physics) -> float:
        up = (
            3 * _height_reward(_height(physics, self._raised_foot))
            + 2 * _height_reward(_height(physics, "torso"))
        ) / 5
        return up * (5 * _speed_reward(physics.speed(), _ONE_FOOT_SPEED) + 1) / 6


class Jump(cheetah.Cheetah):
    """Get torso and feet high while staying in place (the mean of two one-foot stands)."""

    def get_reward(self, physics: cheetah.Physics) -> float:
        torso = _height(physics, "torso")
        height = np.mean(
            [_height_reward((torso + _height(physics, foot)) / 2) for foot in ("bfoot", "ffoot")]
        )
        still = rewards.tolerance(
            physics.speed(),
            bounds=(-_JUMP_MAX_SPEED, _JUMP_MAX_SPEED),
            margin=_JUMP_MAX_SPEED,
            value_at_margin=0,
            sigmoid="linear",
        )
        return (5 * height + still) / 6


def _environment(task: cheetah.Cheetah) -> control.Environment:
    """Cheetah with a floor long enough to run backwards, at the stock timing."""
    physics = cheetah.Physics.from_xml_string(*longer_floor_model("cheetah.xml", "ground"))
    return control.Environment(physics, task, time_limit=cheetah._DEFAULT_TIME_LIMIT)


TASKS: dict[str, TaskFactory] = {
    "cheetah-run-backwards": lambda random: _environment(RunBackwards(random=random)),
    "cheetah-run-front": lambda random: _environment(RunOnOneFoot("bfoot", random=random)),
    "cheetah-run-back": lambda random: _environment(RunOnOneFoot("ffoot", random=random)),
    "cheetah-jump": lambda random: _environment(Jump(random=random)),
}
