"""Settings of an evaluation run; light to import (no Ray), so the CLI can read its defaults."""

from __future__ import annotations

from dataclasses import dataclass

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
