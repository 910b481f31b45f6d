"""The one config of a training run: every field a `key=value` override or a YAML key."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from tdmpc_ray.train.losses import LossConfig
from tdmpc_ray.train.update import OptimConfig


@dataclass(frozen=True)
class TrainConfig:
    """Distillation (or from-scratch) training of a TD-MPC2 student on offline episodes."""

    data: str = ""
    """Folder of Parquet episodes (`tdmpc-ray data convert|generate`)."""
    teacher: str | None = None
    """Teacher checkpoint; unset trains from scratch (the paper's baseline)."""
    task_set: str = "mt30"
    model_size: int = 1
    """Student size preset (M parameters): 1, 5, 19, 48 or 317."""
    steps: int = 200_000
    """Gradient updates (the paper: 200K for its tables, 1M for its best student)."""
    batch_size: int = 256
    """Global batch: split evenly over `num_workers`."""
    horizon: int = 3
    d_coef: float = 0.45
    """Reward distillation coefficient (the paper's published students: 0.45); ignored without a
    teacher."""
    distill_all_steps: bool = LossConfig.distill_all_steps
    consistency_coef: float = LossConfig.consistency_coef
    reward_coef: float = LossConfig.reward_coef
    value_coef: float = LossConfig.value_coef
    rho: float = LossConfig.rho
    entropy_coef: float = LossConfig.entropy_coef
    lr: float = OptimConfig.lr
    enc_lr_scale: float = OptimConfig.enc_lr_scale
    grad_clip_norm: float = OptimConfig.grad_clip_norm
    tau: float = OptimConfig.tau
    num_workers: int = 1
    """Ray Train workers (data-parallel; gradients averaged)."""
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    read_cpus: float = 0.25
    """CPUs per Ray Data read task (small, so reads fit beside workers on a busy node)."""
    max_resident_episodes: int | None = None
    """Keep at most this many episodes in memory per worker, rotating through the data."""
    eval_freq: int = 0
    """Evaluate every this many steps with rollout actors, asynchronously (0 = off)."""
    eval_tasks: str = "mt30"
    eval_episodes: int = 1
    eval_actors: int = 1
    eval_mpc: bool = True
    eval_cpus: float = 1.0
    """CPUs per evaluation rollout actor."""
    eval_max_steps: int | None = None
    """Cut evaluation episodes short (tests); scores are then not comparable to 500 steps."""
    checkpoint_every: int = 10_000
    log_every: int = 100
    max_failures: int = 3
    """Worker/node failures survived by resuming from the last checkpoint."""
    seed: int = 1
    out: str = "runs"
    """Storage path (local folder, NFS or object-store URI) for checkpoints and results."""
    name: str | None = None
    """Run name (default: derived from the recipe and seed)."""
    wandb: bool = False
    """Log to Weights & Biases from rank 0 (offline unless WANDB_API_KEY is set)."""

    @property
    def distilling(self) -> bool:
        return self.teacher is not None and self.d_coef > 0

    def losses(self) -> LossConfig:
        return LossConfig(
            consistency_coef=self.consistency_coef, reward_coef=self.reward_coef,
            value_coef=self.value_coef, rho=self.rho, entropy_coef=self.entropy_coef,
            d_coef=self.d_coef if self.distilling else 0.0, distill_all_steps=self.distill_all_steps,
        )  # fmt: skip

    def optim(self) -> OptimConfig:
        return OptimConfig(
            lr=self.lr,
            enc_lr_scale=self.enc_lr_scale,
            grad_clip_norm=self.grad_clip_norm,
            tau=self.tau,
        )

    def eval_kwargs(self) -> dict:
        """Arguments of `validate_checkpoint` for this run's periodic evaluation."""
        return {"tasks": self.eval_tasks, "episodes": self.eval_episodes, "actors": self.eval_actors,
                "mpc": self.eval_mpc, "max_steps": self.eval_max_steps, "seed": self.seed, "cpus": self.eval_cpus}  # fmt: skip

    def run_name(self) -> str:
        recipe = f"distill-d{self.d_coef:g}" if self.distilling else "scratch"
        return (
            self.name
            or f"{self.task_set}-{self.model_size}M-{recipe}-b{self.batch_size}-s{self.seed}"
        )

    def resolved(self) -> TrainConfig:
        """A copy with local `data` and `teacher` paths made absolute, so Ray workers, actors and
        Tune trials (which run in other directories) find them."""
        return dataclasses.replace(self, data=absolute(self.data), teacher=absolute(self.teacher))

    def check(self) -> None:
        """Fail with one line on values that cannot train."""
        if not self.data:
            raise ValueError("data=<folder of Parquet episodes> is required")
        if self.batch_size % self.num_workers:
            raise ValueError(
                f"batch_size {self.batch_size} is not divisible by num_workers {self.num_workers}"
            )
        for name in (
            "steps",
            "batch_size",
            "horizon",
            "num_workers",
            "checkpoint_every",
            "log_every",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.d_coef < 0 or self.eval_freq < 0:
            raise ValueError("d_coef and eval_freq must be non-negative")


def absolute(path: str | None) -> str | None:
    """`path` made absolute unless it is empty, None or a URI (`scheme://...`)."""
    if not path or "://" in path:
        return path
    return str(Path(path).resolve())
