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
from tdmpc_ray.evaluate.report import interval, load_json, save_json
from tdmpc_ray.evaluate.stats import Interval
from tdmpc_ray.resources import available, capacity, fit_workers, plan_sweep
from tdmpc_ray.sweep.scratch import (
    against_scratch,
    between_groups,
    is_scratch,
    pooled_over_seeds,
)
from tdmpc_ray.sweep.spec import SweepSpec, check_inputs
from tdmpc_ray.train.config import TrainConfig
from tdmpc_ray.train.loop import STUDENT_FILE, validate_checkpoint
from tdmpc_ray.train.losses import DISTILL_TERMS
from tdmpc_ray.train.teacher import teacher_pool
from tdmpc_ray.train.trainer import build_trainer

log = logging.getLogger(__name__)
RUN_FILE = "run.json"
_validate = ray.remote(num_cpus=0, scheduling_strategy="DEFAULT")(validate_checkpoint)


class EvaluateAndReport(TuneReportCallback):
    """Forwards Train reports to Tune, each with `run_dir` (the trial's run folder relative to
    the experiment folder: run.json, checkpoints, evals/). Checkpoints at eval steps are
    evaluated in background tasks (`validate_checkpoint`, which keeps the whole result in
    `evals/step_NNNNNNNNN.json`); each finished evaluation is reported once, on the first report
    after it finished (several at once: a row each), with its score, interval and IQM, per-task
    scores, `eval_step` and `eval_file`. A report without an evaluation carries no score at all
    (ASHA skips such rows). The last report waits for every evaluation. It runs in the Train
    controller."""

    def __init__(self, cfg: TrainConfig, run_dir: str):
        super().__init__()
        self.eval_freq = cfg.eval_freq
        self.steps = cfg.steps
        self.kwargs = cfg.eval_kwargs()
        self.run_dir = run_dir
        self.pending: dict[ray.ObjectRef, int] = {}
        self.finished: list[dict] = []

    def after_report(self, run_context, metrics, checkpoint):
        step = int(metrics[0].get("step", 0))
        if (
            checkpoint is not None
            and self.eval_freq
            and (step % self.eval_freq == 0 or step == self.steps)
        ):
            self.pending[_validate.remote(checkpoint, **self.kwargs)] = step
        self.collect(timeout=None if step >= self.steps else 0)
        finished, self.finished = self.finished, []
        where = {"step": step, "run_dir": self.run_dir}
        for evaluation in finished[:-1]:
            super().after_report(run_context, [{**where, **evaluation}], None)
        row = {**metrics[0], **where, **(finished[-1] if finished else {})}
        super().after_report(run_context, [row], checkpoint)

    def collect(self, timeout: float | None) -> None:
        """Take in finished evaluations (waiting up to `timeout` seconds; None: all of them)."""
        if not self.pending:
            return
        refs = list(self.pending)
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout)
        for ref in sorted(ready, key=self.pending.get):
            step = self.pending.pop(ref)
            try:
                metrics = ray.get(ref)
            except ray.exceptions.RayError as err:
                first = str(err).splitlines()[0]
                log.error("evaluation of the step-%d checkpoint failed: %s", step, first)
                self.finished.append({"eval_error": f"step {step}: {first}"})
                continue
            name = Path(metrics.pop("eval_file")).name
            file = f"{self.run_dir}/evals/{name}"
            self.finished.append({**metrics, "eval_step": step, "eval_file": file})


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
    run_dir = f"{trial}/{cfg.run_name()}"
    callback = EvaluateAndReport(cfg, run_dir)
    trainer, record, _teacher = build_trainer(cfg, [callback], validate=False)
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
            "grid": lambda v: tune.grid_search(v), "choice": lambda v: tune.choice(v),
            "uniform": lambda v: tune.uniform(*v), "loguniform": lambda v: tune.loguniform(*v),
            "randint": lambda v: tune.randint(*v),
        }[kind](values)  # fmt: skip
    return space


def _shared_teachers(spec: SweepSpec) -> list:
    """The service (every replica) of each distinct teacher of the sweep, held for its whole run
    (each teacher was checked, and a published name fetched, by `check_inputs`; its sha256 is
    computed once here)."""
    configs = [c.resolved() for c in spec.trial_configs() if c.distilling]
    teachers = {(c.teacher, c.teacher_sha256, c.task_set, c.teacher_replicas, c.optim.precision):
                c.teacher_gpus for c in configs}  # fmt: skip
    return [teacher_pool(path, digest, task_set, gpus, replicas, precision)
            for (path, digest, task_set, replicas, precision), gpus in sorted(teachers.items())]  # fmt: skip


def asha(options: dict) -> ASHAScheduler:
    """ASHA on `normalized_score` at the steps evaluated (`eval_step`). Reports without an
    evaluation carry no score: ASHA skips them, and Tune's strict check that every report has
    the scheduler's metric is turned off for this process (TUNE_DISABLE_STRICT_METRIC_CHECKING)."""
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    return ASHAScheduler(time_attr="eval_step", metric="normalized_score", mode="max", **options)


def run_sweep(spec: SweepSpec, resume: bool = False, verbose: int = 1) -> dict:
    """Run (or resume) the sweep; returns the trials sorted by score, the best student and
    `errors` (trial -> first line of its error). Inputs and resources are checked before any
    trial starts. `verbose` is Tune's console verbosity (0: silent)."""
    check_inputs(spec)
    if not ray.is_initialized():
        ray.init(logging_level=logging.WARNING)
    concurrency = plan_sweep(
        spec.trial_configs(), spec.trial_cpus, spec.max_concurrent_trials, capacity(), available()
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
                 *(term.metric for term in DISTILL_TERMS.values()), "updates_per_s")  # fmt: skip
SCORE_METRICS = ("normalized_score", "normalized_score_low", "normalized_score_high", "iqm",
                 "iqm_low", "iqm_high")  # fmt: skip


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _history(result) -> list[dict]:
    """A trial's reported rows, oldest first."""
    history = result.metrics_dataframe
    return [] if history is None else history.to_dict("records")


def _evaluations(rows: list[dict]) -> dict[int, dict]:
    """The rows that report an evaluation, by the step it evaluated."""
    return {
        int(row["eval_step"]): row
        for row in rows
        if _finite(row.get("eval_step")) and _finite(row.get("normalized_score"))
    }


def write_curves(path: Path, grid, keys: list[str]) -> None:
    """Learning curves of every trial as a long CSV (trial, searched keys, step, metric, value):
    the training metrics at each report, and the scores with their interval bounds at the step
    they evaluated."""
    records = []
    for result in grid:
        trial = [Path(result.path).name, *((result.config or {}).get(k) for k in keys)]
        rows = _history(result)
        for row in rows:
            for metric in CURVE_METRICS:
                if _finite(row.get(metric)):
                    records.append([*trial, int(row["step"]), metric, f"{row[metric]:.6g}"])
        for step, row in sorted(_evaluations(rows).items()):
            for metric in SCORE_METRICS:
                if _finite(row.get(metric)):
                    records.append([*trial, step, metric, f"{row[metric]:.6g}"])
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["trial", *keys, "step", "metric", "value"])
        writer.writerows(records)


def summarize(grid, spec: SweepSpec, experiment: str) -> dict:
    """Trials (config, status, step, the last evaluation's scores with intervals, speed, and the
    paired comparison with the sweep's scratch trial) sorted by score, the best student, and the
    groups over seeds (`group_over_seeds`)."""
    keys = spec.searched_keys()
    cache: dict[str, dict] = {}

    def load(relative: str) -> dict:
        if relative not in cache:
            cache[relative] = load_json(f"{experiment}/{relative}")
        return cache[relative]

    trials, records = [], []
    for result in grid:
        rows = _history(result)
        evaluations = _evaluations(rows)
        evals = {step: row["eval_file"] for step, row in evaluations.items()
                 if isinstance(row.get("eval_file"), str)}  # fmt: skip
        last = evaluations[max(evaluations)] if evaluations else {}
        metrics = result.metrics or {}
        checkpoint = metrics.get("checkpoint_path")
        run_dir = next((r["run_dir"] for r in rows if isinstance(r.get("run_dir"), str)), None)
        config = {k: (result.config or {}).get(k) for k in keys}
        try:
            run = load(f"{run_dir}/{RUN_FILE}") if run_dir else None
        except (OSError, ValueError):
            run = None
        trial = {
            "trial": Path(result.path).name,
            **config,
            "status": "ERROR" if result.error else "TERMINATED",
            "step": metrics.get("step"),
            "eval_step": int(max(evaluations)) if evaluations else None,
            **{k: last.get(k) if _finite(last.get(k)) else None for k in SCORE_METRICS},
            "eval_episodes": last.get("eval_episodes"),
            "updates_per_s": metrics.get("updates_per_s"),
            "student": f"{checkpoint}/{STUDENT_FILE}" if checkpoint else None,
            "run_dir": run_dir,
            "scratch": is_scratch(result.config or {}, run),
            "eval_files": {str(step): file for step, file in evals.items()},
        }  # fmt: skip
        trials.append(trial)
        records.append({"trial": trial["trial"], "config": config, "scratch": trial["scratch"],
                        "evals": evals})  # fmt: skip
    comparisons = against_scratch(records, keys, load)
    for trial in trials:
        trial["vs_scratch"] = comparisons.get(trial["trial"])
    trials.sort(
        key=lambda t: -1 if t["normalized_score"] is None else t["normalized_score"], reverse=True
    )
    best = trials[0] if trials and trials[0]["normalized_score"] is not None else None
    summary = {
        "experiment": experiment,
        "trials": trials,
        "best": best,
        "space": keys,
        "scratch": [t["trial"] for t in trials if t["scratch"]],
    }
    groups = group_over_seeds(summary, pooled_over_seeds(records, keys, load))
    return {**summary, "groups": groups, "pairs": between_groups(records, keys, load)}


def group_over_seeds(summary: dict, pooled: dict[tuple, dict] | None = None) -> list[dict]:
    """Scores of trials that differ only in `seed`, pooled: n, mean, sample std, min, max of
    the seeds' scores, and from `pooled` (`scratch.pooled_over_seeds`) the score of their
    episodes pooled with its interval and the paired comparison with scratch pooled over
    seeds (empty when seed is not searched). Best mean first."""
    keys = [k for k in summary["space"] if k != "seed"]
    if "seed" not in summary["space"]:
        return []
    scores_by_group: dict[tuple, list[float]] = {}
    for t in summary["trials"]:
        scores = scores_by_group.setdefault(tuple(str(t.get(k)) for k in keys), [])
        if t["normalized_score"] is not None:
            scores.append(t["normalized_score"])
    groups = []
    for values, scores in scores_by_group.items():
        n = len(scores)
        mean = sum(scores) / n if n else None
        std = (sum((s - mean) ** 2 for s in scores) / (n - 1)) ** 0.5 if n > 1 else None
        group = {**dict(zip(keys, values, strict=True)), "n": n, "mean": mean, "std": std,
                 "min": min(scores, default=None), "max": max(scores, default=None)}  # fmt: skip
        if pooled is not None:
            entry = pooled.get(values, {})
            group["pooled"] = entry.get("score")
            group["vs_scratch"] = entry.get("vs_scratch")
        groups.append(group)
    return sorted(groups, key=lambda g: -math.inf if g["mean"] is None else g["mean"], reverse=True)


def format_table(summary: dict) -> str:
    """The trials as a fixed-width table, best first: the last evaluation's score with its 95%
    interval, and A - scratch with its interval and P(A > scratch) where there is a scratch
    trial."""
    columns = ["trial", *summary["space"], "status", "step", "score [95% interval]", "episodes",
               "vs scratch [95% interval]", "P(> scratch)", "updates_per_s"]  # fmt: skip
    rows = [
        {**t, "score [95% interval]": _score_cell(t), "episodes": t.get("eval_episodes"),
         **_scratch_cells(t.get("vs_scratch"), t.get("scratch"))}
        for t in summary["trials"]
    ]  # fmt: skip
    return _fixed_width(columns, rows)


def format_groups(summary: dict) -> str:
    """Scores pooled over seeds (`group_over_seeds`) as a fixed-width table."""
    columns = [k for k in summary["space"] if k != "seed"] + [
        "n", "mean", "std", "min", "max", "pooled score [95% interval]",
        "vs scratch [95% interval]", "P(> scratch)"]  # fmt: skip
    rows = [
        {**g, "pooled score [95% interval]": _score_cell(g.get("pooled")),
         **_scratch_cells(g.get("vs_scratch"), False)}
        for g in summary["groups"]
    ]  # fmt: skip
    return _fixed_width(columns, rows)


def format_pairs(summary: dict) -> str:
    """Every two groups over seeds against each other (`scratch.between_groups`) as a
    fixed-width table: A - B pooled over their common seeds, P(A > B), the verdict."""
    keys = [k for k in summary["space"] if k != "seed"]
    columns = ["A", "B", "seeds", "A - B [95% interval]", "P(A > B)", "verdict"]
    rows = []
    for pair in summary.get("pairs", []):
        row = {"A": "/".join(str(pair["a"][k]) for k in keys),
               "B": "/".join(str(pair["b"][k]) for k in keys), "seeds": len(pair["seeds"])}  # fmt: skip
        if "error" in pair:
            row["verdict"] = "error: " + pair["error"]
        else:
            row.update({"A - B [95% interval]": Interval(**pair["difference"]).format(),
                        "P(A > B)": Interval(**pair["probability_of_improvement"]).format(),
                        "verdict": pair["verdict"]})  # fmt: skip
        rows.append(row)
    return _fixed_width(columns, rows)


def _score_cell(scores: dict | None) -> str | None:
    if not scores or scores.get("normalized_score") is None:
        return None
    return interval(scores, "normalized_score").format()


def _scratch_cells(comparison: dict | None, scratch: bool | None) -> dict:
    """The `vs scratch` and `P(> scratch)` cells: the difference and P(improvement) with their
    intervals, `(scratch)` for the scratch trial itself, the reason when it failed."""
    if scratch:
        return {"vs scratch [95% interval]": "(scratch)"}
    if not comparison:
        return {}
    if "error" in comparison:
        return {"vs scratch [95% interval]": "error: " + comparison["error"]}
    return {
        "vs scratch [95% interval]": Interval(**comparison["difference"]).format(),
        "P(> scratch)": Interval(**comparison["probability_of_improvement"]).format(),
    }


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
