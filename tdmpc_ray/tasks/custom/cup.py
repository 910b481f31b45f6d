"""Ball-in-cup task TD-MPC2 adds for MT30: swing the ball around the cup, fast and far out."""

from __future__ import annotations

import numpy as np
from dm_control.rl import control
from dm_control.suite import ball_in_cup, base
from dm_control.utils import rewards

from tdmpc_ray.tasks.custom.common import Random, TaskFactory

_FAR = 0.5  # ball-to-target distance (m) that pays the full distance term
_FAST = 6.0  # ball speed (m/s) that pays the full speed term
_START_OUTSIDE_PROB = 0.1  # chance an episode may start with the ball outside the cup


class Spin(ball_in_cup.BallInCup):
    """Rewards a fast ball far from the cup; zero while the ball is in the cup.

    Episodes mostly start with the ball resting in the cup (the catch task's start, further
    restricted), so the agent first has to get it out.
    """

    def initialize_episode(self, physics: ball_in_cup.Physics) -> None:
        may_start_outside = self.random.uniform() < _START_OUTSIDE_PROB
        while True:
            physics.named.data.qpos["ball_x"] = self.random.uniform(-0.2, 0.2)
            physics.named.data.qpos["ball_z"] = self.random.uniform(0.2, 0.5)
            physics.after_reset()
            if physics.data.ncon == 0 and (may_start_outside or physics.in_target()):
                break
        base.Task.initialize_episode(self, physics)

    def get_reward(self, physics: ball_in_cup.Physics) -> float:
        far = rewards.tolerance(
            np.linalg.norm(physics.ball_to_target()),
            bounds=(_FAR, np.inf),
            margin=_FAR / 2,
            value_at_margin=0.5,
            sigmoid="linear",
        )
        fast = rewards.tolerance(
            np.linalg.norm(physics.named.data.qvel[["ball_x", "ball_z"]]),
            bounds=(_FAST, np.inf),
            margin=_FAST / 2,
            value_at_margin=0.5,
            sigmoid="linear",
        )
        return (1 - physics.in_target()) * (far + 2 * fast) / 3


def _spin(random: Random) -> control.Environment:
    """The stock ball-in-cup model and timing with the spin task."""
    physics = ball_in_cup.Physics.from_xml_string(*ball_in_cup.get_model_and_assets())
    return control.Environment(
        physics,
        Spin(random=random),
        time_limit=ball_in_cup._DEFAULT_TIME_LIMIT,
        control_timestep=ball_in_cup._CONTROL_TIMESTEP,
    )


TASKS: dict[str, TaskFactory] = {"cup-spin": _spin}
