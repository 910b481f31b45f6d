"""tdmpc_ray: train, distil, evaluate and quantize TD-MPC2 world models on Ray.

The public API is named after TD-MPC2. Names load lazily, so `import tdmpc_ray` (and the CLI's
`--help`) does not import torch, Ray or dm_control until they are used.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "WorldModel": "tdmpc_ray.model",
    "ModelConfig": "tdmpc_ray.model",
    "load_world_model": "tdmpc_ray.model",
    "save_checkpoint": "tdmpc_ray.model",
    "two_hot": "tdmpc_ray.model",
    "two_hot_inv": "tdmpc_ray.model",
    "Planner": "tdmpc_ray.planning",
    "PlannerConfig": "tdmpc_ray.planning",
    "evaluate": "tdmpc_ray.evaluate",
    "normalized_score": "tdmpc_ray.evaluate",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> object:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
