"""Settings of an evaluation run (`EvalConfig`) and of a training run's periodic evaluation
(`PeriodicEvalConfig`, which makes one per evaluation); light to import (no Ray), so the CLI can
read their defaults."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from tdmpc_ray.config import build_config
from tdmpc_ray.planning import PlannerConfig


@dataclass(frozen=True)
class EvalConfig:
    """How `evaluate` acts and spreads work; the defaults are TD-MPC2's evaluation script's."""

    planner: PlannerConfig = PlannerConfig()
    eval_mode: bool = False
    """TD-MPC2's evaluate.py (and so the paper's scores) acts with eval_mode False: the planner's
    chosen action plus its std as noise. Training-time evaluation uses True."""
    seed: int = 0
    """Run seed every env and planner seed derives from."""
    envs_per_actor: int | None = None
    """Episodes stepped together by one actor as one job (one batched plan per step); they
    fix the planner's noise. None: 2 for MPPI on CPU (the planner's CPU block, so batching more
    gains nothing and small jobs keep every actor busy), 10 on GPU or for the policy prior
    (a batch is one pass there)."""
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0
    """GPU share of each actor (e.g. 1/8: eight actors on one GPU); 0 plans on the CPU."""
    max_steps: int | None = None
    """Cut episodes after this many agent steps; for tests and benchmarks (scores then are not
    comparable with full 500-step episodes)."""
    max_retries: int = 3
    """Reruns allowed per episode (physics errors) and per job (dead actors)."""
    video_dir: str | None = None
    """Write `<task>.mp4` of each task's first episode here (needs the `video` extra)."""

    def job_size(self) -> int:
        """`envs_per_actor`, or its default for this device and policy when unset."""
        if self.envs_per_actor is not None:
            return self.envs_per_actor
        return 2 if self.planner.mpc and not self.gpus_per_actor else 10

    def check(self) -> None:
        """Fail with one line on settings that cannot run, the planner's among them."""
        self.planner.check()
        for name in ("envs_per_actor", "max_steps"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        if self.cpus_per_actor <= 0:
            raise ValueError(f"cpus_per_actor must be positive, got {self.cpus_per_actor}")
        if self.gpus_per_actor < 0:
            raise ValueError(f"gpus_per_actor must be non-negative, got {self.gpus_per_actor}")
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be non-negative, got {self.max_retries}")


def passed_as(name: str, default: Any) -> Any:
    """A `PeriodicEvalConfig` field (default `default`) handed to the evaluation as `EvalConfig`
    field `name`, so that a training run's setting of an `EvalConfig` field is one declaration."""
    return field(default=default, metadata={"eval_config": name})


@dataclass(frozen=True)
class PeriodicEvalConfig:
    """The periodic evaluation of a training run, `TrainConfig`'s `evaluation` section: how often,
    on which tasks, with how many actors, and how they act. Its fields are its `key=value` keys
    (`eval_freq=5000`); those declared with `passed_as` reach `EvalConfig` as they are."""

    eval_freq: int = 0
    """Evaluate every this many steps with rollout actors, asynchronously (0 = off)."""
    eval_tasks: str = "mt30"
    """Tasks of the periodic evaluation: `mt30`, or comma-separated task names."""
    eval_episodes: int = 1
    """Episodes per task of each periodic evaluation."""
    eval_actors: int = 1
    """Rollout actors of each periodic evaluation."""
    eval_mpc: bool = True
    """Evaluate with MPPI planning; false acts with the policy prior (much faster)."""
    eval_planner: tuple[str, ...] = ()
    """MPPI settings of the evaluation as `key=value` pairs over TD-MPC2's defaults, e.g.
    `eval_planner=iterations=2,num_samples=128,compile=true` (cheaper planning on CPUs)."""
    eval_mode: bool = passed_as("eval_mode", True)
    """Act with the planned (or prior's) action as is, as TD-MPC2 evaluates during training;
    false adds the planner's std as noise, as its evaluate.py (and the paper's scores) do."""
    eval_cpus: float = passed_as("cpus_per_actor", 1.0)
    """CPUs per evaluation rollout actor."""
    eval_max_steps: int | None = passed_as("max_steps", None)
    """Cut evaluation episodes short (tests); scores are then not comparable to 500 steps."""

    def due(self, step: int, steps: int) -> bool:
        """Whether the checkpoint of `step` (of a run of `steps`) is evaluated: every
        `eval_freq` steps and at the last."""
        return self.eval_freq > 0 and (step % self.eval_freq == 0 or step == steps)

    def planner(self) -> PlannerConfig:
        """The planner of the evaluation: `eval_mpc` and the `eval_planner` pairs."""
        if any(pair.partition("=")[0].strip() == "mpc" for pair in self.eval_planner):
            raise ValueError("eval_planner: set the policy prior with eval_mpc, not mpc=")
        try:
            overrides = build_config(PlannerConfig, None, list(self.eval_planner))
        except ValueError as err:
            raise ValueError(f"eval_planner: {err}") from None
        return dataclasses.replace(overrides, mpc=self.eval_mpc)

    def eval_config(self, seed: int) -> EvalConfig:
        """The `EvalConfig` of each evaluation of a run seeded `seed`."""
        passed = {
            f.metadata["eval_config"]: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if "eval_config" in f.metadata
        }
        return EvalConfig(planner=self.planner(), seed=seed, **passed)

    def check(self) -> None:
        """Fail with one line on settings that cannot evaluate."""
        if self.eval_freq < 0:
            raise ValueError(f"eval_freq must be non-negative, got {self.eval_freq}")
        if self.eval_cpus <= 0:
            raise ValueError(f"eval_cpus must be positive, got {self.eval_cpus}")
        self.planner()
