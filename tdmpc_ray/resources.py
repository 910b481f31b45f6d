"""What a run asks of the Ray cluster, added up before anything starts.

Ray never fails a request that does not fit: a task or actor waits, silently, until resources
free up, and when the run's own parts hold them that is forever (two Train workers at 1 CPU each
on 2 CPUs, and the Ray Data read that feeds them). So every verb adds up the CPUs and GPUs its
parts hold at the same time (Train workers, Tune trial functions, the teacher actor, Ray Data
read tasks, evaluation actors) and checks them against the cluster first; a request that cannot
fit fails in seconds with one line that says what to change.

The cluster's capacity is what it has now, or the most its autoscaler may grow it to when the
autoscaler publishes that (Ray's autoscaler v2 and KubeRay do; Ray Train's own worker check reads
the same). On a cluster that grows without publishing a maximum, set `TDMPC_RAY_RESOURCE_CHECK=
warn` to log the shortfall instead of failing (docs/decisions.md).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar, runtime_checkable

log = logging.getLogger(__name__)

CHECK_ENV = "TDMPC_RAY_RESOURCE_CHECK"
"""`warn`: log a request that does not fit instead of failing (clusters that grow unannounced)."""
STEP = 0.05
"""Granularity of suggested and fitted CPU shares."""


class ResourceError(ValueError):
    """A run asks for more than the cluster can ever give it at once."""


class _Recipe(Protocol):
    """A run's losses (`train.losses.LossConfig`): which teacher outputs they need."""

    def teacher_terms(self) -> tuple[str, ...]: ...


class _Evaluation(Protocol):
    """A run's periodic evaluation (`evaluate.config.PeriodicEvalConfig`): its rollout actors."""

    eval_freq: int
    eval_actors: int
    eval_cpus: float


class _Teacher(Protocol):
    """The teacher service a run asks (`train.teacher.TeacherSpec`): equal specs are one service
    (hashable), of `replicas` actors."""

    replicas: int

    def __hash__(self) -> int: ...


@runtime_checkable
class RunSettings(Protocol):
    """The settings of a training run that its resources depend on: the fields of
    `train.config.TrainConfig` read here, as a protocol so that this module imports nothing
    above it."""

    num_workers: int
    use_gpu: bool
    gpus_per_worker: float
    cpus_per_worker: float | None
    read_cpus: float
    evaluation: _Evaluation
    teacher_gpus: float | None
    distilling: bool

    def losses(self) -> _Recipe: ...

    def teacher_spec(self) -> _Teacher | None: ...


Run = TypeVar("Run", bound=RunSettings)
"""A run's settings, whose own type a fitted copy keeps."""


@dataclass(frozen=True)
class Part:
    """One thing a run holds while it runs, or `count` alike ones, at `cpus` and `gpus` each."""

    name: str
    cpus: float
    gpus: float = 0.0
    count: int | None = None
    """How many (workers, actors); None: one, named as a whole (reads, the teachers)."""

    @property
    def number(self) -> int:
        return 1 if self.count is None else self.count

    def describe(self, resource: str) -> str:
        """`2 workers x 1`, `1 worker x 0.5`, `reads 0.25`."""
        each = f"{self.cpus if resource == 'CPU' else self.gpus:g}"
        if self.count is None:
            return f"{self.name} {each}"
        return f"{self.count} {self.name}{'s' if self.count != 1 else ''} x {each}"


@dataclass(frozen=True)
class Demand:
    """Everything a run holds at once."""

    parts: tuple[Part, ...]

    def total(self, resource: str) -> float:
        each = (lambda p: p.cpus) if resource == "CPU" else (lambda p: p.gpus)
        return sum(p.number * each(p) for p in self.parts)

    def describe(self, resource: str) -> str:
        """`2.25 CPUs (2 workers x 1 + reads 0.25)`."""
        used = [
            p.describe(resource)
            for p in self.parts
            if (p.cpus if resource == "CPU" else p.gpus) > 0
        ]
        total = self.total(resource)
        return f"{total:g} {resource}{'s' if total != 1 else ''} ({' + '.join(used)})"


def capacity() -> dict[str, float]:
    """CPUs and GPUs of the cluster: now, or the autoscaler's published maximum when larger."""
    import ray

    now = ray.cluster_resources()
    most = _autoscaler_maximum()
    return {key: max(float(now.get(key, 0.0)), float(most.get(key, 0.0))) for key in ("CPU", "GPU")}


def available() -> dict[str, float]:
    """CPUs and GPUs free now, plus what the autoscaler may still add (`capacity` less what the
    cluster has now): what new work can take without waiting on work already running."""
    import ray

    now, free, cap = ray.cluster_resources(), ray.available_resources(), capacity()
    return {
        key: float(free.get(key, 0.0)) + max(0.0, cap[key] - float(now.get(key, 0.0)))
        for key in ("CPU", "GPU")
    }


def state_api_reachable(wait_s: float = 15.0) -> bool:
    """Whether the State API (served by Ray's dashboard) of the cluster this driver is connected
    to answers within `wait_s` seconds. Ray Train's placement-group cleaner asks it whether a
    run's controller lives: on a cluster without it, a run whose controller is killed (a Tune
    trial stopped early by its scheduler) keeps its workers' CPUs until the cluster stops."""
    import ray
    from ray.util.state import list_placement_groups
    from ray.util.state.exception import RayStateApiException

    # The connected cluster's dashboard, asked by its URL: left to find the cluster itself, the
    # State API client fails on a machine running two Ray instances, and on a cluster without a
    # dashboard asks whatever listens on the 127.0.0.1:8265 that such a cluster still publishes.
    url = ray.init(ignore_reinit_error=True).address_info.get("webui_url")
    if not url:
        return False
    deadline = time.monotonic() + wait_s
    while True:
        try:
            list_placement_groups(address=f"http://{url}", limit=1, timeout=5)
            return True
        except (RayStateApiException, ConnectionError):
            if time.monotonic() > deadline:
                return False
            time.sleep(1.0)


def _autoscaler_maximum() -> dict[str, float]:
    """The most resources the autoscaler may add up to, when it publishes them ({} otherwise).
    Ray has no public call for this; Ray Train's worker-group check reads the same state."""
    try:
        from ray._private.state import state

        return dict(state.get_max_resources_from_cluster_config() or {})
    except Exception:  # noqa: BLE001 - an older or newer Ray without it: use what is there now
        return {}


def check(demand: Demand, cap: dict[str, float], what: str, fixes: dict[str, str]) -> None:
    """Fail with one line when `demand` exceeds `cap` in CPUs or GPUs: `<what> needs <demand>,
    the cluster has <cap>: <fix>`, the fix taken from `fixes` by resource."""
    for resource in ("CPU", "GPU"):
        if demand.total(resource) > cap.get(resource, 0.0) + 1e-9:
            message = (
                f"{what} needs {demand.describe(resource)}, the cluster has "
                f"{cap.get(resource, 0.0):g}: {fixes[resource]}"
            )
            if os.environ.get(CHECK_ENV) == "warn":
                log.warning("%s (%s=warn: waiting for the cluster to grow)", message, CHECK_ENV)
                return
            raise ResourceError(message)


def round_down(value: float) -> float:
    """`value` rounded down to a multiple of `STEP` (0 when below it)."""
    return round(math.floor(value / STEP + 1e-9) * STEP, 6)


def teacher_gpus(cfg: RunSettings, cap: dict[str, float]) -> float:
    """GPUs each replica of the shared teacher takes (`get_teacher`'s rule: one when the cluster
    has one)."""
    if cfg.teacher_gpus is not None:
        return cfg.teacher_gpus
    return 1.0 if cap.get("GPU", 0.0) >= 1 else 0.0


def training_parts(cfg: RunSettings) -> list[Part]:
    """What one training run holds besides the teacher: its workers, one Ray Data read task
    (more run when CPUs are spare; one is enough to load) and its evaluation actors."""
    parts = [
        Part(
            "worker",
            cfg.cpus_per_worker or 0.0,
            cfg.gpus_per_worker if cfg.use_gpu else 0.0,
            cfg.num_workers,
        ),
        Part("reads", cfg.read_cpus),
    ]
    evaluation = cfg.evaluation
    if evaluation.eval_freq:
        parts.append(Part("eval actor", evaluation.eval_cpus, count=evaluation.eval_actors))
    return parts


def asks_teacher(cfg: RunSettings, cached: Sequence[str] = ()) -> bool:
    """Whether `cfg`'s run starts teacher actors: it distils an output that is not among the
    data's `cached` labels (the paper's reward recipe on labelled data starts none)."""
    return cfg.distilling and bool(set(cfg.losses().teacher_terms()) - set(cached))


def _teachers(
    configs: Sequence[RunSettings], cap: dict[str, float], cached: Sequence[str] = ()
) -> Part:
    """The shared teacher actors of `configs` that ask the teacher for an output beyond the
    `cached` labels: the replicas of each distinct teacher service (0 CPUs each)."""
    teachers = {
        spec: spec.replicas * teacher_gpus(c, cap)
        for c in configs
        if asks_teacher(c, cached) and (spec := c.teacher_spec()) is not None
    }
    return Part("teachers", 0.0, sum(teachers.values()))


def fit_workers(cfg: Run, cap: dict[str, float], reserved: float = 0.0) -> Run:
    """`cfg` with `cpus_per_worker` set when it was None: 1, or the largest multiple of `STEP`
    that fits beside the run's other parts and `reserved` CPUs (e.g. a Tune trial's own)."""
    if cfg.cpus_per_worker is not None:
        return cfg
    others = Demand(tuple(training_parts(cfg)[1:])).total("CPU") + reserved
    share = min(1.0, round_down((cap.get("CPU", 0.0) - others) / cfg.num_workers))
    return dataclasses.replace(cfg, cpus_per_worker=share if share > 0 else 1.0)


def _fixes(
    cfg: RunSettings, cap: dict[str, float], demand: Demand, cached: Sequence[str] = ()
) -> dict[str, str]:
    """What to change when `cfg`'s `demand` does not fit: worker CPUs first, then evaluation;
    for GPUs, fewer GPU workers or a teacher on CPU."""
    others = demand.total("CPU") - cfg.num_workers * cfg.cpus_per_worker
    share = round_down((cap.get("CPU", 0.0) - others) / cfg.num_workers)
    if share > 0:
        cpu_fix = f"set cpus_per_worker={share:g}"
    elif cfg.evaluation.eval_freq:
        cpu_fix = "set eval_actors=1 and a smaller eval_cpus (e.g. 0.25)"
    else:
        cpu_fix = f"set num_workers=1 and a smaller read_cpus (now {cfg.read_cpus:g})"
    gpu_fixes = []
    if cfg.use_gpu:
        teacher = demand.total("GPU") - cfg.num_workers * cfg.gpus_per_worker
        fits = math.floor((cap.get("GPU", 0.0) - teacher) / cfg.gpus_per_worker + 1e-9)
        gpu_fixes.append(f"num_workers={fits}" if fits >= 1 else "use_gpu=false")
    if asks_teacher(cfg, cached):
        gpu_fixes.append("teacher_gpus=0")
    return {"CPU": cpu_fix, "GPU": "set " + " or ".join(gpu_fixes)}


def check_training(cfg: Run, cap: dict[str, float], cached: Sequence[str] = ()) -> Run:
    """The run's config with its worker CPUs fitted (`fit_workers`), once the whole run is
    known to fit the cluster (its teacher counted only when it asks for more than the data's
    `cached` labels); raises ResourceError naming what to change otherwise."""
    cfg = fit_workers(cfg, cap)
    demand = Demand((*training_parts(cfg), _teachers([cfg], cap, cached)))
    check(demand, cap, "training", _fixes(cfg, cap, demand, cached))
    return cfg


def plan_sweep(
    configs: Sequence[RunSettings],
    trial_cpus: float,
    max_concurrent: int | None,
    cap: dict[str, float],
    free: dict[str, float] | None = None,
) -> int:
    """How many trials run at once: as many as fit beside the shared teachers in `free` (what is
    free now, default `cap`), at least one, each trial's workers fitted beside its Tune function
    (`fit_workers`, as `run_trial` does). Counting what is free matters: a trial whose Tune
    function started but whose workers cannot would hold its CPUs while the others wait for
    them. A `max_concurrent` beyond that only warns (a growing cluster takes them; a fixed one
    runs them in turn). Raises ResourceError when one trial cannot fit `cap`."""
    teachers = _teachers(configs, cap)
    configs = [fit_workers(c, cap, reserved=trial_cpus) for c in configs]
    trials = [Demand((Part("trial function", trial_cpus), *training_parts(c))) for c in configs]
    for cfg, trial in zip(configs, trials, strict=True):
        whole = Demand((*trial.parts, teachers))
        check(whole, cap, "one trial", _fixes(cfg, cap, whole))
    fits = []
    for resource in ("CPU", "GPU"):
        need = max(t.total(resource) for t in trials)
        if need > 0:
            spare = (cap if free is None else free).get(resource, 0.0)
            spare -= Demand((teachers,)).total(resource)
            fits.append(math.floor(spare / need + 1e-9))
    fits = max(1, min(fits))
    if max_concurrent and max_concurrent > fits:
        log.warning(
            "max_concurrent_trials=%d: %d trial(s) fit the cluster now; the others wait for it "
            "to grow",
            max_concurrent,
            fits,
        )
    return max_concurrent or fits


def check_evaluation(
    num_actors: int, cpus_per_actor: float, cap: dict[str, float], gpus_per_actor: float = 0.0
) -> None:
    """Fail unless every rollout actor can run at once, CPUs and GPUs: each is handed its own
    episodes, so an actor that never starts holds them forever."""
    demand = Demand((Part("actor", cpus_per_actor, gpus_per_actor, count=num_actors),))
    fixes = {
        "CPU": _actor_fix(num_actors, cpus_per_actor, cap.get("CPU", 0.0), "CPUs"),
        "GPU": _actor_fix(num_actors, gpus_per_actor, cap.get("GPU", 0.0), "GPUs")
        or "set gpus_per_actor=0",
    }
    check(demand, cap, "evaluation", fixes)


def _actor_fix(num_actors: int, each: float, have: float, unit: str) -> str:
    """What fits `have` of a resource that `num_actors` actors ask `each` of: `use at most N
    actor(s), or S <unit> per actor` (either part left out when it is zero)."""
    fits = math.floor(have / each + 1e-9) if each else num_actors
    share = round_down(have / num_actors)
    options = []
    if fits:
        options.append(f"use at most {fits} actor(s)")
    if share:
        options.append(f"{share:g} {unit} per actor")
    return ", or ".join(options)
