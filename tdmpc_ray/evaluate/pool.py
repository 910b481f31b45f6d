"""Ray side of evaluation: `RolloutActor`s that run lockstep jobs, and the `EvalPool` that spreads
jobs over them and survives physics errors and dead actors.

A job is a fixed group of episodes stepped together by one actor with one planner. Jobs, not
actors, fix the planner's random stream (`planner_seed` of the group), so a result does not
depend on which actor ran a job, on how many actors there were, or on a job being rerun after
its actor died.

Devices: an actor given a GPU share by Ray (`gpus_per_actor`) holds its model on that GPU and
plans each job's environments there in one batched pass per step; the environments step on the
actor's CPU. Without one, the same code plans on the CPU with `int(cpus_per_actor)` torch
threads. (Why one planner per job and not a shared planner actor: docs/decisions.md.)
"""

from __future__ import annotations

import contextlib
import logging
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import ray
import torch
from absl import logging as absl_logging
from ray.exceptions import RayActorError

from tdmpc_ray.evaluate.config import EvalConfig
from tdmpc_ray.evaluate.rollout import (
    EnvFactory,
    EpisodeResult,
    EpisodeSpec,
    planner_seed,
    run_lockstep,
)
from tdmpc_ray.model import ModelConfig, WorldModel
from tdmpc_ray.planning import Planner
from tdmpc_ray.resources import capacity, check_evaluation
from tdmpc_ray.tasks.dmcontrol import make_env

log = logging.getLogger(__name__)

PROGRESS_EVERY_S = 2.0
"""How often `EvalPool.run` asks the busy actors how far their jobs are."""


@dataclass(frozen=True)
class Retry:
    """An episode that had to be run again, and why."""

    task: str
    episode: int
    attempt: int
    """The attempt that failed (0 for the first run)."""
    reason: str
    """`physics_error` (rerun with a fresh env seed) or `actor_died` (rerun as it was)."""
    error: str
    actor: int
    """Index of the actor slot that ran it."""


def model_payload(model: WorldModel) -> dict:
    """What actors need to rebuild `model`: its config and CPU weights (put once with ray.put)."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return {"config": model.cfg.to_dict(), "state_dict": state}


def actor_device() -> torch.device:
    """The GPU Ray gave this worker (its share is visible as cuda:0), else the CPU."""
    if not ray.get_runtime_context().get_accelerator_ids().get("GPU"):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError("this rollout actor was given a GPU, but torch here has no CUDA")
    return torch.device("cuda", 0)


@ray.remote
class RolloutActor:
    """Holds environments, a model copy and a `Planner`; runs one lockstep job per call, and
    answers `steps()` (how far that job is) while it runs: the actor has two threads, and the
    pool never sends it a second job before the first returns.

    The model is rebuilt only when a call brings weights it has not seen (by object id), so a
    long-lived actor serves periodic evaluations of a changing student. dm_control's absl
    warnings (one per cheetah env built, about its XML) are silenced; physics errors are
    reported through the results instead.
    """

    def __init__(self, env_factory: EnvFactory, num_threads: int) -> None:
        absl_logging.set_verbosity(absl_logging.ERROR)
        torch.set_num_threads(num_threads)
        self._device = actor_device()
        self._env_factory = env_factory
        self._weights_id: str | None = None
        self._model: WorldModel | None = None
        self._steps = 0

    def steps(self) -> int:
        """Environment steps taken so far by the job running now (0 between jobs)."""
        return self._steps

    def _count(self, envs: int) -> None:
        self._steps += envs

    def _load(self, weights: ray.ObjectRef) -> WorldModel:
        if weights.hex() != self._weights_id:
            payload = ray.get(weights)
            model = WorldModel(ModelConfig.from_dict(payload["config"]))
            model.load_state_dict(payload["state_dict"])
            model = model.to(self._device)
            self._model, self._weights_id = model.eval(), weights.hex()
        return self._model

    def rollout(
        self,
        weights: list[ray.ObjectRef],
        cfg: EvalConfig,
        specs: tuple[EpisodeSpec, ...],
    ) -> list[EpisodeResult]:
        """Run `specs` in lockstep, acting as `cfg` says (its planner, eval_mode and episode
        cut); `weights` is a one-element list so Ray passes the reference itself (fetched only
        when new) rather than the resolved weights."""
        model = self._load(weights[0])
        planner = Planner(model, cfg.planner, len(specs), planner_seed(specs))
        try:
            return run_lockstep(
                planner,
                specs,
                eval_mode=cfg.eval_mode,
                obs_pad=model.cfg.obs_dim,
                env_factory=self._env_factory,
                max_steps=cfg.max_steps,
                on_step=self._count,
            )
        finally:
            self._steps = 0


@dataclass
class _Job:
    specs: tuple[EpisodeSpec, ...]
    deaths: int = 0
    """Times an actor died running this job."""


class EvalPool:
    """`num_actors` RolloutActors that run groups of episodes and recover from failures.

    A physics error reruns that episode with its next attempt's env seed; an actor found dead
    when a job fails on it (or is sent to it) is replaced and its whole job rerun unchanged.
    Each is reported as a `Retry`; past `max_retries` of one episode or job the run fails. Every
    actor must fit the cluster at once (an actor that never starts would hold its jobs forever):
    more fail at once with `ResourceError`. Use
    as a context manager, or call `shutdown()`; keep one alive to evaluate repeatedly without
    restarting processes.
    """

    def __init__(
        self,
        num_actors: int,
        cpus_per_actor: float = 1.0,
        env_factory: EnvFactory = make_env,
        env_vars: dict[str, str] | None = None,
        gpus_per_actor: float = 0.0,
    ) -> None:
        if num_actors < 1:
            raise ValueError(f"num_actors must be at least 1, got {num_actors}")
        # "DEFAULT": never placed inside a caller's placement group (a Train or Tune trial's).
        self._options = {
            "num_cpus": cpus_per_actor,
            "num_gpus": gpus_per_actor,
            "max_restarts": 0,
            "max_concurrency": 2,
            "scheduling_strategy": "DEFAULT",
        }
        if env_vars:
            self._options["runtime_env"] = {"env_vars": env_vars}
        self._args = (env_factory, max(1, int(cpus_per_actor)))
        check_evaluation(num_actors, cpus_per_actor, capacity(), gpus_per_actor)
        self.actors = [self._spawn() for _ in range(num_actors)]

    def _spawn(self) -> ray.actor.ActorHandle:
        return RolloutActor.options(**self._options).remote(*self._args)

    def _replace(self, index: int) -> None:
        ray.kill(self.actors[index], no_restart=True)
        self.actors[index] = self._spawn()

    def run(
        self,
        weights: ray.ObjectRef,
        cfg: EvalConfig,
        groups: Sequence[Sequence[EpisodeSpec]],
        max_retries: int = 3,
        on_result: Callable[[EpisodeResult], None] | None = None,
        on_progress: Callable[[int], None] | None = None,
    ) -> tuple[list[EpisodeResult], list[Retry]]:
        """Run each group of episodes as one lockstep job; returns every episode's final
        result (in completion order) and the retries it took. `on_result` sees each final
        result as it arrives (progress bars, logging); `on_progress` hears every
        `PROGRESS_EVERY_S` the environment steps the jobs still running have taken."""
        pending = deque(_Job(tuple(group)) for group in groups)
        idle = list(range(len(self.actors)))
        in_flight: dict[ray.ObjectRef, tuple[int, _Job]] = {}
        results: list[EpisodeResult] = []
        retries: list[Retry] = []
        while pending or in_flight:
            while pending and idle:
                index, job = idle.pop(0), pending.popleft()
                ref = self.actors[index].rollout.remote([weights], cfg, job.specs)
                in_flight[ref] = (index, job)
            ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=PROGRESS_EVERY_S)
            if not ready:
                if on_progress is not None:
                    on_progress(self._running_steps([i for i, _ in in_flight.values()]))
                continue
            [ref] = ready
            index, job = in_flight.pop(ref)
            idle.append(index)
            try:
                episodes = ray.get(ref)
            except RayActorError as err:
                pending.appendleft(self._after_death(index, job, err, max_retries, retries))
                continue
            failed = [_retry_physics(r, index, max_retries, retries) for r in episodes if r.error]
            if failed:
                pending.appendleft(_Job(tuple(failed)))
            for result in episodes:
                if result.error is None:
                    results.append(result)
                    if on_result is not None:
                        on_result(result)
        return results, retries

    def _running_steps(self, busy: Sequence[int]) -> int:
        """Environment steps taken so far by the jobs of actors `busy` (0 for one that does not
        answer within a second: a dead actor's job is rerun anyway)."""
        refs = [self.actors[index].steps.remote() for index in busy]
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=1.0)
        total = 0
        for ref in ready:
            with contextlib.suppress(RayActorError):
                total += ray.get(ref)
        return total

    def _after_death(
        self, index: int, job: _Job, err: Exception, max_retries: int, retries: list[Retry]
    ) -> _Job:
        """Record a dead actor's job for rerun and replace the actor."""
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if job.deaths >= max_retries:
            raise RuntimeError(
                f"actors died {job.deaths + 1} times running {_describe(job.specs)}: {message}"
            ) from err
        log.warning("rollout actor %d died (%s); rerunning its episodes", index, message)
        for spec in job.specs:
            retries.append(
                Retry(spec.task, spec.episode, spec.attempt, "actor_died", message, index)
            )
        self._replace(index)
        return _Job(job.specs, job.deaths + 1)

    def shutdown(self) -> None:
        """Stop every actor."""
        for actor in self.actors:
            ray.kill(actor, no_restart=True)
        self.actors = []

    def __enter__(self) -> EvalPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


def _retry_physics(
    result: EpisodeResult, index: int, max_retries: int, retries: list[Retry]
) -> EpisodeSpec:
    """Record an episode's physics error and return its next attempt."""
    spec = result.spec
    if spec.attempt >= max_retries:
        raise RuntimeError(
            f"{spec.task} episode {spec.episode} failed {spec.attempt + 1} times: {result.error}"
        )
    log.warning("%s episode %d: %s; retrying", spec.task, spec.episode, result.error)
    retries.append(
        Retry(spec.task, spec.episode, spec.attempt, "physics_error", result.error, index)
    )
    return spec.retry()


def _describe(specs: Sequence[EpisodeSpec]) -> str:
    return ", ".join(f"{s.task}#{s.episode}" for s in specs)
