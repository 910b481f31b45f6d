"""MT30/MT80 task sets and their DMControl environments.

Only the dm_control-free task-set data is exported here, so the model can import it cheaply.
Environments: `from tdmpc_ray.tasks.dmcontrol import make_env, DMControlEnv` (imports
dm_control); the custom MT30 tasks live in `tdmpc_ray.tasks.custom`.
"""

from tdmpc_ray.tasks.task_sets import MT30, MT80, TaskSet, get_task_set, parse_tasks, task_dims

__all__ = ["MT30", "MT80", "TaskSet", "get_task_set", "parse_tasks", "task_dims"]
