"""Driver side of training: check the run, hold the shared teacher, fit a TorchTrainer whose
controller evaluates checkpoints as they come (`train.evaluation`), and leave the final student
beside the run's record."""

from __future__ import annotations

import contextlib
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import ray
import ray.data
import torch
from ray.experimental import tqdm_ray
from ray.train import (
    CheckpointConfig,
    DataConfig,
    FailureConfig,
    LoggingConfig,
    RunConfig,
    ScalingConfig,
    UserCallback,
)
from ray.train.torch import TorchConfig, TorchTrainer

from tdmpc_ray.atomic import write_json
from tdmpc_ray.config import config_dict
from tdmpc_ray.data.dataset_info import DatasetInfo, dataset_info
from tdmpc_ray.data.episode_store import EpisodeStore
from tdmpc_ray.data.layout import terms_labelled_in
from tdmpc_ray.model.checkpoint import load_world_model
from tdmpc_ray.provenance import provenance
from tdmpc_ray.resources import asks_teacher, capacity, check_training
from tdmpc_ray.shared_paths import check_shared_paths
from tdmpc_ray.train.config import TrainConfig
from tdmpc_ray.train.evaluation import PeriodicEvaluation, read_evaluation
from tdmpc_ray.train.loop import STUDENT_FILE, train_loop_per_worker
from tdmpc_ray.train.teacher import TeacherPool


def cached_terms(cfg: TrainConfig, info: DatasetInfo) -> tuple[str, ...]:
    """The recipe's teacher terms the data holds labels for, from this run's teacher."""
    if not cfg.distilling or info.meta.teacher_checkpoint != cfg.teacher_sha256:
        return ()
    labelled = set.intersection(*(set(terms_labelled_in(p.schema.names)) for p in info.parts))
    return tuple(t for t in cfg.losses().teacher_terms() if t in labelled)


class DataProbe:
    """The teacher and a seeded sample of the run's data, offered to distillation terms that fit
    their bridge before training (`losses.TeacherProbe`)."""

    def __init__(self, cfg: TrainConfig, info: DatasetInfo, teacher: TeacherPool):
        self.cfg, self.info, self.teacher = cfg, info, teacher
        self.student_latent_dim = cfg.model().latent_dim

    def latent_dim(self) -> int:
        """The teacher's latent size, as its first replica reports it."""
        return self.teacher.info()[0]["latent_dim"]

    def sample(self, rows: int, term: str) -> torch.Tensor:
        """The teacher's `term` on the first step of `rows` windows sampled from the data
        (seeded: one sample per run)."""
        store = EpisodeStore.load(
            [p.path for p in self.info.parts],
            max_resident_episodes=min(self.info.episodes, 512),
            seed=self.cfg.seed,
        )
        batch = store.sample(rows, 1, torch.Generator().manual_seed(self.cfg.seed))
        store.close()
        outputs = self.teacher.outputs(batch.obs[0], batch.action[0], batch.task, (term,))
        return ray.get(outputs)[term]


def checked_config(cfg: TrainConfig) -> TrainConfig:
    """`cfg` checked (one line on values that cannot train) and resolved (a published teacher
    name fetched, paths made absolute, the teacher hashed): once per run, before
    `training_run`. A sweep's trials start here: its driver has loaded their teachers."""
    cfg.check()
    return cfg.resolved()


def check_config_and_teacher(cfg: TrainConfig) -> TrainConfig:
    """`checked_config(cfg)`, with its teacher checkpoint loaded once to prove it is a world
    model of the run's task set: bad input fails here with one line, before Ray starts or a run
    folder exists."""
    cfg = checked_config(cfg)
    if cfg.teacher is not None:
        load_world_model(cfg.teacher, cfg.task_set)
    return cfg


def _read_parts(batch: pa.Table) -> Iterator[pa.Table]:
    """Episodes of the part files named in `batch`, one row group at a time."""
    for path in batch["path"].to_pylist():
        part = pq.ParquetFile(path)
        for group in range(part.num_row_groups):
            yield part.read_row_group(group)


def episode_dataset(info: DatasetInfo, read_cpus: float) -> ray.data.Dataset:
    """The data set's episodes as a Ray Dataset whose only tasks are reads of `read_cpus` CPUs,
    one part file each, without progress bars.

    Not `ray.data.read_parquet`: in Ray 2.60 it starts a file-listing task (the `ListFiles`
    operator) that always asks for a whole CPU, which never runs beside Train workers holding
    all but a fraction of the CPUs; the part files are known from their footers anyway."""
    paths = [{"path": str(p.path)} for p in info.parts]
    dataset = ray.data.from_items(paths, override_num_blocks=len(paths)).map_batches(
        _read_parts, batch_size=1, batch_format="pyarrow", num_cpus=read_cpus
    )
    dataset.context.enable_progress_bars = False
    return dataset


def torch_config(cfg: TrainConfig) -> TorchConfig:
    """Ray Train's process group for `cfg`: gloo when GPU workers take a fraction of a GPU each
    (Ray packs them onto one, and NCCL refuses two ranks on one GPU: "Duplicate GPU detected";
    gloo reduces through the host, cheap for a student's gradients), else Ray's default (NCCL
    on GPUs, gloo on CPUs)."""
    shared = cfg.use_gpu and cfg.num_workers > 1 and cfg.gpus_per_worker < 1
    return TorchConfig(backend="gloo" if shared else None)


def _worker_loop(config: dict) -> None:
    """`train_loop_per_worker` with INFO logs of the worker process off: Ray Train logs every
    report there ("Reporting training result N: TrainingReport(...)") under a logger its
    `LoggingConfig` does not reach, and forwards each line to the driver's console."""
    logging.getLogger().setLevel(logging.WARNING)
    train_loop_per_worker(config)


@contextlib.contextmanager
def training_run(
    cfg: TrainConfig, callbacks: list | None = None, evaluation: PeriodicEvaluation | None = None
) -> Iterator[tuple[TorchTrainer, dict]]:
    """A TorchTrainer for `cfg` (from `checked_config`) and the run record (config,
    data facts, provenance), with the teacher service the run asks held for the block.

    Its controller evaluates checkpoints through `evaluation` (default: a plain
    `PeriodicEvaluation`; a sweep trial's also reports to Tune) besides `callbacks`."""
    info = dataset_info(cfg.data)
    if info.meta.task_set != cfg.task_set:
        raise ValueError(
            f"{cfg.data}: episodes are for task set {info.meta.task_set}, not {cfg.task_set}"
        )
    if cfg.teacher is not None and not Path(cfg.teacher).is_file():
        raise FileNotFoundError(f"{cfg.teacher}: no such teacher checkpoint")
    cached = cached_terms(cfg, info)
    cfg.check_labels(cached)
    if not ray.is_initialized():
        ray.init(logging_level=logging.WARNING)
    check_shared_paths({"data": cfg.data, "teacher": cfg.teacher}, {"out": cfg.out})
    cfg = check_training(cfg, capacity(), cached)
    teacher = cfg.teacher_spec() if asks_teacher(cfg, cached) else None
    with teacher.serve() if teacher else contextlib.nullcontext() as pool:
        inputs = cfg.losses().bridge_inputs(DataProbe(cfg, info, pool)) if pool else {}
        storage = cfg.out if "://" in cfg.out else str(Path(cfg.out).resolve())
        trainer = TorchTrainer(
            _worker_loop,
            torch_config=torch_config(cfg),
            train_loop_config={
                "train": cfg,
                "cached_terms": cached,
                "teacher": teacher,
                "bridge_inputs": inputs,
            },
            scaling_config=ScalingConfig(
                num_workers=(cfg.min_workers, cfg.num_workers)
                if cfg.min_workers
                else cfg.num_workers,
                use_gpu=cfg.use_gpu,
                resources_per_worker={"CPU": cfg.cpus_per_worker}
                | ({"GPU": cfg.gpus_per_worker} if cfg.use_gpu else {}),
            ),
            run_config=RunConfig(
                name=cfg.run_name(),
                storage_path=storage,
                failure_config=FailureConfig(max_failures=cfg.max_failures),
                checkpoint_config=CheckpointConfig(num_to_keep=3),
                callbacks=[evaluation or PeriodicEvaluation(cfg), *(callbacks or [])],
                # Ray Train's INFO lines (worker group start, each checkpoint) are not progress.
                logging_config=LoggingConfig(log_level="WARNING"),
            ),
            datasets={"train": episode_dataset(info, cfg.read_cpus)},
            # Ray Train's default ingest options warn (a deprecated argument) on every run.
            dataset_config=DataConfig(execution_options=ray.data.ExecutionOptions()),
        )
        record = {
            "config": config_dict(cfg),
            "data": {
                "episodes": info.episodes,
                "task_set": info.meta.task_set,
                "teacher_labels": info.meta.teacher_checkpoint,
            },
            "teacher_source": {
                t: "labels" if t in cached else "actor" for t in cfg.losses().teacher_terms()
            },
            **provenance(),
        }
        yield trainer, record


class StepProgress(UserCallback):
    """A progress bar of training steps on the driver's console (it runs in the Train
    controller, so it draws with Ray's `tqdm_ray`)."""

    def __init__(self, steps: int, desc: str):
        self.steps, self.desc = steps, desc
        self.bar, self.done = None, 0

    def after_report(self, run_context, metrics, checkpoint) -> None:
        if self.bar is None:
            self.bar = tqdm_ray.tqdm(total=self.steps, desc=self.desc, unit="step")
        step = int(metrics[0].get("step", self.done))
        self.bar.update(step - self.done)
        self.done = step
        if step >= self.steps:
            self.bar.close()


def train(cfg: TrainConfig, progress: bool = True) -> dict:
    """Train to completion (resuming after failures) and return a summary with output paths."""
    cfg = check_config_and_teacher(cfg)
    callbacks = [StepProgress(cfg.steps, cfg.run_name())] if progress else None
    run_dir = Path(cfg.out) / cfg.run_name() if "://" not in cfg.out else None
    with training_run(cfg, callbacks) as (trainer, record):
        if run_dir is not None:
            write_json(run_dir / "run.json", record)
        result = trainer.fit()
    evaluations = {
        c.path: read_evaluation(cfg.evals_dir(), int(m["step"])) for c, m in result.best_checkpoints
    }
    latest = evaluations.get(result.checkpoint.path) if result.checkpoint else None
    metrics = {**(result.metrics or {}), **(latest or {})}
    summary = {
        "run": cfg.run_name(),
        "metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float))},
        "checkpoint": result.checkpoint.path if result.checkpoint else None,
    }
    if result.checkpoint is not None and run_dir is not None:
        with result.checkpoint.as_directory() as directory:
            shutil.copy2(Path(directory) / STUDENT_FILE, run_dir / STUDENT_FILE)
        summary["student"] = str(run_dir / STUDENT_FILE)
    if result.best_checkpoints:
        scored = [
            (e["normalized_score"], path)
            for path, e in evaluations.items()
            if e is not None and "normalized_score" in e
        ]
        summary["scores"] = sorted(scored, key=lambda pair: pair[1])
    if run_dir is not None:
        write_json(run_dir / "summary.json", summary)
    return summary
