"""Scoring agents with parallel dm_control rollouts on Ray.

- `rollout`: the lockstep runner (pure Python): several environments, one batched policy call
  per step, optional trajectories for data generation.
- `pool`: `RolloutActor` (Ray actor around the runner) and `EvalPool` (spreads jobs, survives
  physics errors and dead actors).
- `score`: `evaluate()` and `normalized_score`; `config`: `EvalConfig` (an evaluation's
  settings) and `PeriodicEvalConfig` (a training run's periodic evaluation, which makes one).
- `report`: eval.json / eval.csv and the summary table; `video`: mp4 episodes.
- `commands`: the `eval` verb.

Names are exported lazily, so `tdmpc-ray --help` does not import Ray or dm_control. The package
itself is callable as `evaluate(...)`, so `from tdmpc_ray import evaluate` (the public API named
in DESIGN.md) works whichever of the package and the function Python resolves first.
"""

from __future__ import annotations

import importlib
import sys
import types

_EXPORTS = {
    "EpisodeResult": "rollout",
    "EpisodeSpec": "rollout",
    "EvalConfig": "config",
    "EvalPool": "pool",
    "PeriodicEvalConfig": "config",
    "RolloutActor": "pool",
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


class _CallablePackage(types.ModuleType):
    """This package, callable as its own `evaluate` function."""

    def __call__(self, *args: object, **kwargs: object) -> dict:
        return __getattr__("evaluate")(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
