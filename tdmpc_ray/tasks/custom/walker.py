"""Walker tasks TD-MPC2 adds for MT30: walking and running backwards."""

from __future__ import annotations

import numpy as np
from dm_control.rl import control
from dm_control.suite import walker
from dm_control.utils import rewards

from tdmpc_ray.tasks.custom.common import TaskFactory, longer_floor_model


class BackwardsPlanarWalker(walker.PlanarWalker):
    """The stock walker reward with the speed term mirrored: x-velocity <= -move_speed pays 1."""

    def get_reward(self, physics: walker.Physics) -> float:
        standing = rewards.tolerance(
            physics.torso_height(),
            bounds=(walker._STAND_HEIGHT, np.inf),
            margin=walker._STAND_HEIGHT / 2,
        )
        upright = (1 + physics.torso_upright()) / 2
        stand = (3 * standing + upright) / 4
        backwards = rewards.tolerance(
            -physics.horizontal_velocity(),
            bounds=(self._move_speed, np.inf),
            margin=self._move_speed / 2,
            value_at_margin=0.5,
            sigmoid="linear",
        )
        return stand * (5 * backwards + 1) / 6


def _environment(task: BackwardsPlanarWalker) -> control.Environment:
    """Walker with a floor long enough to walk backwards, at the stock timing."""
    physics = walker.Physics.from_xml_string(*longer_floor_model("walker.xml", "floor"))
    return control.Environment(
        physics,
        task,
        time_limit=walker._DEFAULT_TIME_LIMIT,
        control_timestep=walker._CONTROL_TIMESTEP,
    )


TASKS: dict[str, TaskFactory] = {
    "walker-walk-backwards": lambda random: _environment(
        BackwardsPlanarWalker(walker._WALK_SPEED, random=random)
    ),
    "walker-run-backwards": lambda random: _environment(
        BackwardsPlanarWalker(walker._RUN_SPEED, random=random)
    ),
}
