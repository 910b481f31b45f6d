"""Sweep specs: a readable YAML of fixed training settings, searched spaces, and how to search.

```yaml
name: dcoef
description: what the sweep reproduces
base: {data: ..., teacher: ..., steps: 200000}     # TrainConfig fields shared by every trial
space:                                               # searched TrainConfig fields
  d_coef: {grid: [0.0, 0.4]}                         # grid | choice | uniform | loguniform | randint
  lr: {loguniform: [1.0e-4, 1.0e-3]}
recipes:                                             # optional: named bundles of settings,
  scratch: {d_coef: 0.0}                             # gridded like one more space key `recipe`
  reward+latent: {d_coef: 0.45, latent_d_coef: 1.0, latent_bridge: pca}
num_samples: 1                                       # repeats of the grid (random spaces redrawn)
scheduler: {type: asha, grace_period: 2, max_t: 10} # optional, on normalized_score at eval steps
trial_cpus: 0.5                                      # the Tune function's own CPU share
```

Paths the trials read (`data`, `teacher`) given relative in the spec file are relative to the
spec file's folder, so a spec runs the same from any directory; given as `key=value` on the
command line, they are relative to the working directory, like every other command-line path.
Where the sweep writes (`storage_path`) is relative to the working directory.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tdmpc_ray.config import build_config, config_keys, read_yaml_mapping
from tdmpc_ray.model.published import published
from tdmpc_ray.train.config import TrainConfig

PATH_KEYS = ("data", "teacher")
"""Settings holding local paths the trials read, made absolute at load (trials run in their own
directories)."""
SPACE_KINDS = ("grid", "choice", "uniform", "loguniform", "randint")
SPEC_KEYS = (
    "name",
    "description",
    "base",
    "space",
    "recipes",
    "num_samples",
    "scheduler",
    "trial_cpus",
    "storage_path",
    "max_concurrent_trials",
)


@dataclass(frozen=True)
class SweepSpec:
    """A parsed, validated sweep spec."""

    name: str
    """Experiment name: results go to `<storage_path>/<name>` (default: the spec file's stem)."""
    description: str = ""
    """What the sweep reproduces, for people reading the results."""
    base: dict[str, Any] = field(default_factory=dict)
    """Training settings shared by every trial (TrainConfig keys)."""
    space: dict[str, dict[str, list]] = field(default_factory=dict)
    """Searched training settings: `key: {grid|choice|uniform|loguniform|randint: [...]}`."""
    recipes: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Named bundles of settings that change together; each trial runs one (`recipe`)."""
    num_samples: int = 1
    """Repeats of the grid (random spaces are redrawn each time)."""
    scheduler: dict[str, Any] | None = None
    """Optional `{type: asha, ...}` early stopping on `normalized_score` at evaluation steps."""
    trial_cpus: float = 0.5
    """CPUs of each trial's own Tune function (besides its Train workers)."""
    storage_path: str = "sweeps"
    """Local folder or URI (s3://, gs://) under which the experiment is stored."""
    max_concurrent_trials: int | None = None
    """Trials running at once; None: as many as the cluster's CPUs and GPUs fit."""

    def trial_configs(self) -> list[TrainConfig]:
        """One TrainConfig per grid point (random spaces at their lower bound): validates keys
        and types of every field before any trial starts."""
        grids = [{**settings} for settings in self.recipes.values()] or [dict()]
        for key, dist in self.space.items():
            kind, values = next(iter(dist.items()))
            options = values if kind in ("grid", "choice") else values[:1]
            grids = [{**g, key: v} for g in grids for v in options]
        return [build_config(TrainConfig, None, {**self.base, **g}) for g in grids]

    def searched_keys(self) -> list[str]:
        """What tells trials apart: `recipe` (when recipes are given) and the space's keys."""
        return (["recipe"] if self.recipes else []) + sorted(self.space)


def _check_space(path: Path, space: dict) -> None:
    fields = config_keys(TrainConfig)
    for key, dist in space.items():
        if key not in fields:
            raise ValueError(f"{path}: space key {key!r} is not a training setting")
        if not (isinstance(dist, dict) and len(dist) == 1 and next(iter(dist)) in SPACE_KINDS):
            raise ValueError(
                f"{path}: space {key!r} must be one of {{{', '.join(SPACE_KINDS)}: [...]}}"
            )
        kind, values = next(iter(dist.items()))
        if (
            not isinstance(values, list)
            or not values
            or (kind not in ("grid", "choice") and len(values) != 2)
        ):
            raise ValueError(
                f"{path}: space {key!r}: {kind} needs a list ({'2 bounds' if kind not in ('grid', 'choice') else 'values'})"
            )


def _local_path(value: Any, folder: Path) -> Any:
    """A local path setting made absolute against `folder` (unset values, URIs and names of
    published students without a file of that name in `folder` unchanged)."""
    if value is None or str(value).lower() in ("", "none", "null") or "://" in str(value):
        return value
    path = folder / str(value)
    if published(str(value)) is not None and not path.exists():
        return value
    return str(path.resolve())


def _check_recipes(path: Path, recipes: dict, space: dict) -> dict[str, dict]:
    """Recipes as {name: {TrainConfig field: value}} with local paths made absolute against the
    spec's folder."""
    fields = config_keys(TrainConfig)
    if not isinstance(recipes, dict):
        raise ValueError(f"{path}: recipes must map names to settings")
    for name, settings in recipes.items():
        if not isinstance(settings, dict):
            raise ValueError(f"{path}: recipe {name!r} must be a mapping of training settings")
        for key in settings:
            if key not in fields or key in space:
                why = "is also searched in space" if key in space else "is not a training setting"
                raise ValueError(f"{path}: recipe {name!r}: {key!r} {why}")
    return {
        str(name): {
            k: _local_path(v, path.parent) if k in PATH_KEYS else v for k, v in settings.items()
        }
        for name, settings in recipes.items()
    }


def load_spec(path: str | Path, overrides: dict[str, str] | None = None) -> SweepSpec:
    """Read a spec file; `overrides` set spec keys (name, storage_path, num_samples, ...) or, for
    any other key, the trials' base training settings (e.g. data=DIR steps=100). Local paths
    become absolute: the spec's against its folder, the overrides' against the working
    directory."""
    path = Path(path)
    raw = read_yaml_mapping(path, "sweep spec")
    unknown = sorted(set(raw) - set(SPEC_KEYS))
    if unknown:
        raise ValueError(f"{path}: unknown spec key {unknown[0]!r}; known: {', '.join(SPEC_KEYS)}")
    raw.setdefault("name", path.stem)
    raw["base"] = {
        k: _local_path(v, path.parent) if k in PATH_KEYS else v
        for k, v in (raw.get("base") or {}).items()
    }
    space = raw.get("space") or {}
    _check_space(path, space)
    for key in PATH_KEYS:
        if key in space:
            kind, values = next(iter(space[key].items()))
            space[key] = {kind: [_local_path(v, path.parent) for v in values]}
    raw["recipes"] = _check_recipes(path, raw.get("recipes") or {}, space)
    for key, value in (overrides or {}).items():
        if key in SPEC_KEYS and key not in ("base", "space"):
            raw[key] = yaml.safe_load(value) if key != "name" else value
        else:
            raw["base"][key] = _local_path(value, Path.cwd()) if key in PATH_KEYS else value
    spec = SweepSpec(**{**raw, "space": space})
    if spec.scheduler is not None and spec.scheduler.get("type") != "asha":
        raise ValueError(f"{path}: scheduler type must be asha")
    spec.trial_configs()
    return spec


def check_trial_data_and_teachers(spec: SweepSpec) -> None:
    """Fail with one line naming the setting and its path, before any trial starts, unless every
    trial's `data` is a Parquet episode set of its task set and its `teacher` a readable world
    model of that task set."""
    from tdmpc_ray.data.dataset_info import dataset_info
    from tdmpc_ray.model.checkpoint import load_world_model

    seen: set[tuple[str, str, str]] = set()
    for cfg in spec.trial_configs():
        for key in PATH_KEYS:
            value = getattr(cfg, key)
            if value is None or "://" in value or (key, value, cfg.task_set) in seen:
                continue
            seen.add((key, value, cfg.task_set))
            try:
                if key == "data":
                    found = dataset_info(value).meta.task_set
                    if found != cfg.task_set:
                        raise ValueError(f"episodes of task set {found}, not {cfg.task_set}")
                else:
                    load_world_model(value, task_set=cfg.task_set)
            except (FileNotFoundError, ValueError) as err:
                reason = str(err).splitlines()[0].removeprefix(f"{value}: ")
                raise type(err)(f"{key}={value}: {reason}") from None
