"""Task sets as plain data: names, observation/action dims and episode lengths.

This module is the single source of the task order (the task-embedding row is the index in the
task set) and imports neither dm_control nor Ray, so the model and checkpoint code can use it.
"""

from __future__ import annotations

from dataclasses import dataclass

MT30: tuple[str, ...] = (
    "walker-stand", "walker-walk", "walker-run", "cheetah-run", "reacher-easy",
    "reacher-hard", "acrobot-swingup", "pendulum-swingup", "cartpole-balance",
    "cartpole-balance-sparse", "cartpole-swingup", "cartpole-swingup-sparse", "cup-catch",
    "finger-spin", "finger-turn-easy", "finger-turn-hard", "fish-swim", "hopper-stand",
    "hopper-hop", "walker-walk-backwards", "walker-run-backwards", "cheetah-run-backwards",
    "cheetah-run-front", "cheetah-run-back", "cheetah-jump", "hopper-hop-backwards",
    "reacher-three-easy", "reacher-three-hard", "cup-spin", "pendulum-spin",
)  # fmt: skip

METAWORLD_MT50: tuple[str, ...] = (
    "mw-assembly", "mw-basketball", "mw-button-press-topdown", "mw-button-press-topdown-wall",
    "mw-button-press", "mw-button-press-wall", "mw-coffee-button", "mw-coffee-pull",
    "mw-coffee-push", "mw-dial-turn", "mw-disassemble", "mw-door-open", "mw-door-close",
    "mw-drawer-close", "mw-drawer-open", "mw-faucet-open", "mw-faucet-close", "mw-hammer",
    "mw-handle-press-side", "mw-handle-press", "mw-handle-pull-side", "mw-handle-pull",
    "mw-lever-pull", "mw-peg-insert-side", "mw-peg-unplug-side", "mw-pick-out-of-hole",
    "mw-pick-place", "mw-pick-place-wall", "mw-plate-slide", "mw-plate-slide-side",
    "mw-plate-slide-back", "mw-plate-slide-back-side", "mw-push-back", "mw-push", "mw-push-wall",
    "mw-reach", "mw-reach-wall", "mw-shelf-place", "mw-soccer", "mw-stick-push", "mw-stick-pull",
    "mw-sweep-into", "mw-sweep", "mw-window-open", "mw-window-close", "mw-bin-picking",
    "mw-box-close", "mw-door-lock", "mw-door-unlock", "mw-hand-insert",
)  # fmt: skip

MT80: tuple[str, ...] = MT30 + METAWORLD_MT50

# (observation dim, action dim) of each DMControl domain family, as TD-MPC2's wrappers see them.
_DMC_DIMS: dict[str, tuple[int, int]] = {
    "walker": (24, 6), "cheetah": (17, 6), "reacher": (6, 2), "reacher-three": (8, 3),
    "acrobot": (6, 1), "pendulum": (3, 1), "cartpole": (5, 1), "cup": (8, 2), "finger-spin": (9, 2),
    "finger-turn": (12, 2), "fish": (24, 5), "hopper": (15, 4),
}  # fmt: skip
_METAWORLD_DIMS = (39, 4)
DMC_EPISODE_LENGTH = 500
METAWORLD_EPISODE_LENGTH = 100


def task_dims(task: str) -> tuple[int, int]:
    """Unpadded (observation dim, action dim) of one task, as TD-MPC2 defines them."""
    if task.startswith("mw-"):
        return _METAWORLD_DIMS
    for prefix in ("reacher-three", "finger-spin", "finger-turn"):
        if task.startswith(prefix):
            return _DMC_DIMS[prefix]
    family = task.split("-", 1)[0]
    if family not in _DMC_DIMS:
        raise ValueError(f"unknown task {task!r}")
    return _DMC_DIMS[family]


def episode_length(task: str) -> int:
    """Agent steps per episode (after action repeat) for one task."""
    return METAWORLD_EPISODE_LENGTH if task.startswith("mw-") else DMC_EPISODE_LENGTH


@dataclass(frozen=True)
class TaskSet:
    """An ordered set of tasks sharing one padded observation and action space."""

    name: str
    tasks: tuple[str, ...]

    @property
    def obs_dims(self) -> tuple[int, ...]:
        return tuple(task_dims(t)[0] for t in self.tasks)

    @property
    def action_dims(self) -> tuple[int, ...]:
        return tuple(task_dims(t)[1] for t in self.tasks)

    @property
    def episode_lengths(self) -> tuple[int, ...]:
        return tuple(episode_length(t) for t in self.tasks)

    @property
    def obs_dim(self) -> int:
        """Padded observation dim: the largest of the set."""
        return max(self.obs_dims)

    @property
    def action_dim(self) -> int:
        """Padded action dim: the largest of the set."""
        return max(self.action_dims)

    @property
    def multitask(self) -> bool:
        return self.name in TASK_SETS

    def index(self, task: str) -> int:
        """Row of `task` in the task embedding."""
        try:
            return self.tasks.index(task)
        except ValueError:
            raise ValueError(f"task {task!r} is not in task set {self.name!r}") from None


TASK_SETS: dict[str, tuple[str, ...]] = {"mt30": MT30, "mt80": MT80}


def get_task_set(name: str) -> TaskSet:
    """The task set `mt30`, `mt80`, or a single task by name."""
    if name in TASK_SETS:
        return TaskSet(name, TASK_SETS[name])
    task_dims(name)
    return TaskSet(name, (name,))


def parse_tasks(spec: str, task_set: TaskSet) -> list[str]:
    """Tasks named by `spec`: a task-set name for all of it, or a comma-separated list."""
    if spec == task_set.name:
        return list(task_set.tasks)
    names = [s.strip() for s in spec.split(",") if s.strip()]
    for name in names:
        task_set.index(name)
    if not names:
        raise ValueError("no tasks given")
    return names
