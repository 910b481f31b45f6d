"""Driver side of training: validate the run, start the shared teacher, fit a TorchTrainer, and
leave the final student beside the run's record."""

from __future__ import annotations

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
    ValidationConfig,
    ValidationTaskConfig,
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
from tdmpc_ray.train.distill import fit_pca
from tdmpc_ray.train.loop import STUDENT_FILE, train_loop_per_worker, validate_checkpoint
from tdmpc_ray.train.teacher import TeacherPool, teacher_pool


def cached_terms(cfg: TrainConfig, info: DatasetInfo) -> tuple[str, ...]:
    """The recipe's teacher terms the data holds labels for, from this run's teacher."""
    if not cfg.distilling or info.meta.teacher_checkpoint != cfg.teacher_sha256:
        return ()
    labelled = set.intersection(*(set(terms_labelled_in(p.schema.names)) for p in info.parts))
    return tuple(t for t in cfg.losses().teacher_terms() if t in labelled)


def _latent_bridge_inputs(cfg: TrainConfig, info: DatasetInfo, teacher: TeacherPool) -> dict:
    """The teacher's latent size and, for the `pca` bridge, the projection fitted on teacher
    latents of `pca_samples` windows sampled from the data (seeded: one projection per run)."""
    if not cfg.losses().latent_d_coef:
        return {}
    out = {"teacher_latent_dim": teacher.info()[0]["latent_dim"]}
    if cfg.loss.latent_bridge == "pca":
        store = EpisodeStore.load(
            [p.path for p in info.parts],
            max_resident_episodes=min(info.episodes, 512),
            seed=cfg.seed,
        )
        batch = store.sample(cfg.pca_samples, 1, torch.Generator().manual_seed(cfg.seed))
        store.close()
        latents = ray.get(teacher.outputs(batch.obs[0], batch.action[0], batch.task, ("latent",)))
        student_dim = cfg.model().latent_dim
        out["pca"] = fit_pca(latents["latent"], student_dim)
    return out


def check_inputs(cfg: TrainConfig) -> TrainConfig:
    """`cfg` checked and resolved (a published teacher name fetched, paths made absolute), with
    its teacher checkpoint loaded once to prove it is a world model of the run's task set: bad
    input fails here with one line, before Ray starts or a run folder exists."""
    cfg.check()
    cfg = cfg.resolved()
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


def build_trainer(
    cfg: TrainConfig, callbacks: list | None = None, validate: bool = True
) -> tuple[TorchTrainer, dict, object]:
    """A TorchTrainer for `cfg`, the run record (config, data facts, provenance) and the teacher
    service (None without one): keep it while training, its actors live while it does.

    Eval-step checkpoints go to Ray Train's asynchronous validation when `validate` (a sweep's
    trial evaluates through its Tune callback instead)."""
    cfg.check()
    cfg = cfg.resolved()
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
    teacher = None
    if asks_teacher(cfg, cached):
        teacher = teacher_pool(
            cfg.teacher,
            cfg.teacher_sha256,
            cfg.task_set,
            cfg.teacher_gpus,
            cfg.teacher_replicas,
            cfg.optim.precision,
        )
    validation = None
    if cfg.eval_freq and validate:
        validation = ValidationConfig(
            validate_checkpoint,
            ValidationTaskConfig(fn_kwargs=cfg.eval_kwargs()),
            # It only waits on its rollout actors (counted in the run's resources).
            ray_remote_kwargs={"num_cpus": 0},
        )
    storage = cfg.out if "://" in cfg.out else str(Path(cfg.out).resolve())
    trainer = TorchTrainer(
        _worker_loop,
        torch_config=torch_config(cfg),
        train_loop_config={
            "train": cfg,
            "cached_terms": cached,
            "validate": validation is not None,
            **_latent_bridge_inputs(cfg, info, teacher),
        },
        scaling_config=ScalingConfig(
            num_workers=(cfg.min_workers, cfg.num_workers) if cfg.min_workers else cfg.num_workers,
            use_gpu=cfg.use_gpu,
            resources_per_worker={"CPU": cfg.cpus_per_worker}
            | ({"GPU": cfg.gpus_per_worker} if cfg.use_gpu else {}),
        ),
        run_config=RunConfig(
            name=cfg.run_name(),
            storage_path=storage,
            failure_config=FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=3),
            callbacks=callbacks,
            # Ray Train's INFO lines (worker group start, each checkpoint) are not progress.
            logging_config=LoggingConfig(log_level="WARNING"),
        ),
        datasets={"train": episode_dataset(info, cfg.read_cpus)},
        # Ray Train's default ingest options warn (a deprecated argument) on every run.
        dataset_config=DataConfig(execution_options=ray.data.ExecutionOptions()),
        validation_config=validation,
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
    return trainer, record, teacher


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
    cfg = check_inputs(cfg)
    callbacks = [StepProgress(cfg.steps, cfg.run_name())] if progress else None
    trainer, record, _teacher = build_trainer(cfg, callbacks)
    run_dir = Path(cfg.out) / cfg.run_name() if "://" not in cfg.out else None
    if run_dir is not None:
        write_json(run_dir / "run.json", record)
    result = trainer.fit()
    summary = {
        "run": cfg.run_name(),
        "metrics": {k: v for k, v in (result.metrics or {}).items() if isinstance(v, (int, float))},
        "checkpoint": result.checkpoint.path if result.checkpoint else None,
    }
    if result.checkpoint is not None and run_dir is not None:
        with result.checkpoint.as_directory() as directory:
            shutil.copy2(Path(directory) / STUDENT_FILE, run_dir / STUDENT_FILE)
        summary["student"] = str(run_dir / STUDENT_FILE)
    if result.best_checkpoints:
        scored = [
            (m.get("normalized_score"), c.path)
            for c, m in result.best_checkpoints
            if "normalized_score" in m
        ]
        summary["scores"] = sorted(scored, key=lambda pair: pair[1])
    if run_dir is not None:
        write_json(run_dir / "summary.json", summary)
    return summary
