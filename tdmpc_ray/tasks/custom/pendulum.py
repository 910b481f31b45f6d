"""Pendulum task TD-MPC2 adds for MT30: spinning as fast as possible in either direction."""

from __future__ import annotations

import numpy as np
from dm_control.rl import control
from dm_control.suite import pendulum
from dm_control.utils import rewards

from tdmpc_ray.tasks.custom.common import Random, TaskFactory

_SPIN_SPEED = 9.0  # |angular velocity| (rad/s) that pays full reward


class Spin(pendulum.SwingUp):
    """Swing-up's random start, rewarded for |angular velocity| >= 9 rad/s (0.5 at 4.5)."""

    def get_reward(self, physics: pendulum.Physics) -> float:
        return rewards.tolerance(
            np.linalg.norm(physics.angular_velocity()),
            bounds=(_SPIN_SPEED, np.inf),
            margin=_SPIN_SPEED / 2,
            value_at_margin=0.5,
            sigmoid="linear",
        )


def _spin(random: Random) -> control.Environment:
    """The stock pendulum model and timing with the spin reward."""
    physics = pendulum.Physics.from_xml_string(*pendulum.get_model_and_assets())
    return control.Environment(
        physics, Spin(random=random), time_limit=pendulum._DEFAULT_TIME_LIMIT
    )


TASKS: dict[str, TaskFactory] = {"pendulum-spin": _spin}
