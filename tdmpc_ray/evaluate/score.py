"""Scoring an agent: `evaluate` runs episodes of each task on an `EvalPool` of rollout actors and
reports per-task returns and TD-MPC2's normalized score.

Seeds: episode e of task T under run seed S has env seed derive_seed("env", S, T, e, attempt),
whatever actor runs it. Episodes are taken episode-major (episode 0 of every task, then episode
1, ...) into jobs of `envs_per_actor` (`EvalConfig.job_size`; `job_groups`), and a job's planner
is seeded from its members, so results are reproducible for a given job size and device kind
whatever the number of actors, their CPU or GPU shares, their scheduling or a rerun after an
actor died. A job's episodes come out the same in any run that has that job, so a run with more
episodes per task repeats the jobs of a shorter one whenever the shorter one's episodes fill
whole jobs (MT30: 30 tasks per episode, in jobs of 2, 5, 10, ...): a recorded run extends
exactly (`record`). The planner draws one random stream per job (not per environment), so
changing the job size changes the planner noise, not the env seeds. Never more actors start
than there are jobs; by default as many as the cluster's CPUs allow, and the progress output
says in one line how many work.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import ray
import torch
from tqdm import tqdm

from tdmpc_ray.atomic import atomic_path
from tdmpc_ray.config import did_you_mean
from tdmpc_ray.evaluate.config import EvalConfig
from tdmpc_ray.evaluate.pool import EvalPool, Retry, model_payload
from tdmpc_ray.evaluate.record import EpisodeRecord
from tdmpc_ray.evaluate.rollout import EpisodeResult, EpisodeSpec, planner_seed
from tdmpc_ray.evaluate.stats import score_summary, task_interval
from tdmpc_ray.evaluate.video import require_writer
from tdmpc_ray.model import ModelConfig, WorldModel, checkpoint_hash, load_world_model
from tdmpc_ray.model.checkpoint import infer_config
from tdmpc_ray.model.published import resolve_checkpoint
from tdmpc_ray.provenance import provenance
from tdmpc_ray.resources import capacity
from tdmpc_ray.tasks.task_sets import TASK_SETS, episode_length, get_task_set

ModelSource = str | os.PathLike | WorldModel | Mapping[str, torch.Tensor]


def normalized_score(mean_returns: Mapping[str, float]) -> float:
    """TD-MPC2's normalized score: mean over tasks of (mean episode return / 10), 0..100 on
    DMControl. Meta-World's (success rate x 100) is not supported yet."""
    if not mean_returns:
        raise ValueError("normalized_score needs at least one task")
    metaworld = [task for task in mean_returns if task.startswith("mw-")]
    if metaworld:
        raise NotImplementedError(f"Meta-World scores are not supported yet: {metaworld[0]}")
    return float(np.mean([ret / 10 for ret in mean_returns.values()]))


def resolve_tasks(spec: str | Sequence[str], cfg: ModelConfig) -> list[str]:
    """Task names from a task-set name, a comma-separated list or a sequence, checked against the
    model's task set (any tasks of it, e.g. the MT30 tasks of an MT80 model)."""
    if isinstance(spec, str):
        names = list(TASK_SETS.get(spec, [s.strip() for s in spec.split(",") if s.strip()]))
    else:
        names = list(spec)
    if not names:
        raise ValueError("no tasks given")
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"task {duplicates[0]!r} is given more than once")
    model_tasks = get_task_set(cfg.task_set).tasks
    for name in names:
        if name not in model_tasks:
            raise ValueError(
                f"the model is for task set {cfg.task_set!r}, which has no task {name!r}"
                f"{did_you_mean(name, model_tasks)}"
            )
        if name.startswith("mw-"):
            raise NotImplementedError(f"Meta-World tasks are not supported yet: {name}")
    return names


def episode_specs(
    tasks: Sequence[str], episodes: int, model_cfg: ModelConfig, cfg: EvalConfig
) -> list[EpisodeSpec]:
    """Every (task, episode) pair in task order; the first episode of each task is filmed when
    videos are asked for."""
    task_set = get_task_set(model_cfg.task_set)
    return [
        EpisodeSpec(
            seed=cfg.seed,
            task=task,
            task_id=task_set.index(task) if model_cfg.multitask else 0,
            episode=episode,
            record_video=cfg.video_dir is not None and episode == 0,
        )
        for task in tasks
        for episode in range(episodes)
    ]


def job_groups(specs: Sequence[EpisodeSpec], size: int) -> list[tuple[EpisodeSpec, ...]]:
    """Lockstep jobs of `size` episodes (the last may be smaller), taken episode-major: the
    first episodes of every task come first, so asking for more episodes per task adds jobs
    after those of a shorter run rather than reshuffling them (whenever the shorter run's
    episodes fill whole jobs), and one task's episodes still share jobs."""
    ordered = sorted(specs, key=lambda spec: spec.episode)
    return [tuple(ordered[i : i + size]) for i in range(0, len(ordered), size)]


def evaluate(
    checkpoint: ModelSource,
    tasks: str | Sequence[str] = "mt30",
    episodes: int = 10,
    num_actors: int | None = None,
    cfg: EvalConfig | None = None,
    *,
    model_config: ModelConfig | None = None,
    pool: EvalPool | None = None,
    progress: bool = False,
    on_result: Callable[[EpisodeResult], None] | None = None,
    record: str | os.PathLike | None = None,
    label: str = "eval",
) -> dict:
    """Run `episodes` episodes of each task and return per-task returns (with env seeds) and
    `normalized_score`, with 95% intervals beside them (`_scores`).

    `checkpoint` is a checkpoint path (any layout `load_world_model` reads), a `WorldModel`, or
    its state dict (config from `model_config` or inferred from shapes); the weights go to the
    object store once. `pool` reuses running actors (then `num_actors` is the pool's), e.g. for
    periodic evaluation during training; otherwise one is started and stopped here, with
    `num_actors` actors (None: as many as the cluster's CPUs allow), never more than jobs.
    `progress` shows a bar of environment steps (moving within seconds, with an ETA) named
    `label`, and one line saying how many actors work. `record`
    (a checkpoint file's evaluation only) keeps every finished episode in that JSON-lines file
    as it arrives and skips the episodes it already holds from an earlier run with the same
    settings (`record.EpisodeRecord`): a stopped run resumes, a finished one extends. Bad
    arguments fail with one line before any actor starts.
    """
    start = time.perf_counter()
    cfg = cfg or EvalConfig()
    if episodes < 1 or (num_actors is not None and num_actors < 1):
        raise ValueError(
            f"episodes and num_actors must be at least 1, got {episodes}, {num_actors}"
        )
    cfg.check()
    model, path = _world_model(checkpoint, model_config)
    names = resolve_tasks(tasks, model.cfg)
    if cfg.video_dir is not None:
        require_writer()
    cfg = dataclasses.replace(cfg, envs_per_actor=cfg.job_size())
    specs = episode_specs(names, episodes, model.cfg, cfg)
    log = _record(record, path, model, cfg)
    jobs = job_groups(specs, cfg.envs_per_actor)
    job_of = {(s.task, s.episode): planner_seed(job) for job in jobs for s in job}
    done = [[log.done(s, job_of[(s.task, s.episode)]) for s in job] if log else [] for job in jobs]
    groups = [job for job, kept in zip(jobs, done, strict=True) if not kept or None in kept]
    earlier = [r for kept in done if kept and None not in kept for r in kept]
    results: list[EpisodeResult] = []
    retries: list[Retry] = []
    owned = pool is None and bool(groups)
    if owned:
        if not ray.is_initialized():
            ray.init(logging_level=logging.WARNING)
        pool = EvalPool(
            _actors(num_actors, cfg, len(groups)),
            cfg.cpus_per_actor,
            env_vars=_actor_env(cfg),
            gpus_per_actor=cfg.gpus_per_actor,
        )
    steps = sum(
        min(episode_length(s.task), cfg.max_steps or episode_length(s.task))
        for job in groups
        for s in job
    )
    bar = _TaskProgress(names, episodes, steps, progress, on_result, earlier, label)
    if groups:
        bar.write(_actors_line(num_actors, len(pool.actors), groups, cfg.envs_per_actor, label))
    try:
        if groups:
            results, retries = _run(model, cfg, groups, pool, bar, log, job_of)
            num_actors = len(pool.actors)
    finally:
        bar.close()
        if owned:
            pool.shutdown()
    ran = {(r.spec.task, r.spec.episode) for r in results}
    results += [r for r in earlier if (r.spec.task, r.spec.episode) not in ran]
    result = {
        **_scores(results, names, specs),
        "resumed_episodes": len(specs) - len(ran),
        "retries": [dataclasses.asdict(retry) for retry in retries],
        "videos": _write_videos(results, cfg.video_dir),
        "config": {
            "checkpoint": str(path) if path is not None else "<in memory>",
            "checkpoint_sha256": checkpoint_hash(path) if path is not None else None,
            "model": model.cfg.to_dict(),
            "tasks": names,
            "episodes": episodes,
            "num_actors": num_actors,
            **{k: v for k, v in dataclasses.asdict(cfg).items() if k != "planner"},
            "planner": dataclasses.asdict(cfg.planner),
        },
    }
    wall = time.perf_counter() - start
    steps_run = sum(r.length for r in results if (r.spec.task, r.spec.episode) in ran)
    result.update(wall_time_s=wall, env_steps_run=steps_run, env_steps_per_s=steps_run / wall)
    result["provenance"] = provenance()
    return result


def _actors(requested: int | None, cfg: EvalConfig, jobs: int) -> int:
    """Actors to start: `requested`, or as many as the cluster's CPUs (and GPUs, with a GPU
    share) hold at once; never more than `jobs`."""
    if requested is None:
        cap = capacity()
        requested = int(cap["CPU"] // cfg.cpus_per_actor)
        if cfg.gpus_per_actor:
            requested = min(requested, int(cap["GPU"] // cfg.gpus_per_actor))
    return max(1, min(requested, jobs))


def _actors_line(
    requested: int | None,
    working: int,
    groups: Sequence[Sequence[EpisodeSpec]],
    size: int,
    label: str,
) -> str:
    """One line: how many actors work on how many jobs, and why fewer than asked for."""
    episodes = sum(len(job) for job in groups)
    line = (
        f"{label}: {_count(episodes, 'episode')} in {_count(len(groups), 'job')} of up to "
        f"{size} on {_count(working, 'actor')}"
    )
    if requested is not None and working < requested:
        line += (
            f" ({requested} asked for: one job per actor; --envs-per-actor sets the job "
            "size, and with it the planner noise)"
        )
    return line


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'s' * (n != 1)}"


def _run(
    model: WorldModel,
    cfg: EvalConfig,
    groups: list[tuple[EpisodeSpec, ...]],
    pool: EvalPool,
    bar: _TaskProgress,
    log: EpisodeRecord | None,
    job_of: Mapping[tuple[str, int], int],
) -> tuple[list[EpisodeResult], list[Retry]]:
    """Run `groups` as jobs on `pool`, recording each finished episode in `log` as it arrives,
    with the job it belongs to, and showing progress on `bar`."""
    weights = ray.put(model_payload(model))

    def finished(result: EpisodeResult) -> None:
        if log is not None:
            log.add(result, job_of[(result.spec.task, result.spec.episode)])
        bar.update(result)

    return pool.run(weights, cfg, groups, cfg.max_retries, finished, bar.running)


def _record(
    record: str | os.PathLike | None, path: Path | None, model: WorldModel, cfg: EvalConfig
) -> EpisodeRecord | None:
    """The episode record at `record`, keyed by everything an episode's outcome depends on (the
    device kind too: a GPU's arithmetic and random stream differ from a CPU's)."""
    if record is None:
        return None
    if path is None:
        raise ValueError("an episode record needs the checkpoint as a file, not a model in memory")
    planner = {
        k: v
        for k, v in dataclasses.asdict(cfg.planner).items()
        if k not in ("compile", "env_block")
    }
    identity = {
        "checkpoint_sha256": checkpoint_hash(path),
        "model": model.cfg.to_dict(),
        "seed": cfg.seed,
        "eval_mode": cfg.eval_mode,
        "planner": planner,
        "max_steps": cfg.max_steps,
        "device": "cuda" if cfg.gpus_per_actor else "cpu",
    }
    return EpisodeRecord(record, identity)


def _world_model(
    source: ModelSource, model_config: ModelConfig | None
) -> tuple[WorldModel, Path | None]:
    """The model to evaluate and its checkpoint file (None for one given in memory)."""
    if isinstance(source, WorldModel):
        return source, None
    if isinstance(source, Mapping):
        model = WorldModel(model_config or infer_config(dict(source)))
        model.load_state_dict(source)
        return model, None
    path = resolve_checkpoint(source)
    return load_world_model(path, task_set=None), path


def _actor_env(cfg: EvalConfig) -> dict[str, str]:
    """MuJoCo's GL backend for the actors: the caller's, else EGL to film, else none."""
    default = "egl" if cfg.video_dir is not None else "disable"
    return {"MUJOCO_GL": os.environ.get("MUJOCO_GL", default)}


def _scores(
    results: Sequence[EpisodeResult], tasks: Sequence[str], specs: Sequence[EpisodeSpec]
) -> dict:
    """Per-task returns (in episode order) with their env seeds, mean with its 95% interval, std
    (population); the normalized score and the IQM with their intervals (`stats.score_summary`:
    bounds None and a note with too few episodes) and how the intervals were computed."""
    by_task: dict[str, list[EpisodeResult]] = defaultdict(list)
    for result in results:
        by_task[result.spec.task].append(result)
    per_task = {}
    for task in tasks:
        episodes = sorted(by_task[task], key=lambda r: r.spec.episode)
        returns = [float(r.ret) for r in episodes]
        interval = task_interval(returns)
        per_task[task] = {
            "task_id": episodes[0].spec.task_id,
            "returns": returns,
            "mean": float(np.mean(returns)),
            "mean_low": interval.low,
            "mean_high": interval.high,
            "mean_note": interval.note,
            "std": float(np.std(returns)),
            "lengths": [r.length for r in episodes],
            "env_seeds": [r.spec.env_seed for r in episodes],
        }
    summary = score_summary({task: row["returns"] for task, row in per_task.items()})
    return {
        **summary,
        "normalized_score": normalized_score({task: row["mean"] for task, row in per_task.items()}),
        "tasks": per_task,
        "episodes_run": len(specs),
        "env_steps": sum(r.length for r in results),
    }


def _write_videos(results: Sequence[EpisodeResult], video_dir: str | None) -> dict[str, str]:
    """Write each filmed episode as `<video_dir>/<task>.mp4`; returns task -> path."""
    paths = {}
    for result in results:
        if result.video is not None and video_dir is not None:
            path = Path(video_dir) / f"{result.spec.task}.mp4"
            with atomic_path(path) as tmp:
                tmp.write_bytes(result.video)
            paths[result.spec.task] = str(path)
    return paths


class _TaskProgress:
    """A tqdm bar of environment steps, moved by finished episodes and by the steps of the jobs
    still running (so it moves within seconds and its ETA means something), the finished
    episodes beside it, a line per task when its last episode is in, and the caller's own
    callback."""

    def __init__(
        self,
        tasks: Sequence[str],
        episodes: int,
        steps: int,
        enabled: bool,
        callback: Callable[[EpisodeResult], None] | None,
        earlier: Sequence[EpisodeResult] = (),
        label: str = "eval",
    ) -> None:
        self._episodes, self._callback = episodes, callback
        self._returns: dict[str, list[float]] = {task: [] for task in tasks}
        for result in earlier:
            self._returns[result.spec.task].append(result.ret)
        self._finished, self._total = len(earlier), len(tasks) * episodes
        self._finished_steps = 0
        self._bar = tqdm(total=steps, unit="step", desc=label, disable=not enabled)
        self._bar.set_postfix_str(self._postfix())

    def _postfix(self) -> str:
        return f"episodes {self._finished}/{self._total}"

    def _advance(self, steps: int) -> None:
        if steps > self._bar.n:
            self._bar.update(steps - self._bar.n)

    def running(self, steps: int) -> None:
        """The jobs still running have taken `steps` environment steps."""
        self._advance(self._finished_steps + steps)

    def write(self, line: str) -> None:
        """Print a line above the bar (nothing without progress)."""
        if not self._bar.disable:
            self._bar.write(line)

    def update(self, result: EpisodeResult) -> None:
        returns = self._returns[result.spec.task]
        returns.append(result.ret)
        self._finished += 1
        self._finished_steps += result.length
        self._bar.set_postfix_str(self._postfix(), refresh=False)
        self._advance(self._finished_steps)
        if len(returns) == self._episodes:
            self.write(
                f"{result.spec.task:<26} return {np.mean(returns):7.1f} ± {np.std(returns):6.1f}"
            )
        if self._callback is not None:
            self._callback(result)

    def close(self) -> None:
        self._bar.close()
