"""MT30/MT80 task sets and their DMControl environments."""

from tdmpc_ray.tasks.task_sets import MT30, MT80, TaskSet, get_task_set, parse_tasks, task_dims

__all__ = ["MT30", "MT80", "TaskSet", "get_task_set", "parse_tasks", "task_dims"]
