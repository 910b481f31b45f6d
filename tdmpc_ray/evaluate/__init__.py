"""Scoring agents with parallel dm_control rollouts on Ray.

- `rollout`: the lockstep runner (pure Python): several environments, one batched policy call
  per step, optional trajectories for data generation.
- `pool`: `RolloutActor` (Ray actor around the runner) and `EvalPool` (spreads jobs, survives
  physics errors and dead actors).
- `score`: `evaluate()` and `normalized_score`; `config`: `EvalConfig`.
- `report`: eval.json / eval.csv and the summary table; `video`: mp4 episodes.
- `commands`: the `eval` verb.

Names are exported lazily, so `tdmpc-ray --help` does not import Ray or dm_control.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "EpisodeResult": "rollout",
    "EpisodeSpec": "rollout",
    "EvalConfig": "config",
    "EvalPool": "pool",
    "RolloutActor": "pool",
    "RolloutSettings": "pool",
    "Trajectory": "rollout",
    "evaluate": "score",
    "normalized_score": "score",
    "run_lockstep": "rollout",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> object:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
