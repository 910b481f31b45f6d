"""Each trial of a sweep against the sweep's scratch trial, and every two groups of seeds against
each other: paired differences and P(improvement) on the same evaluation episodes, per trial and
pooled over seeds.

A trial's baseline is the scratch trial (no distillation) that agrees with it on every searched
key except the distillation settings (`DISTILL_KEYS`), seed included: trials of one seed evaluate
on the same env seeds (the evaluation seed is the training seed), so their episodes pair. Both
are compared at the latest step both evaluated. Pooled over seeds, each seed is one run: its
mean return per task is the unit of the stratified bootstrap (`compare.run_means`, rliable's
runs), kept paired with its scratch partner's. Light to import (no Ray): the sweep summary and
the dashboard share it.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence

from tdmpc_ray.evaluate.compare import compare_results, run_means
from tdmpc_ray.evaluate.stats import score_summary
from tdmpc_ray.train.losses import DISTILL_SETTINGS, DISTILL_TERMS

COEFFICIENTS = tuple(term.coef for term in DISTILL_TERMS.values())
"""The coefficient key of every distillation term (the registry's)."""
DISTILL_KEYS = (
    "recipe",
    "teacher",
    "teacher_gpus",
    "teacher_replicas",
    "teacher_sha256",
    *COEFFICIENTS,
    *DISTILL_SETTINGS,
)
"""Settings a scratch trial ignores: a trial and its baseline may differ in these."""
NAMES = ("trial", "scratch")

Trial = Mapping
"""`{"trial": id, "config": {searched key: value}, "scratch": bool, "evals": {step: file}}`."""
Load = Callable[[str], dict]


def checked_result(value: object, name: str) -> dict:
    """`value` if it is an evaluation result the comparisons can use (a non-empty `tasks`
    mapping whose rows hold finite `returns` and their `env_seeds`), else a one-line
    ValueError naming `name` (an evaluation file may be hostile or broken)."""
    tasks = value.get("tasks") if isinstance(value, dict) else None
    if not isinstance(tasks, dict) or not tasks:
        raise ValueError(f"{name}: not an evaluation result (no per-task returns)")
    for task, row in tasks.items():
        returns = row.get("returns") if isinstance(row, dict) else None
        if not isinstance(returns, list) or not isinstance(row.get("env_seeds"), list):
            raise ValueError(f"{name}: task {task!r} has no per-episode returns and env seeds")
        if not all(_number(r) for r in returns):
            raise ValueError(f"{name}: task {task!r} has returns that are not finite numbers")
    return value


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _checked(load: Load) -> Load:
    """`load` whose results are checked (`checked_result`)."""
    return lambda name: checked_result(load(name), name)


def is_scratch(config: Mapping, run: Mapping | None = None) -> bool:
    """Whether a trial trains without distillation: by its run record (`run.json`, whose
    `recipe` is `scratch`) when there is one, else by its Tune config (the recipe named
    `scratch`, or no recipe and every distillation coefficient it sets 0)."""
    if run is not None and "recipe" in run:
        return run["recipe"] == "scratch"
    if "recipe" in config:
        return config["recipe"] == "scratch"
    coefficients = [config[k] for k in COEFFICIENTS if k in config]
    return bool(coefficients) and not any(coefficients)


def _scratch_partner(
    trial: Trial, scratch: Sequence[Trial], keys: Sequence[str]
) -> tuple[str, int, str, str] | None:
    """The scratch trial that agrees with `trial` on every searched key but the distillation
    settings (so also on `seed`), the latest step both evaluated, and both evaluation files
    there; None without a partner or a common step."""
    compared = [k for k in keys if k not in DISTILL_KEYS]
    for baseline in scratch:
        if all(trial["config"].get(k) == baseline["config"].get(k) for k in compared):
            common = set(trial["evals"]) & set(baseline["evals"])
            if not common:
                return None
            step = max(common)
            return baseline["trial"], step, trial["evals"][step], baseline["evals"][step]
    return None


def _compare(
    label: str, partners: list[tuple[str, int, str, str]], load: Load, cache: dict | None = None
) -> dict:
    """The paired comparison with the scratch partners, pooled (or why there is none); `cache`
    keeps comparisons by the files compared."""
    key = tuple((p[2], p[3]) for p in partners)
    if cache is not None and key in cache:
        return cache[key]
    out = {"scratch": [p[0] for p in partners], "steps": sorted({p[1] for p in partners})}
    try:
        report = compare_results([(load(p[2]), load(p[3])) for p in partners], NAMES)
    except (ValueError, OSError, KeyError) as err:
        return {**out, "error": f"{label}: {err}"}
    fields = ("difference", "probability_of_improvement", "verdict", "episodes_per_task")
    out.update(pairs=len(partners), **{k: report[k] for k in fields})
    if cache is not None:
        cache[key] = out
    return out


def against_scratch(
    trials: Sequence[Trial], keys: Sequence[str], load: Load, cache: dict | None = None
) -> dict[str, dict]:
    """Per trial id, its paired comparison with the scratch trial of the same seed (absent for
    scratch trials and for trials without a matching scratch trial or common evaluated step).
    `cache` (kept by the caller) saves recomputing comparisons of the same files."""
    scratch, load = [t for t in trials if t["scratch"]], _checked(load)
    comparisons = {}
    for trial in trials:
        partner = None if trial["scratch"] else _scratch_partner(trial, scratch, keys)
        if partner:
            comparisons[trial["trial"]] = _compare(trial["trial"], [partner], load, cache)
    return comparisons


def pooled_over_seeds(
    trials: Sequence[Trial], keys: Sequence[str], load: Load
) -> dict[tuple, dict]:
    """Per group of trials that differ only in `seed` (keyed by the other searched keys' values
    as strings): `score` (the seeds' final evaluations pooled per task: the normalized score
    and IQM with their intervals) and `vs_scratch` (the paired comparison pooled over the seeds
    that have a scratch partner; absent without one), both over runs: each seed's mean return
    per task (`compare.run_means`), `runs` of them."""
    others, load = [k for k in keys if k != "seed"], _checked(load)
    groups: dict[tuple, list[Trial]] = {}
    for trial in trials:
        groups.setdefault(tuple(str(trial["config"].get(k)) for k in others), []).append(trial)
    scratch = [t for t in trials if t["scratch"]]
    pooled = {}
    for group, members in groups.items():
        entry = {}
        finals = [t["evals"][max(t["evals"])] for t in members if t["evals"]]
        try:
            if finals:
                results = [load(f) for f in finals]
                episodes = min(len(r["returns"]) for res in results for r in res["tasks"].values())
                entry["score"] = {
                    **score_summary(run_means(results)),
                    "runs": len(results),
                    "episodes_per_task": episodes,
                }
        except (ValueError, OSError, KeyError) as err:
            entry["score_error"] = str(err)
        partners = [
            p for t in members if not t["scratch"] and (p := _scratch_partner(t, scratch, keys))
        ]
        if partners:
            entry["vs_scratch"] = _compare(", ".join(t["trial"] for t in members), partners, load)
        pooled[group] = entry
    return pooled


def between_groups(trials: Sequence[Trial], keys: Sequence[str], load: Load) -> list[dict]:
    """Every two groups of trials that differ only in `seed` (`A`, `B`: their other searched
    keys), compared pooled over the seeds both ran, each seed at the latest step both of its
    trials evaluated: A - B with its paired interval, P(A > B) and the verdict, each seed one
    run (`compare.run_means`). Empty when `seed` is not searched."""
    if "seed" not in keys:
        return []
    others, load = [k for k in keys if k != "seed"], _checked(load)
    groups: dict[tuple, dict] = {}
    for trial in trials:
        if trial["evals"]:
            group = groups.setdefault(tuple(str(trial["config"].get(k)) for k in others), {})
            group[str(trial["config"].get("seed"))] = trial
    pairs = []
    for (a, a_seeds), (b, b_seeds) in itertools.combinations(groups.items(), 2):
        partners = []
        for seed in [s for s in a_seeds if s in b_seeds]:
            first, second = a_seeds[seed], b_seeds[seed]
            common = set(first["evals"]) & set(second["evals"])
            if common:
                step = max(common)
                partners.append((seed, step, first["evals"][step], second["evals"][step]))
        if not partners:
            continue
        entry = {
            "a": dict(zip(others, a, strict=True)),
            "b": dict(zip(others, b, strict=True)),
            "seeds": [p[0] for p in partners],
            "steps": sorted({p[1] for p in partners}),
        }
        try:
            report = compare_results([(load(p[2]), load(p[3])) for p in partners])
        except (ValueError, OSError, KeyError) as err:
            entry["error"] = f"{'/'.join(a)} vs {'/'.join(b)}: {err}"
        else:
            fields = (
                "difference",
                "probability_of_improvement",
                "verdict",
                "episodes_per_task",
                "tasks",
            )
            entry.update(
                scores={"a": report["a"], "b": report["b"]}, **{k: report[k] for k in fields}
            )
        pairs.append(entry)
    return pairs
