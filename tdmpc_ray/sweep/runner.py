"""Run a sweep spec with Ray Tune, Train inside Tune: each trial is a Tune function that builds
and fits a TorchTrainer, while checkpoints are evaluated asynchronously and their scores reach
Tune (and so schedulers and the dashboard) as soon as they are ready."""

from __future__ import annotations

import csv
import dataclasses
import logging
import math
import os
from pathlib import Path

import ray
from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import ASHAScheduler

from tdmpc_ray.atomic import atomic_path, write_json
from tdmpc_ray.config import build_config
from tdmpc_ray.resources import capacity, fit_workers, plan_sweep
from tdmpc_ray.sweep.spec import SweepSpec, check_inputs
from tdmpc_ray.train.config import TrainConfig
from tdmpc_ray.train.loop import STUDENT_FILE, validate_checkpoint
from tdmpc_ray.train.teacher import get_teacher
from tdmpc_ray.train.trainer import build_trainer

log = logging.getLogger(__name__)
_validate = ray.remote(num_cpus=0, scheduling_strategy="DEFAULT")(validate_checkpoint)


class EvaluateAndReport(TuneReportCallback):
    """Forwards Train reports to Tune; evaluates checkpoints at eval steps in background tasks and
    adds the newest finished score (`normalized_score`, `score/<task>`, `eval_step`) to every
    report after it; the last report waits for every evaluation. Before the first score,
    `normalized_score` is 0 (the lowest possible). It runs in the Train controller."""

    def __init__(self, cfg: TrainConfig):
        super().__init__()
        self.eval_freq = cfg.eval_freq
        self.steps = cfg.steps
        self.kwargs = cfg.eval_kwargs()
        self.pending: dict[ray.ObjectRef, int] = {}
        self.latest: dict = {"normalized_score": 0.0}

    def after_report(self, run_context, metrics, checkpoint):
        step = int(metrics[0].get("step", 0))
        if (
            checkpoint is not None
            and self.eval_freq
            and (step % self.eval_freq == 0 or step == self.steps)
        ):
            self.pending[_validate.remote(checkpoint, **self.kwargs)] = step
        self.collect(timeout=None if step >= self.steps else 0)
        super().after_report(run_context, [{**metrics[0], **self.latest}], checkpoint)

    def collect(self, timeout: float | None) -> None:
        """Take in finished evaluations (waiting up to `timeout` seconds; None: all of them)."""
        if not self.pending:
            return
        refs = list(self.pending)
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout)
        for ref in sorted(ready, key=self.pending.get):
            step = self.pending.pop(ref)
            try:
                self.latest = {**ray.get(ref), "eval_step": step}
            except ray.exceptions.RayError as err:
                log.error(
                    "evaluation of the step-%d checkpoint failed: %s",
                    step,
                    str(err).splitlines()[0],
                )
                self.latest = {
                    **self.latest,
                    "eval_error": f"step {step}: {str(err).splitlines()[0]}",
                }


def run_trial(
    config: dict, recipes: dict[str, dict] | None = None, trial_cpus: float = 0.0
) -> None:
    """Tune function: one training run of `config` (TrainConfig fields, and the name of one of
    the spec's `recipes` when it has them), its worker CPUs fitted beside `trial_cpus` as the
    sweep planned them."""
    config = dict(config)
    if recipes:
        config.update(recipes[config.pop("recipe")])
    cfg = fit_workers(build_config(TrainConfig, None, config), capacity(), reserved=trial_cpus)
    cfg = dataclasses.replace(
        cfg, out=f"{cfg.out}/{tune.get_context().get_trial_name()}", name="train"
    )
    trainer, _record, _teacher = build_trainer(cfg, [EvaluateAndReport(cfg)], validate=False)
    trainer.fit()


def _param_space(spec: SweepSpec, experiment: str) -> dict:
    """Tune's search space: the base settings, the searched ones, and where trials store runs."""
    space = {**spec.base, "out": experiment}
    if spec.recipes:
        space["recipe"] = tune.grid_search(list(spec.recipes))
    for key, dist in spec.space.items():
        kind, values = next(iter(dist.items()))
        space[key] = {
            "grid": lambda v: tune.grid_search(v), "choice": lambda v: tune.choice(v),
            "uniform": lambda v: tune.uniform(*v), "loguniform": lambda v: tune.loguniform(*v),
            "randint": lambda v: tune.randint(*v),
        }[kind](values)  # fmt: skip
    return space


def _shared_teachers(spec: SweepSpec) -> list:
    """One teacher actor per distinct teacher of the sweep, held for its whole run (each teacher
    was checked, and a published name fetched, by `check_inputs`)."""
    configs = [c.resolved() for c in spec.trial_configs() if c.distilling]
    teachers = {(c.teacher, c.task_set): c.teacher_gpus for c in configs}
    return [get_teacher(path, task, gpus) for (path, task), gpus in sorted(teachers.items())]


def run_sweep(spec: SweepSpec, resume: bool = False, verbose: int = 1) -> dict:
    """Run (or resume) the sweep; returns the trials sorted by score, the best student and
    `errors` (trial -> first line of its error). Inputs and resources are checked before any
    trial starts. `verbose` is Tune's console verbosity (0: silent)."""
    check_inputs(spec)
    if not ray.is_initialized():
        ray.init(logging_level=logging.WARNING)
    concurrency = plan_sweep(
        spec.trial_configs(), spec.trial_cpus, spec.max_concurrent_trials, capacity()
    )
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "5")  # results reach the dashboard sooner
    teachers = _shared_teachers(spec)
    storage = (
        spec.storage_path if "://" in spec.storage_path else str(Path(spec.storage_path).resolve())
    )
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, recipes=spec.recipes, trial_cpus=spec.trial_cpus),
        {"CPU": spec.trial_cpus},
    )
    experiment = f"{storage.rstrip('/')}/{spec.name}"
    if resume and tune.Tuner.can_restore(experiment):
        tuner = tune.Tuner.restore(experiment, trainable=trainable, resume_errored=True)
    else:
        scheduler = None
        if spec.scheduler is not None:
            options = {k: v for k, v in spec.scheduler.items() if k != "type"}
            scheduler = ASHAScheduler(
                time_attr="step", metric="normalized_score", mode="max", **options
            )
        tuner = tune.Tuner(
            trainable,
            param_space=_param_space(spec, experiment),
            tune_config=tune.TuneConfig(
                num_samples=spec.num_samples,
                scheduler=scheduler,
                max_concurrent_trials=concurrency,
            ),  # fmt: skip
            run_config=tune.RunConfig(name=spec.name, storage_path=storage, verbose=verbose),
        )
    grid = tuner.fit()
    del teachers
    summary = summarize(grid, spec, experiment)
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


CURVE_METRICS = ("total_loss", "consistency_loss", "reward_loss", "value_loss", "pi_loss",
                 "distill_loss", "latent_distill_loss", "value_distill_loss",
                 "policy_distill_loss", "updates_per_s")  # fmt: skip


def write_curves(path: Path, grid, keys: list[str]) -> None:
    """Learning curves of every trial as a long CSV (trial, searched keys, step, metric, value):
    the training metrics at each report and `normalized_score` at the step it evaluated."""
    records = []
    for result in grid:
        trial = [Path(result.path).name, *((result.config or {}).get(k) for k in keys)]
        history = result.metrics_dataframe
        scored = set()
        for row in [] if history is None else history.to_dict("records"):
            for metric in CURVE_METRICS:
                if isinstance(row.get(metric), (int, float)) and math.isfinite(row[metric]):
                    records.append([*trial, int(row["step"]), metric, f"{row[metric]:.6g}"])
            step = row.get("eval_step")
            if isinstance(step, (int, float)) and math.isfinite(step) and step not in scored:
                scored.add(step)
                records.append([*trial, int(step), "normalized_score", f"{row['normalized_score']:.6g}"])
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["trial", *keys, "step", "metric", "value"])
        writer.writerows(records)


def summarize(grid, spec: SweepSpec, experiment: str) -> dict:
    """Trials (config, status, step, score, speed) sorted by score, and the best student."""
    keys = spec.searched_keys()
    trials = []
    for result in grid:
        metrics = result.metrics or {}
        checkpoint = metrics.get("checkpoint_path")
        trials.append({
            "trial": Path(result.path).name,
            **{k: (result.config or {}).get(k) for k in keys},
            "status": "ERROR" if result.error else "TERMINATED",
            "step": metrics.get("step"),
            "normalized_score": metrics.get("normalized_score") if "eval_step" in metrics else None,
            "updates_per_s": metrics.get("updates_per_s"),
            "student": f"{checkpoint}/{STUDENT_FILE}" if checkpoint else None,
        })  # fmt: skip
    trials.sort(
        key=lambda t: -1 if t["normalized_score"] is None else t["normalized_score"], reverse=True
    )
    best = trials[0] if trials and trials[0]["normalized_score"] is not None else None
    summary = {"experiment": experiment, "trials": trials, "best": best, "space": keys}
    return {**summary, "groups": group_over_seeds(summary)}


def group_over_seeds(summary: dict) -> list[dict]:
    """Scores of trials that differ only in `seed`, pooled: n, mean, sample std, min, max (empty
    when seed is not searched). Best mean first."""
    keys = [k for k in summary["space"] if k != "seed"]
    if "seed" not in summary["space"]:
        return []
    pooled: dict[tuple, list[float]] = {}
    for t in summary["trials"]:
        scores = pooled.setdefault(tuple(str(t.get(k)) for k in keys), [])
        if t["normalized_score"] is not None:
            scores.append(t["normalized_score"])
    groups = []
    for values, scores in pooled.items():
        n = len(scores)
        mean = sum(scores) / n if n else None
        std = (sum((s - mean) ** 2 for s in scores) / (n - 1)) ** 0.5 if n > 1 else None
        groups.append({**dict(zip(keys, values, strict=True)), "n": n, "mean": mean, "std": std,
                       "min": min(scores, default=None), "max": max(scores, default=None)})  # fmt: skip
    return sorted(groups, key=lambda g: -math.inf if g["mean"] is None else g["mean"], reverse=True)


def format_table(summary: dict) -> str:
    """The trials as a fixed-width table, best first."""
    columns = ["trial", *summary["space"], "status", "step", "normalized_score", "updates_per_s"]
    return _fixed_width(columns, summary["trials"])


def format_groups(summary: dict) -> str:
    """Scores pooled over seeds (`group_over_seeds`) as a fixed-width table."""
    columns = [k for k in summary["space"] if k != "seed"] + ["n", "mean", "std", "min", "max"]
    return _fixed_width(columns, summary["groups"])


def _fixed_width(columns: list[str], records: list[dict]) -> str:
    rows = [[_cell(r.get(c)) for c in columns] for r in records]
    widths = (
        [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(columns)]
        if rows
        else [len(c) for c in columns]
    )
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True))  # noqa: E731
    return "\n".join([line(columns), line(["-" * w for w in widths]), *map(line, rows)])


def _cell(value) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)
