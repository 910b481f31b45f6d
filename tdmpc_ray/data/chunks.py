"""TD-MPC2's public data set files (`chunk_N.pt`): memory-mapped loading and validation.

A chunk is a TensorDict saved with plain `torch.save`, batch [E, T]: `obs` f32 [E,T,obs_dim],
`action` f32 [E,T,action_dim] and `reward` f32 [E,T] with NaN at step 0, `task` int [E,T].
It is opened with `torch.load(mmap=True, weights_only=True)`, so nothing is read until touched
and no code outside `TENSORDICT_SAFE_GLOBALS` can run while unpickling. tensordict itself is not
needed: the globals a pickled TensorDict names are mapped to `SavedTensorDict`, a plain dict of its
fields (docs/decisions.md, "What the default install holds").
"""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tdmpc_ray.tasks.task_sets import TaskSet


class SavedTensorDict(dict):
    """A pickled TensorDict read without tensordict: its fields (`state["_tensordict"]`) as a
    dict; batch size, device and lock state are dropped."""

    def __setstate__(self, state: object) -> None:
        fields = state.get("_tensordict") if isinstance(state, dict) else None
        if not isinstance(fields, dict):
            raise pickle.UnpicklingError("a TensorDict without its field dict")
        self.update(fields)


def _make_saved(_cls: type, state: object) -> SavedTensorDict:
    """Stands in for tensordict's `_make_td(cls, state)`; builds a `SavedTensorDict` whatever
    class the file names."""
    saved = SavedTensorDict()
    saved.__setstate__(state)
    return saved


# What a pickled TensorDict references beyond torch's own tensor, storage and Size globals, each
# mapped to a stand-in: tensordict >= 0.3 pickles `_make_td(TensorDict, state)`; tensordict <= 0.2
# (current when the public data set was made, late 2023) pickles the class under its old module
# path, created by NEWOBJ and filled by BUILD, with its key dict as
# `tensordict.utils._StringOnlyDict` (a dict).
TENSORDICT_SAFE_GLOBALS: list = [
    (_make_saved, "tensordict._reductions._make_td"),
    (SavedTensorDict, "tensordict._td.TensorDict"),
    (SavedTensorDict, "tensordict.tensordict.TensorDict"),
    (dict, "tensordict.utils._StringOnlyDict"),
]
FIELDS = ("obs", "action", "reward", "task")
_TASK_DTYPES = (torch.int32, torch.int64)


@dataclass(frozen=True)
class ChunkInfo:
    """Shape facts of one chunk file, checked against the task set."""

    path: Path
    episodes: int
    episode_length: int
    num_bytes: int


def _load_problem(err: Exception) -> str:
    """One line saying why `torch.load` refused a file."""
    text = str(err)
    found = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if found:
        return f"holds the global {found.group(1)}, outside the TensorDict allow-list"
    found = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", text)
    lines = [line.strip() for line in text.splitlines() if line.strip()] or [type(err).__name__]
    return f"not a readable torch file ({found.group(1) if found else lines[0]})"


def load_chunk(path: str | os.PathLike) -> Mapping[str, torch.Tensor]:
    """Memory-map a chunk file; raises ValueError naming the file if it cannot be read.

    Returns a `SavedTensorDict`, or tensordict's own TensorDict where tensordict is imported in
    this process (importing it registers its own safe globals under the same names); both map
    field names to tensors."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path}: not a torch zip file (truncated or corrupted)")
    try:
        with torch.serialization.safe_globals(TENSORDICT_SAFE_GLOBALS):
            data = torch.load(path, mmap=True, weights_only=True, map_location="cpu")
    except (pickle.UnpicklingError, RuntimeError, OSError, EOFError) as err:
        raise ValueError(f"{path}: {_load_problem(err)}") from None
    if not callable(getattr(data, "keys", None)):
        raise ValueError(f"{path}: holds a {type(data).__name__}, expected a TensorDict")
    return data


def check_chunk(path: str | os.PathLike, task_set: TaskSet) -> ChunkInfo:
    """Open a chunk and check its fields, dtypes and shapes against `task_set`."""
    data = load_chunk(path)
    missing = [name for name in FIELDS if name not in data.keys()]
    if missing:
        raise ValueError(f"{path}: missing field(s) {', '.join(missing)}")
    nested = [name for name in FIELDS if not isinstance(data[name], torch.Tensor)]
    if nested:
        raise ValueError(f"{path}: field {nested[0]} is not a tensor")
    obs = data["obs"]
    if obs.dim() != 3 or obs.shape[1] < 2:
        raise ValueError(
            f"{path}: obs has shape {list(obs.shape)}, expected [episodes, steps, dim]"
        )
    E, T = obs.shape[:2]
    expected = {
        "obs": (E, T, task_set.obs_dim),
        "action": (E, T, task_set.action_dim),
        "reward": (E, T),
        "task": (E, T),
    }
    for name, shape in expected.items():
        value = data[name]
        if tuple(value.shape) != shape:
            raise ValueError(
                f"{path}: {name} has shape {list(value.shape)}, expected {list(shape)} "
                f"for task set {task_set.name}"
            )
        allowed = _TASK_DTYPES if name == "task" else (torch.float32,)
        if value.dtype not in allowed:
            raise ValueError(f"{path}: {name} has dtype {value.dtype}, expected {allowed[0]}")
    num_bytes = sum(data[name].nbytes for name in FIELDS)
    return ChunkInfo(Path(path), episodes=E, episode_length=T, num_bytes=num_bytes)


def read_episodes(data: Mapping[str, torch.Tensor], start: int, stop: int) -> dict[str, np.ndarray]:
    """Numpy views of episodes [start, stop) of a loaded chunk (no copy from the mapping)."""
    return {name: data[name][start:stop].numpy() for name in FIELDS}


def check_episodes(episodes: Mapping[str, np.ndarray], first: int, num_tasks: int) -> str | None:
    """The first problem in a block of episodes numbered from `first`, as 'episode N: what'
    (None if the block is valid): task ids in range and constant within an episode, finite
    obs, NaN action and reward at step 0 and finite ones after."""
    task, action, reward = episodes["task"], episodes["action"], episodes["reward"]
    step0 = np.arange(task.shape[1]) == 0
    action_bad = ~np.isfinite(action).all(axis=2)
    reward_bad = ~np.isfinite(reward)
    checks = (
        (f"task id {{value}} is outside [0, {num_tasks})", (task < 0) | (task >= num_tasks)),
        ("task id changes within the episode (to {value})", task != task[:, :1]),
        ("NaN or inf in obs", ~np.isfinite(episodes["obs"]).all(axis=2)),
        (
            "action is not NaN (no action leads to the first observation)",
            ~np.isnan(action).all(axis=2) & step0,
        ),
        ("reward is not NaN (no reward leads to the first observation)", ~np.isnan(reward) & step0),
        ("NaN or inf in action", action_bad & ~step0),
        ("NaN or inf in reward", reward_bad & ~step0),
    )
    bad = np.stack([mask.any(axis=1) for _, mask in checks])
    if not bad.any():
        return None
    episode = int(np.flatnonzero(bad.any(axis=0))[0])
    text, mask = checks[int(np.flatnonzero(bad[:, episode])[0])]
    step = int(np.argmax(mask[episode]))
    return f"episode {first + episode}: {text.format(value=task[episode, step])} at step {step}"
