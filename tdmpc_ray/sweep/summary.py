"""A sweep's results as Tune left them, summed up: each trial's last evaluation with its interval
and its paired comparison with scratch, groups over seeds (`summary.json`), and every trial's
learning curves (`curves.csv`)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

from tdmpc_ray.atomic import atomic_path
from tdmpc_ray.evaluate.report import load_json
from tdmpc_ray.sweep.scratch import (
    against_scratch,
    between_groups,
    is_scratch,
    pooled_over_seeds,
)
from tdmpc_ray.sweep.spec import SweepSpec
from tdmpc_ray.train.loop import STUDENT_FILE
from tdmpc_ray.train.losses import DISTILL_TERMS

RUN_FILE = "run.json"
"""Each trial's run record (its effective config and recipe), in its run folder."""

CURVE_METRICS = (
    "total_loss",
    "consistency_loss",
    "reward_loss",
    "value_loss",
    "pi_loss",
    *(term.metric for term in DISTILL_TERMS.values()),
    "updates_per_s",
)
SCORE_METRICS = (
    "normalized_score",
    "normalized_score_low",
    "normalized_score_high",
    "iqm",
    "iqm_low",
    "iqm_high",
)


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


def summarize(grid, spec: SweepSpec, experiment: str, statuses: dict[str, str]) -> dict:
    """Trials (config, status, step, the last evaluation's scores with intervals, speed, and the
    paired comparison with the sweep's scratch trial) sorted by score, the best student, the
    groups over seeds (`group_over_seeds`) and `unfinished`: how many of the spec's trials
    neither finished nor failed (an interrupted sweep). `statuses` is Tune's status of each
    trial by folder name."""
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
        evals = {
            step: row["eval_file"]
            for step, row in evaluations.items()
            if isinstance(row.get("eval_file"), str)
        }
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
            "status": statuses.get(Path(result.path).name, "ERROR" if result.error else "PENDING"),
            "step": metrics.get("step"),
            "eval_step": int(max(evaluations)) if evaluations else None,
            **{k: last.get(k) if _finite(last.get(k)) else None for k in SCORE_METRICS},
            "eval_episodes": last.get("eval_episodes"),
            "updates_per_s": metrics.get("updates_per_s"),
            "student": f"{checkpoint}/{STUDENT_FILE}" if checkpoint else None,
            "run_dir": run_dir,
            "scratch": is_scratch(result.config or {}, run),
            "eval_files": {str(step): file for step, file in evals.items()},
        }
        trials.append(trial)
        records.append(
            {"trial": trial["trial"], "config": config, "scratch": trial["scratch"], "evals": evals}
        )
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
        "unfinished": len(spec.trial_configs()) * spec.num_samples
        - sum(t["status"] in ("TERMINATED", "ERROR") for t in trials),
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
        group = {
            **dict(zip(keys, values, strict=True)),
            "n": n,
            "mean": mean,
            "std": std,
            "min": min(scores, default=None),
            "max": max(scores, default=None),
        }
        if pooled is not None:
            entry = pooled.get(values, {})
            group["pooled"] = entry.get("score")
            group["vs_scratch"] = entry.get("vs_scratch")
        groups.append(group)
    return sorted(groups, key=lambda g: -math.inf if g["mean"] is None else g["mean"], reverse=True)
