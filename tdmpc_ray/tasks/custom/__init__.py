"""The 11 MT30 tasks TD-MPC2 adds to DMControl, as `control.Environment` factories.

`CUSTOM_TASKS[name](random)` builds one task; dm_control's global `suite` registries are left
untouched. Importing this package imports dm_control.
"""

from tdmpc_ray.tasks.custom import cheetah, cup, hopper, pendulum, reacher, walker
from tdmpc_ray.tasks.custom.common import TaskFactory

CUSTOM_TASKS: dict[str, TaskFactory] = {
    **walker.TASKS,
    **cheetah.TASKS,
    **hopper.TASKS,
    **reacher.TASKS,
    **cup.TASKS,
    **pendulum.TASKS,
}

__all__ = ["CUSTOM_TASKS", "TaskFactory"]
