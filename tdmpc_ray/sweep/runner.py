"""Run a sweep spec with Ray Tune, Train inside Tune: each trial is a Tune function that builds
and fits a TorchTrainer as `train` does, while checkpoints are evaluated asynchronously (by the
same `PeriodicEvaluation`) and their scores reach Tune (and so schedulers and the dashboard) as
soon as they are ready. What the finished sweep comes to is `sweep.summary`'s; its console
tables are `sweep.tables`'."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import ray
from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import ASHAScheduler

from tdmpc_ray.atomic import write_json
from tdmpc_ray.config import build_config
from tdmpc_ray.evaluate.report import save_json
from tdmpc_ray.resources import (
    available,
    capacity,
    fit_workers,
    plan_sweep,
    state_api_reachable,
)
from tdmpc_ray.shared_paths import check_shared_paths
from tdmpc_ray.sweep.spec import SweepSpec, check_trial_data_and_teachers
from tdmpc_ray.sweep.summary import RUN_FILE, summarize, write_curves
from tdmpc_ray.train.config import TrainConfig
from tdmpc_ray.train.evaluation import PeriodicEvaluation
from tdmpc_ray.train.trainer import checked_config, training_run

log = logging.getLogger(__name__)


class EvaluateAndReport(PeriodicEvaluation):
    """A trial's periodic evaluation (`train.evaluation.PeriodicEvaluation`, the one `train`
    runs) that also forwards Train reports to Tune, each with `run_dir` (the trial's run folder
    relative to the experiment folder: run.json, checkpoints, evals/). Each finished evaluation
    is reported once, on the first report after it finished (several at once: a row each), with
    its score, interval and IQM, per-task scores, `eval_step` and `eval_file`. A report without
    an evaluation carries no score at all (ASHA skips such rows)."""

    def __init__(self, cfg: TrainConfig, run_dir: str):
        super().__init__(cfg)
        self.tune = TuneReportCallback()
        self.run_dir = run_dir

    def publish(self, run_context, metrics: dict, checkpoint, finished: list[dict]) -> None:
        finished = [self._relative(evaluation) for evaluation in finished]
        where = {"step": int(metrics.get("step", 0)), "run_dir": self.run_dir}
        for evaluation in finished[:-1]:
            self.tune.after_report(run_context, [{**where, **evaluation}], None)
        row = {**metrics, **where, **(finished[-1] if finished else {})}
        self.tune.after_report(run_context, [row], checkpoint)

    def _relative(self, evaluation: dict) -> dict:
        """`evaluation` with its `eval_file` named relative to the experiment folder."""
        if "eval_file" not in evaluation:
            return evaluation
        name = Path(evaluation["eval_file"]).name
        return {**evaluation, "eval_file": f"{self.run_dir}/evals/{name}"}


def run_trial(
    config: dict, recipes: dict[str, dict] | None = None, trial_cpus: float = 0.0
) -> None:
    """Tune function: one training run of `config` (TrainConfig fields, and the name of one of
    the spec's `recipes` when it has them), recorded in `<trial name>/train/run.json`, its worker
    CPUs fitted beside `trial_cpus` as the sweep planned them; a trial without distillation runs
    without a teacher."""
    config = dict(config)
    if recipes:
        config.update(recipes[config.pop("recipe")])
    cfg = fit_workers(build_config(TrainConfig, None, config), capacity(), reserved=trial_cpus)
    trial = tune.get_context().get_trial_name()
    cfg = dataclasses.replace(cfg, out=f"{cfg.out}/{trial}", name="train")
    if not cfg.distilling:
        cfg = dataclasses.replace(cfg, teacher=None)
    cfg = checked_config(cfg)
    evaluation = EvaluateAndReport(cfg, f"{trial}/{cfg.run_name()}")
    with training_run(cfg, evaluation=evaluation) as (trainer, record):
        save_json(f"{cfg.out}/{cfg.run_name()}/{RUN_FILE}", {**record, "recipe": cfg.recipe()})
        trainer.fit()


def _param_space(spec: SweepSpec, experiment: str) -> dict:
    """Tune's search space: the base settings, the searched ones, and where trials store runs."""
    space = {**spec.base, "out": experiment}
    if spec.recipes:
        space["recipe"] = tune.grid_search(list(spec.recipes))
    for key, dist in spec.space.items():
        kind, values = next(iter(dist.items()))
        space[key] = {
            "grid": lambda v: tune.grid_search(v),
            "choice": lambda v: tune.choice(v),
            "uniform": lambda v: tune.uniform(*v),
            "loguniform": lambda v: tune.loguniform(*v),
            "randint": lambda v: tune.randint(*v),
        }[kind](values)
    return space


@contextlib.contextmanager
def shared_teachers(spec: SweepSpec) -> Iterator[None]:
    """The service (every replica) of each distinct teacher of the sweep, held for the block
    (each teacher was checked, and a published name fetched, by `check_trial_data_and_teachers`;
    its sha256 is computed once here)."""
    specs = dict.fromkeys(c.resolved().teacher_spec() for c in spec.trial_configs() if c.distilling)
    with contextlib.ExitStack() as stack:
        for teacher in specs:
            stack.enter_context(teacher.serve())
        yield


def asha(options: dict) -> ASHAScheduler:
    """ASHA on `normalized_score` at the steps evaluated (`eval_step`). Reports without an
    evaluation carry no score: ASHA skips them, and `tune_environment` turns off Tune's strict
    check that every report has the scheduler's metric while the sweep runs."""
    return ASHAScheduler(time_attr="eval_step", metric="normalized_score", mode="max", **options)


@contextlib.contextmanager
def tune_environment() -> Iterator[None]:
    """The settings Tune reads from the environment of the process running `Tuner.fit` (its
    controller), set for the block only and restored after: no strict metric check (reports
    without an evaluation carry no score, see `asha`) and results saved every 5 s, so they reach
    the dashboard sooner (unless TUNE_GLOBAL_CHECKPOINT_S is set already)."""
    settings = {
        "TUNE_DISABLE_STRICT_METRIC_CHECKING": "1",
        "TUNE_GLOBAL_CHECKPOINT_S": os.environ.get("TUNE_GLOBAL_CHECKPOINT_S", "5"),
    }
    saved = {name: os.environ.get(name) for name in settings}
    os.environ.update(settings)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def run_sweep(spec: SweepSpec, resume: bool = False, verbose: int = 1) -> dict:
    """Run (or resume) the sweep; returns the trials sorted by score, the best student,
    `errors` (trial -> first line of its error) and `unfinished` (trials an interrupt left).
    Inputs and resources are checked before any trial starts. `verbose` is Tune's console
    verbosity (0: silent)."""
    check_trial_data_and_teachers(spec)
    if not ray.is_initialized():
        ray.init(logging_level=logging.WARNING)
    inputs = {
        (k, v) for c in spec.trial_configs() for k, v in (("data", c.data), ("teacher", c.teacher))
    }
    for kind, path in sorted(pair for pair in inputs if pair[1]):
        check_shared_paths({kind: path})
    check_shared_paths({}, {"storage_path": spec.storage_path})
    if not state_api_reachable():
        log.warning(
            "the cluster has no State API (Ray's dashboard is off): the workers of a trial that "
            "Tune stops early keep their CPUs, and later trials may wait for them; start Ray "
            "with its dashboard"
        )
    concurrency = plan_sweep(
        spec.trial_configs(), spec.trial_cpus, spec.max_concurrent_trials, capacity(), available()
    )
    storage = (
        spec.storage_path if "://" in spec.storage_path else str(Path(spec.storage_path).resolve())
    )
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, recipes=spec.recipes, trial_cpus=spec.trial_cpus),
        {"CPU": spec.trial_cpus},
    )
    experiment = f"{storage.rstrip('/')}/{spec.name}"
    options = {k: v for k, v in (spec.scheduler or {}).items() if k != "type"}
    scheduler = asha(options) if spec.scheduler is not None else None
    if resume and tune.Tuner.can_restore(experiment):
        tuner = tune.Tuner.restore(experiment, trainable=trainable, resume_errored=True)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space=_param_space(spec, experiment),
            tune_config=tune.TuneConfig(
                num_samples=spec.num_samples,
                scheduler=scheduler,
                max_concurrent_trials=concurrency,
            ),
            run_config=tune.RunConfig(name=spec.name, storage_path=storage, verbose=verbose),
        )
    with shared_teachers(spec), tune_environment():
        grid = tuner.fit()
    analysis = tune.ExperimentAnalysis(grid.experiment_path, storage_filesystem=grid.filesystem)
    statuses = {Path(t.path).name: t.status for t in analysis.trials}
    summary = summarize(grid, spec, experiment, statuses)
    if "://" not in experiment:
        write_json(Path(experiment) / "summary.json", summary)
        write_curves(Path(experiment) / "curves.csv", grid, summary["space"])
    errors = {Path(r.path).name: error_line(r.error) for r in grid if r.error is not None}
    return {**summary, "errors": errors}


def error_line(err: BaseException) -> str:
    """One line for a trial's error: `Exception: message` of the innermost error inside Tune's,
    Ray's and Ray Train's wrappers (read off its traceback text where only that crossed over)."""
    while True:
        failures = getattr(err, "worker_failures", None) or {}
        inner = (
            (failures[min(failures)] if failures else None)
            or getattr(err, "controller_failure", None)
            or getattr(err, "cause", None)
            or err.__cause__
        )
        if inner is None or inner is err:
            break
        err = inner
    lines = [line for line in str(err).strip().splitlines() if line.strip()]
    if any(line.startswith("Traceback") for line in lines):
        return [line for line in lines if not line[0].isspace()][-1]
    return f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__
