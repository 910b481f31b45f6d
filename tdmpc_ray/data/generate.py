"""`tdmpc-ray data generate`: roll out policies in the MT30 environments on Ray actors and write
the episodes in the Parquet episode layout, exactly as the public MT30 data set stores them.

Stepping is the evaluation part's lockstep runner (`run_lockstep(..., record=True)`); this module
only adds the policies data generation needs and the Ray plumbing around them:
- `RandomPolicy`: uniform actions in [-1, 1] on each task's own action dims, zero on the padding;
- `NoisyPolicy`: a checkpoint's deterministic action (the policy prior's mean, or with `mpc` the
  MPPI planner's chosen action) plus Gaussian noise, clipped to [-1, 1] and masked.

Determinism: episode e of task T has the evaluation part's env seed (`EpisodeSpec.env_seed`);
episodes are grouped in (task, episode) order into jobs of `envs_per_actor`, and each job's
policy is seeded from its members (`planner_seed`), so a seed gives the same episodes whatever
the number of actors or the order jobs finish in. An episode whose physics diverges is rerun
with its next attempt's env seed, like evaluation does.

Output: part k holds episodes [k*episodes_per_file, (k+1)*episodes_per_file) in that order
(episode id = position), written atomically as soon as all of its episodes are in. The footer's
`source` names the policy, noise, seed and checkpoint; its provenance holds the full settings.
Actors load the checkpoint from its path, so it must be on a file system every Ray node sees.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import ray
import torch
from absl import logging as absl_logging
from ray.util import ActorPool
from tqdm import tqdm

from tdmpc_ray.data.dataset_info import DatasetInfo, combine_parts, format_bytes, format_task_table
from tdmpc_ray.data.layout import (
    EPISODES_PER_FILE,
    EpisodeMeta,
    episodes_to_table,
    part_name,
    read_part_info,
    write_part,
)
from tdmpc_ray.evaluate.rollout import (
    EpisodeResult,
    EpisodeSpec,
    Policy,
    derive_seed,
    planner_seed,
    run_lockstep,
)
from tdmpc_ray.model import checkpoint_hash, load_world_model
from tdmpc_ray.model.published import resolve_checkpoint
from tdmpc_ray.planning import Planner, PlannerConfig
from tdmpc_ray.provenance import provenance
from tdmpc_ray.tasks.task_sets import TaskSet, episode_length, get_task_set, parse_tasks

TASK_SET = "mt30"
RANDOM = "random"
DEFAULT_NOISE = 0.1
MAX_RETRIES = 3
"""Physics-error reruns allowed per episode."""


@dataclass(frozen=True)
class GenerateConfig:
    """What `generate` rolls out; each field is a `tdmpc-ray data generate` option."""

    tasks: str = TASK_SET
    """`mt30`, or comma-separated MT30 task names."""
    episodes_per_task: int = 10
    policy: str = RANDOM
    """`random`, or a world-model checkpoint whose policy prior (or planner, with `mpc`) acts."""
    noise: float | None = None
    """Std of the Gaussian noise added to a checkpoint policy's actions (None: `DEFAULT_NOISE`)."""
    mpc: bool = False
    """Act with the checkpoint's MPPI planner instead of its policy prior."""
    planner: PlannerConfig = PlannerConfig()
    """MPPI settings used with `mpc`."""
    seed: int = 0
    """Run seed every env, policy and noise seed derives from."""
    num_actors: int = 1
    envs_per_actor: int = 10
    """Episodes one actor steps together (one batched policy call per step); with `seed` it fixes
    every random draw."""
    max_steps: int | None = None
    """Cut episodes after this many agent steps (T = max_steps + 1 rows); tests and smoke runs."""
    episodes_per_file: int = EPISODES_PER_FILE

    @property
    def policy_name(self) -> str:
        """`random`, `prior` or `mpc`."""
        if self.policy == RANDOM:
            return RANDOM
        return "mpc" if self.mpc else "prior"

    @property
    def noise_std(self) -> float:
        """The noise actually added: none for the random policy, else `noise` or the default."""
        if self.policy == RANDOM:
            return 0.0
        return DEFAULT_NOISE if self.noise is None else self.noise

    def check(self) -> None:
        """Fail with one line on settings that cannot run."""
        for name in ("episodes_per_task", "num_actors", "envs_per_actor", "episodes_per_file"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be at least 1, got {self.max_steps}")
        if self.policy == RANDOM and (self.mpc or self.noise is not None):
            raise ValueError("--mpc and --noise need a checkpoint policy, not random")
        if self.noise is not None and self.noise < 0:
            raise ValueError(f"noise must be non-negative, got {self.noise}")


def zero_padding(
    action: torch.Tensor, task: torch.Tensor, action_dims: torch.Tensor
) -> torch.Tensor:
    """`action` [B, A] with each row's dims past its task's action dim set to +0 (the padding
    of the task set's action space, as the public data stores it)."""
    own = torch.arange(action.shape[1]) < action_dims[task].unsqueeze(1)
    return action.where(own, 0.0)


class RandomPolicy:
    """Uniform actions in [-1, 1] on each task's action dims and zero beyond (a `Policy`)."""

    def __init__(self, action_dims: torch.Tensor, width: int, seed: int) -> None:
        self.action_dims, self.width = action_dims, width
        self.generator = torch.Generator().manual_seed(seed)

    def act(self, obs: torch.Tensor, task: torch.Tensor, eval_mode: bool) -> torch.Tensor:
        uniform = torch.rand(len(task), self.width, generator=self.generator) * 2 - 1
        return zero_padding(uniform, task, self.action_dims)

    def reset(self, envs: list[int] | None = None) -> None:
        """Nothing to forget: every step is independent."""


class NoisyPolicy:
    """`policy`'s actions plus N(0, std^2) noise per dim, clipped to [-1, 1], with the padding dims
    zeroed (a `Policy`). Its noise has its own seeded stream, apart from the policy's."""

    def __init__(self, policy: Policy, std: float, action_dims: torch.Tensor, seed: int) -> None:
        self.policy, self.std, self.action_dims = policy, std, action_dims
        self.generator = torch.Generator().manual_seed(seed)

    def act(self, obs: torch.Tensor, task: torch.Tensor, eval_mode: bool) -> torch.Tensor:
        action = self.policy.act(obs, task, eval_mode).cpu()
        if self.std:
            action = action + self.std * torch.randn(action.shape, generator=self.generator)
        return zero_padding(action.clamp(-1, 1), task, self.action_dims)

    def reset(self, envs: list[int] | None = None) -> None:
        self.policy.reset(envs)


@ray.remote
class GenerateActor:
    """Holds a policy's model and rolls out groups of episodes in lockstep, recording them."""

    def __init__(self, cfg: GenerateConfig) -> None:
        absl_logging.set_verbosity(absl_logging.ERROR)
        torch.set_num_threads(1)
        self.cfg = cfg
        self.task_set = get_task_set(TASK_SET)
        self.action_dims = torch.tensor(self.task_set.action_dims)
        self.model = None if cfg.policy == RANDOM else load_world_model(cfg.policy, TASK_SET)

    def _policy(self, specs: Sequence[EpisodeSpec]) -> Policy:
        """A fresh policy for one job, seeded from its episodes."""
        seed = planner_seed(specs)
        if self.model is None:
            return RandomPolicy(self.action_dims, self.task_set.action_dim, seed)
        planner_cfg = dataclasses.replace(self.cfg.planner, mpc=self.cfg.mpc)
        planner = Planner(self.model, planner_cfg, len(specs), seed)
        noise_seed = derive_seed("noise", seed)
        return NoisyPolicy(planner, self.cfg.noise_std, self.action_dims, noise_seed)

    def rollout(self, specs: tuple[EpisodeSpec, ...]) -> list[EpisodeResult]:
        """Every episode of `specs` with its trajectory; physics errors are rerun (as a new
        lockstep group) with the next attempt's env seed, up to `MAX_RETRIES` times."""
        done: list[EpisodeResult] = []
        todo = list(specs)
        while todo:
            results = run_lockstep(
                self._policy(todo),
                todo,
                eval_mode=True,
                obs_pad=self.task_set.obs_dim,
                max_steps=self.cfg.max_steps,
                record=True,
            )
            done += [r for r in results if r.error is None]
            todo = [_next_attempt(r) for r in results if r.error is not None]
        return done


def _next_attempt(result: EpisodeResult) -> EpisodeSpec:
    """The failed episode's next attempt, or an error past `MAX_RETRIES`."""
    spec = result.spec
    if spec.attempt >= MAX_RETRIES:
        raise RuntimeError(
            f"{spec.task} episode {spec.episode} failed {spec.attempt + 1} times: {result.error}"
        )
    return spec.retry()


def episode_specs(cfg: GenerateConfig, task_set: TaskSet) -> list[EpisodeSpec]:
    """Every (task, episode) of the run in task order; the position is the episode id."""
    names = parse_tasks(cfg.tasks, task_set)
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"task {repeated[0]!r} is given more than once")
    return [
        EpisodeSpec(seed=cfg.seed, task=name, task_id=task_set.index(name), episode=episode)
        for name in names
        for episode in range(cfg.episodes_per_task)
    ]


def _source(cfg: GenerateConfig, digest: str | None) -> str:
    """The footer's `source`: policy, its noise and checkpoint, and the seed."""
    if digest is None:
        return f"generate:{RANDOM} seed={cfg.seed}"
    return (
        f"generate:{cfg.policy_name} noise={cfg.noise_std:g} seed={cfg.seed} "
        f"checkpoint=sha256:{digest[:16]}"
    )


class _PartWriter:
    """Collects finished episodes and writes part k as soon as all of its episodes are in."""

    def __init__(
        self, dst: Path, meta: EpisodeMeta, num_episodes: int, per_file: int, info: dict
    ) -> None:
        self.dst, self.meta, self.info = dst, meta, info
        self.per_file = per_file
        self.ranges = [
            range(start, min(start + self.per_file, num_episodes))
            for start in range(0, num_episodes, self.per_file)
        ]
        self.pending: dict[int, EpisodeResult] = {}
        self.written: list[Path] = []

    def add(self, episode_id: int, result: EpisodeResult) -> None:
        self.pending[episode_id] = result
        index = episode_id // self.per_file
        if all(i in self.pending for i in self.ranges[index]):
            self._write(index)

    def _write(self, index: int) -> None:
        episodes = [self.pending.pop(i) for i in self.ranges[index]]
        trajectories = [r.trajectory for r in episodes]
        table = episodes_to_table(
            self.meta,
            episode_id=np.asarray(self.ranges[index]),
            task=np.array([r.spec.task_id for r in episodes]),
            obs=np.stack([t.obs for t in trajectories]),
            action=np.stack([t.action for t in trajectories]),
            reward=np.stack([t.reward for t in trajectories]),
        )
        path = self.dst / part_name(index)
        write_part(path, table, self.meta, self.info)
        self.written.append(path)

    def remove_written(self) -> None:
        """Delete the parts of a run that failed, so nothing half-done is left behind."""
        for path in self.written:
            path.unlink(missing_ok=True)


@dataclass(frozen=True)
class GenerateSummary:
    """Outcome of a generation run: the data set written and how fast."""

    dst: Path
    dataset: DatasetInfo
    retries: int
    env_steps: int
    seconds: float

    def format(self) -> str:
        """One screen: policy, per-task episodes and returns, size, speed and the paths."""
        parts, meta = self.dataset.parts, self.dataset.meta
        return "\n".join(
            [
                f"generated {self.dataset.episodes} episodes into {self.dst}: {len(parts)} "
                f"part(s), {meta.episode_length} steps per episode, {meta.source}",
                *format_task_table(self.dataset),
                f"{self.env_steps:,} env steps in {self.seconds:.1f} s "
                f"({self.env_steps / self.seconds:,.0f}/s), {self.retries} physics-error "
                f"retries; {format_bytes(self.dataset.num_bytes)} on disk",
                f"paths: {parts[0].path} .. {parts[-1].path.name}",
            ]
        )


def _check_destination(dst: Path) -> None:
    """Generation writes a new data set: refuse a directory that already holds parts."""
    if dst.is_dir() and any(dst.glob("part-*.parquet")):
        raise ValueError(f"{dst}: already holds part files; generate into an empty directory")


def _run_jobs(
    cfg: GenerateConfig, specs: list[EpisodeSpec], writer: _PartWriter, progress: bool
) -> int:
    """Roll out every spec on `num_actors` actors, handing finished episodes to `writer`;
    returns the number of physics-error retries."""
    ids = {(s.task, s.episode): i for i, s in enumerate(specs)}
    groups = [
        tuple(specs[i : i + cfg.envs_per_actor]) for i in range(0, len(specs), cfg.envs_per_actor)
    ]
    cpus = ray.cluster_resources().get("CPU", 0.0)
    if cfg.num_actors > cpus:  # an actor never started would hold its jobs forever
        raise ValueError(
            f"--num-actors {cfg.num_actors} needs as many CPUs, the Ray cluster has {cpus:g}"
        )
    env_vars = {"MUJOCO_GL": os.environ.get("MUJOCO_GL", "disable")}
    options = {"num_cpus": 1, "runtime_env": {"env_vars": env_vars}}
    actors = [GenerateActor.options(**options).remote(cfg) for _ in range(cfg.num_actors)]
    retries = 0
    try:
        with tqdm(total=len(specs), unit="episode", desc="generate", disable=not progress) as bar:
            jobs = ActorPool(actors).map_unordered(lambda a, g: a.rollout.remote(g), groups)
            for results in jobs:
                for result in results:
                    writer.add(ids[result.spec.task, result.spec.episode], result)
                    retries += result.spec.attempt
                bar.update(len(results))
    finally:
        for actor in actors:
            ray.kill(actor)
    return retries


def generate(cfg: GenerateConfig, dst: str | os.PathLike, progress: bool = True) -> GenerateSummary:
    """Roll out `cfg`'s policy in its tasks and write the episodes as Parquet parts in `dst`.

    Bad settings, tasks or checkpoints fail with one line before any actor starts; if the run
    fails later, the parts it wrote are removed.
    """
    started = time.perf_counter()
    cfg.check()
    task_set = get_task_set(TASK_SET)
    specs = episode_specs(cfg, task_set)
    digest = None
    if cfg.policy != RANDOM:
        cfg = dataclasses.replace(cfg, policy=str(resolve_checkpoint(cfg.policy).resolve()))
        model = load_world_model(cfg.policy, TASK_SET)
        Planner(model, dataclasses.replace(cfg.planner, mpc=cfg.mpc, compile=False))
        digest = checkpoint_hash(cfg.policy)
    dst = Path(dst)
    _check_destination(dst)
    steps = min(cfg.max_steps or episode_length(specs[0].task), episode_length(specs[0].task))
    meta = EpisodeMeta(
        task_set=task_set.name,
        tasks=task_set.tasks,
        obs_dim=task_set.obs_dim,
        action_dim=task_set.action_dim,
        episode_length=steps + 1,
        source=_source(cfg, digest),
    )
    settings = {
        **dataclasses.asdict(cfg),
        "policy_name": cfg.policy_name,
        "noise_std": cfg.noise_std,
        "checkpoint_sha256": digest,
    }
    info = {**provenance(), "generate": settings}
    writer = _PartWriter(dst, meta, len(specs), cfg.episodes_per_file, info)
    if not ray.is_initialized():
        ray.init(logging_level=logging.WARNING)
    try:
        retries = _run_jobs(cfg, specs, writer, progress)
    except BaseException:
        writer.remove_written()
        raise
    return GenerateSummary(
        dst=dst,
        dataset=combine_parts([read_part_info(path) for path in sorted(writer.written)]),
        retries=retries,
        env_steps=len(specs) * steps,
        seconds=time.perf_counter() - started,
    )
