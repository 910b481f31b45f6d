"""The lower layers (model, tasks, planning, quantize, deploy) never import Ray or a higher part.

A robot runs the model, the planner and the exported controller without Ray; this pins that
boundary so it stays a property of the code rather than a convention.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

LOWER = [
    "tdmpc_ray.model",
    "tdmpc_ray.tasks",
    "tdmpc_ray.planning",
    "tdmpc_ray.quantize",
    "tdmpc_ray.deploy",
]
HIGHER = [
    "tdmpc_ray.data",
    "tdmpc_ray.train",
    "tdmpc_ray.evaluate",
    "tdmpc_ray.sweep",
    "tdmpc_ray.dashboard",
    "tdmpc_ray.quickstart",
    "tdmpc_ray.resources",
]

PROBE = """
import importlib, json, pkgutil, sys
package = importlib.import_module(sys.argv[1])
for info in pkgutil.walk_packages(getattr(package, "__path__", []), package.__name__ + "."):
    importlib.import_module(info.name)
print(json.dumps(sorted(sys.modules)))
"""


@pytest.mark.parametrize("package", LOWER)
def test_lower_layer_imports_neither_ray_nor_higher_parts(package: str) -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, package], capture_output=True, text=True, check=True
    ).stdout
    loaded = json.loads(out.strip().splitlines()[-1])
    assert not [m for m in loaded if m == "ray" or m.startswith("ray.")], f"{package} imports ray"
    upward = [m for m in loaded if any(m == h or m.startswith(h + ".") for h in HIGHER)]
    assert not upward, f"{package} imports higher parts: {upward}"
