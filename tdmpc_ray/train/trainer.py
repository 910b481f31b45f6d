"""Driver side of training: validate the run, start the shared teacher, fit a TorchTrainer, and
leave the final student beside the run's record."""

from __future__ import annotations

import logging
import shutil
from dataclasses import asdict
from pathlib import Path

import ray
import ray.data
from ray.train import (
    CheckpointConfig,
    FailureConfig,
    RunConfig,
    ScalingConfig,
    ValidationConfig,
    ValidationTaskConfig,
)
from ray.train.torch import TorchTrainer

from tdmpc_ray.atomic import write_json
from tdmpc_ray.data.dataset_info import dataset_info
from tdmpc_ray.model.checkpoint import checkpoint_hash
from tdmpc_ray.provenance import provenance
from tdmpc_ray.train.config import TrainConfig
from tdmpc_ray.train.loop import STUDENT_FILE, train_loop_per_worker, validate_checkpoint
from tdmpc_ray.train.teacher import get_teacher


def _uses_labels(cfg: TrainConfig, labelled_by: str | None) -> bool:
    """Whether the data's cached teacher_reward column comes from this run's teacher."""
    return (
        cfg.distilling and labelled_by is not None and labelled_by == checkpoint_hash(cfg.teacher)
    )


def build_trainer(
    cfg: TrainConfig, callbacks: list | None = None
) -> tuple[TorchTrainer, dict, object]:
    """A TorchTrainer for `cfg`, the run record (config, data facts, provenance) and the teacher
    actor's handle (None without one): keep it while training, the actor lives while it does.

    Eval-step checkpoints go to Ray Train's asynchronous validation, unless `callbacks` are given
    (a sweep's trial evaluates through its Tune callback instead)."""
    cfg.check()
    cfg = cfg.resolved()
    info = dataset_info(cfg.data)
    if info.meta.task_set != cfg.task_set:
        raise ValueError(
            f"{cfg.data}: episodes are for task set {info.meta.task_set}, not {cfg.task_set}"
        )
    if cfg.teacher is not None and not Path(cfg.teacher).is_file():
        raise FileNotFoundError(f"{cfg.teacher}: no such teacher checkpoint")
    use_labels = _uses_labels(cfg, info.meta.teacher_checkpoint)
    if not ray.is_initialized():
        ray.init(logging_level=logging.WARNING)
    teacher = get_teacher(cfg.teacher, cfg.task_set) if cfg.distilling and not use_labels else None
    dataset = ray.data.read_parquet(
        [str(p.path) for p in info.parts], ray_remote_args={"num_cpus": cfg.read_cpus}
    )
    validation = None
    if cfg.eval_freq and callbacks is None:
        validation = ValidationConfig(
            validate_checkpoint, ValidationTaskConfig(fn_kwargs=cfg.eval_kwargs())
        )
    storage = cfg.out if "://" in cfg.out else str(Path(cfg.out).resolve())
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "train": asdict(cfg),
            "use_labels": use_labels,
            "validate": validation is not None,
        },
        scaling_config=ScalingConfig(
            num_workers=cfg.num_workers,
            use_gpu=cfg.use_gpu,
            resources_per_worker={"CPU": cfg.cpus_per_worker},
        ),
        run_config=RunConfig(
            name=cfg.run_name(),
            storage_path=storage,
            failure_config=FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=3),
            callbacks=callbacks,
        ),
        datasets={"train": dataset},
        validation_config=validation,
    )
    record = {
        "config": asdict(cfg),
        "data": {
            "episodes": info.episodes,
            "task_set": info.meta.task_set,
            "teacher_labels": info.meta.teacher_checkpoint,
        },
        "teacher_source": ("labels" if use_labels else "actor") if cfg.distilling else None,
        **provenance(),
    }
    return trainer, record, teacher


def train(cfg: TrainConfig) -> dict:
    """Train to completion (resuming after failures) and return a summary with output paths."""
    trainer, record, _teacher = build_trainer(cfg)
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
