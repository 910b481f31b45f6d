"""Hopper task TD-MPC2 adds for MT30: hopping backwards."""

from __future__ import annotations

import numpy as np
from dm_control.rl import control
from dm_control.suite import hopper
from dm_control.utils import rewards

from tdmpc_ray.tasks.custom.common import Random, TaskFactory

# TD-MPC2 asks for half the stock hop speed backwards, with half the stock margin.
_BACKWARDS_SPEED = hopper._HOP_SPEED / 2
_BACKWARDS_MARGIN = hopper._HOP_SPEED / 4


class HopBackwards(hopper.Hopper):
    """Stock hopper standing term times a hop term for x-velocity <= -1 m/s."""

    def __init__(self, random: Random = None) -> None:
        super().__init__(hopping=True, random=random)

    def get_reward(self, physics: hopper.Physics) -> float:
        standing = rewards.tolerance(physics.height(), (hopper._STAND_HEIGHT, 2))
        hopping = rewards.tolerance(
            -physics.speed(),
            bounds=(_BACKWARDS_SPEED, np.inf),
            margin=_BACKWARDS_MARGIN,
            value_at_margin=0.5,
            sigmoid="linear",
        )
        return standing * hopping


def _hop_backwards(random: Random) -> control.Environment:
    """The stock hopper model and timing with the backwards reward."""
    physics = hopper.Physics.from_xml_string(*hopper.get_model_and_assets())
    return control.Environment(
        physics,
        HopBackwards(random=random),
        time_limit=hopper._DEFAULT_TIME_LIMIT,
        control_timestep=hopper._CONTROL_TIMESTEP,
    )


TASKS: dict[str, TaskFactory] = {"hopper-hop-backwards": _hop_backwards}
