"""The one config of a training run: every field a `key=value` override or a YAML key."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from tdmpc_ray.evaluate.config import PeriodicEvalConfig
from tdmpc_ray.evaluate.report import EVALS_DIR
from tdmpc_ray.model.checkpoint import checkpoint_hash
from tdmpc_ray.model.config import ModelConfig, model_config
from tdmpc_ray.model.published import published, resolve_checkpoint
from tdmpc_ray.model.world_model import WorldModel
from tdmpc_ray.train.losses import LossConfig
from tdmpc_ray.train.update import OptimConfig

if TYPE_CHECKING:
    from tdmpc_ray.train.teacher import TeacherSpec


@dataclass(frozen=True)
class TrainConfig:
    """Distillation (or from-scratch) training of a TD-MPC2 student on offline episodes."""

    data: str = ""
    """Folder of Parquet episodes (`tdmpc-ray data convert|generate`)."""
    teacher: str | None = None
    """Teacher checkpoint: a path or a published name (`mt30-1M-fp16`, ...: `tdmpc-ray download`);
    unset trains from scratch (the paper's baseline)."""
    teacher_gpus: float | None = None
    """GPUs for the shared teacher actor; None: one when the cluster has a GPU at start (set 1
    on an autoscaling cluster whose GPU workers start from zero); a fraction shares a GPU."""
    teacher_replicas: int = 1
    """Teacher actors answering every worker's and trial's queries, each query going to one."""
    teacher_sha256: str | None = None
    """sha256 of the teacher checkpoint: computed once by the driver (`resolved`) and handed to
    workers, actors and the check of cached labels, which never re-read the file."""
    task_set: str = "mt30"
    """Task set of the data and the student: `mt30`, `mt80`, or one task's name (single-task)."""
    model_size: int = 1
    """Student size preset (M parameters): 1, 5, 19, 48 or 317."""
    enc_dim: int | None = None
    """Encoder width, overriding the preset's (None keeps it)."""
    mlp_dim: int | None = None
    """Width of the dynamics, reward, policy and Q MLPs, overriding the preset's (None keeps it)."""
    latent_dim: int | None = None
    """Latent state size, overriding the preset's (None keeps it)."""
    num_q: int | None = None
    """Q-functions in the ensemble, overriding the preset's (None keeps it)."""
    steps: int = 200_000
    """Gradient updates (the paper: 200K for its tables, 1M for its best student)."""
    batch_size: int = 256
    """Global batch: split evenly over `num_workers`."""
    horizon: int = 3
    """Steps of each training window the world model is unrolled over (TD-MPC2: 3)."""
    loss: LossConfig = LossConfig(d_coef=0.45)
    """Loss and distillation coefficients, set by their own keys (`d_coef=0.4`, `rho=0.5`, ...);
    the reward term's d_coef defaults to the paper's published students' 0.45, and every
    distillation coefficient counts as 0 without a teacher."""
    optim: OptimConfig = OptimConfig()
    """Optimiser, compilation and precision of the update, set by their own keys (`lr=1e-3`,
    `compile=true`, `precision=bf16`, ...)."""
    num_workers: int = 1
    """Ray Train workers (data-parallel; gradients averaged)."""
    min_workers: int | None = None
    """Go on with as few as this many workers when a node is lost and no replacement comes,
    instead of waiting for `num_workers` (Ray Train's elastic scaling; the global batch stays
    `batch_size`); None: always `num_workers`."""
    use_gpu: bool = False
    """Give each Train worker a GPU (or `gpus_per_worker` of one)."""
    gpus_per_worker: float = 1.0
    """GPUs per Train worker with `use_gpu`; a fraction lets the teacher actor share a GPU."""
    cpus_per_worker: float | None = None
    """CPUs per Train worker; None: 1, or the share that fits beside the run's reads and
    evaluation actors on a smaller cluster (`tdmpc_ray.resources`)."""
    read_cpus: float = 0.25
    """CPUs per Ray Data read task (small, so reads fit beside workers on a busy node)."""
    max_resident_episodes: int | None = None
    """Keep at most this many episodes in memory per worker, rotating through the data."""
    evaluation: PeriodicEvalConfig = PeriodicEvalConfig()
    """The periodic evaluation, set by its own keys (`eval_freq=5000`, `eval_episodes=10`,
    `eval_planner=iterations=2`, ...)."""
    checkpoint_every: int = 10_000
    """Save a checkpoint every this many steps (and at the last)."""
    log_every: int = 100
    """Report training metrics every this many steps."""
    max_failures: int = 3
    """Worker/node failures survived by resuming from the last checkpoint."""
    seed: int = 1
    """Run seed: model init, sampling and evaluation seeds derive from it."""
    out: str = "runs"
    """Storage path (local folder, NFS or object-store URI) for checkpoints and results."""
    name: str | None = None
    """Run name (default: derived from the recipe and seed)."""
    wandb: bool = False
    """Log to Weights & Biases from rank 0 (offline unless WANDB_API_KEY is set)."""

    @property
    def distilling(self) -> bool:
        """Whether any distillation term is on (a teacher and a positive coefficient)."""
        return self.teacher is not None and bool(self.losses().teacher_terms())

    def losses(self) -> LossConfig:
        """The loss coefficients in effect: every distillation term off without a teacher."""
        return self.loss if self.teacher is not None else self.loss.without_distillation()

    def check_labels(self, cached: tuple[str, ...]) -> None:
        """Fail with one line when the recipe distils a teacher output that only labels hold
        (the planner's) and the data has none from this teacher (`cached`: the terms it has)."""
        for term in self.losses().terms():
            if term.labels_only and term.teacher not in cached:
                raise ValueError(
                    f"{self.data}: {term.coef} needs {term.column} labels by this teacher "
                    f"(tdmpc-ray data label --mpc --teacher {self.teacher})"
                )

    def model(self) -> ModelConfig:
        """The student's architecture: the size preset with any custom dims."""
        dims = {k: getattr(self, k) for k in ("enc_dim", "mlp_dim", "latent_dim", "num_q")}
        return model_config(self.model_size, self.task_set, **{k: v for k, v in dims.items() if v})

    def recipe(self) -> str:
        """Short name of the distillation recipe: `scratch`, or the terms as each names itself
        (`DistillTerm.recipe_part`: the reward term is `d<coef>`, as the paper names its
        students)."""
        if not self.distilling:
            return "scratch"
        losses = self.losses()
        return "distill-" + "-".join(term.recipe_part(losses) for term in losses.terms())

    def evals_dir(self) -> str:
        """Where the run's periodic evaluations are kept: `<out>/<run name>/evals/`."""
        return f"{absolute(self.out).rstrip('/')}/{self.run_name()}/{EVALS_DIR}"

    def run_name(self) -> str:
        recipe = self.recipe()
        size = f"{self.model_size}M"
        if any((self.enc_dim, self.mlp_dim, self.latent_dim, self.num_q)):
            size = f"{parameter_count(self.model()) / 1e6:.2f}M"
        return self.name or f"{self.task_set}-{size}-{recipe}-b{self.batch_size}-s{self.seed}"

    def resolved(self) -> TrainConfig:
        """A copy with a published teacher name replaced by its local copy (downloaded on first
        use), local `data` and `teacher` paths made absolute, so Ray workers, actors and Tune
        trials (which run in other directories) find them, and the teacher's sha256 (computed
        here, once, when not handed down)."""
        teacher = absolute(str(resolve_checkpoint(self.teacher)) if self.teacher else None)
        digest = self.teacher_sha256
        if teacher is not None and digest is None and Path(teacher).is_file():
            digest = checkpoint_hash(teacher)
        return dataclasses.replace(
            self, data=absolute(self.data), teacher=teacher, teacher_sha256=digest
        )

    def teacher_spec(self) -> TeacherSpec | None:
        """The teacher service this run asks (None without a teacher): built from the resolved
        config, once per run, and handed to whoever needs the teacher. (`train.teacher` is
        imported here: it brings Ray, which reading a config does not need.)"""
        from tdmpc_ray.train.teacher import TeacherSpec

        if self.teacher is None:
            return None
        return TeacherSpec(
            self.teacher,
            self.teacher_sha256,
            self.task_set,
            self.teacher_gpus,
            self.teacher_replicas,
            self.optim.precision,
        )

    def check(self) -> None:
        """Fail with one line on values that cannot train."""
        if not self.data:
            raise ValueError("data=<folder of Parquet episodes> is required")
        if self.min_workers is not None and not 1 <= self.min_workers <= self.num_workers:
            raise ValueError(
                f"min_workers must be between 1 and num_workers {self.num_workers}, "
                f"got {self.min_workers}"
            )
        for workers in range(self.min_workers or self.num_workers, self.num_workers + 1):
            if self.batch_size % workers:
                raise ValueError(
                    f"batch_size {self.batch_size} is not divisible by {workers} workers "
                    f"(num_workers {self.num_workers}, min_workers {self.min_workers})"
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
        if self.read_cpus < 0:
            raise ValueError(f"read_cpus must be non-negative, got {self.read_cpus}")
        if self.cpus_per_worker is not None and self.cpus_per_worker <= 0:
            raise ValueError(f"cpus_per_worker must be positive, got {self.cpus_per_worker}")
        if self.gpus_per_worker <= 0:
            raise ValueError(f"gpus_per_worker must be positive, got {self.gpus_per_worker}")
        if self.teacher_replicas < 1:
            raise ValueError(f"teacher_replicas must be at least 1, got {self.teacher_replicas}")
        self.loss.check()
        self.optim.check()
        self.evaluation.check()


def parameter_count(cfg: ModelConfig) -> int:
    """Parameters of a world model with `cfg` (counted without allocating them)."""
    with torch.device("meta"):
        return WorldModel(cfg).total_params


def absolute(path: str | None) -> str | None:
    """`path` made absolute unless it is empty, None, a URI (`scheme://...`) or the name of a
    published checkpoint with no such file here (it resolves when a run starts)."""
    if not path or "://" in path or (published(path) and not Path(path).exists()):
        return path
    return str(Path(path).resolve())
