"""Paired comparisons of two agents evaluated on the same environment seeds.

Two evaluation results pair when they ran the same tasks, the same number of episodes per task,
each episode on the same env seed and for the same number of steps: then episode i of a task
differs between the agents only by the agents, and a paired bootstrap (`stats.compare`) cancels
the environment's share of the noise. Anything else is refused with one line naming the first
mismatch. Results of several seeds (independent training runs) pool as rliable pools runs: each
run's mean return per task is one unit of the stratified bootstrap, so the intervals carry the
run-to-run spread and not only the episodes' (docs/decisions.md).

Light to import (no Ray): the sweep summary and the dashboard use it too.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from tdmpc_ray.evaluate.stats import BOOTSTRAP_SAMPLES, SEED, Interval, Returns
from tdmpc_ray.evaluate.stats import compare as paired_compare

if TYPE_CHECKING:
    from tdmpc_ray.evaluate.config import EvalConfig

RESULT_FILE = "eval.json"


def is_result(path: str | Path) -> bool:
    """Whether `path` names an evaluation result (a .json file or a folder) rather than a
    checkpoint."""
    path = Path(path)
    return path.is_dir() or path.suffix == ".json"


def load_result(path: str | Path) -> dict:
    """The evaluation result in an eval.json, or in the eval.json of a folder; one-line errors
    for a missing, unreadable or foreign file."""
    path = Path(path)
    file = path / RESULT_FILE if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"{file}: no such evaluation result")
    try:
        result = json.loads(file.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"{file}: not a JSON evaluation result ({err})") from None
    tasks = result.get("tasks") if isinstance(result, dict) else None
    if not isinstance(tasks, dict) or not tasks:
        raise ValueError(f"{file}: not an evaluation result (no per-task returns)")
    for task, row in tasks.items():
        if not isinstance(row, dict) or not {"returns", "env_seeds"} <= set(row):
            raise ValueError(f"{file}: task {task!r} has no per-episode returns and env seeds")
    return result


def check_paired(a: dict, b: dict, names: tuple[str, str] = ("A", "B")) -> None:
    """Fail with one line unless `a` and `b` ran the same tasks, episodes per task, env seeds
    and episode lengths."""
    prefix = f"{names[0]} and {names[1]} are not paired"
    only = sorted(set(a["tasks"]) ^ set(b["tasks"]))
    if only:
        where = names[0] if only[0] in a["tasks"] else names[1]
        raise ValueError(f"{prefix}: task {only[0]!r} is only in {where}")
    for task, row in a["tasks"].items():
        other = b["tasks"][task]
        if len(row["returns"]) != len(other["returns"]):
            raise ValueError(
                f"{prefix}: {task!r} has {len(row['returns'])} episodes in {names[0]} and "
                f"{len(other['returns'])} in {names[1]}"
            )
        for key, what, hint in (
            ("env_seeds", "ran on env seed", "evaluate both with the same --seed"),
            ("lengths", "lasted", "evaluate both with the same --max-steps"),
        ):
            for episode, (x, y) in enumerate(
                zip(row.get(key, []), other.get(key, []), strict=False)
            ):
                if x != y:
                    raise ValueError(
                        f"{prefix}: {task!r} episode {episode} {what} {x} in {names[0]} and {y} "
                        f"in {names[1]} ({hint})"
                    )


def run_means(results: Sequence[dict]) -> dict[str, list[float]]:
    """Per task, each result's mean return: one value per run, the unit that pools runs of
    several seeds (one result: its episodes' returns as they are)."""
    if len(results) == 1:
        return {task: list(row["returns"]) for task, row in results[0]["tasks"].items()}
    tasks = results[0]["tasks"]
    missing = [(i, t) for i, r in enumerate(results) for t in tasks if t not in r["tasks"]]
    if missing:
        raise ValueError(f"run {missing[0][0]} has no episodes of task {missing[0][1]!r}")
    return {
        task: [sum(r["tasks"][task]["returns"]) / len(r["tasks"][task]["returns"]) for r in results]
        for task in tasks
    }


def pool_pairs(
    pairs: Sequence[tuple[dict, dict]], names: tuple[str, str] = ("A", "B")
) -> tuple[Returns, Returns]:
    """A's and B's returns by task, each pair checked: one pair's paired episodes, or for
    several pairs (one per seed) each run's mean per task (`run_means`), kept paired by seed."""
    if not pairs:
        raise ValueError("no results to compare")
    for a, b in pairs:
        check_paired(a, b, names)
    return run_means([a for a, _ in pairs]), run_means([b for _, b in pairs])


def compare_results(
    pairs: Sequence[tuple[dict, dict]],
    names: tuple[str, str] = ("A", "B"),
    seed: int = SEED,
    reps: int = BOOTSTRAP_SAMPLES,
) -> dict:
    """The paired comparison of A with B (`stats.compare`: both scores, A - B and P(A > B)
    with intervals, verdict, per-task table) over one or more (A result, B result) pairs,
    with what was paired."""
    a, b = pool_pairs(pairs, names)
    report = paired_compare(a, b, seed, reps, names)
    report["names"] = {"a": names[0], "b": names[1]}
    report["pairing"] = {
        "pairs": len(pairs),
        "tasks": len(a),
        "episodes_per_task": min(len(r["returns"]) for p in pairs for r in p[0]["tasks"].values()),
        "unit": "episode" if len(pairs) == 1 else "run (its mean return per task)",
        "env_seeds": "identical per episode",
    }
    report["episodes_per_task"] = report["pairing"]["episodes_per_task"]
    return report


def sources(a: dict, b: dict) -> dict:
    """Where each side's result came from: checkpoint, its sha256, settings."""
    return {
        side: {
            "checkpoint": result["config"].get("checkpoint"),
            "checkpoint_sha256": result["config"].get("checkpoint_sha256"),
            "seed": result["config"].get("seed"),
            "eval_mode": result["config"].get("eval_mode"),
            "planner": result["config"].get("planner"),
            "max_steps": result["config"].get("max_steps"),
        }
        for side, result in (("a", a), ("b", b))
    }


def evaluate_checkpoints(
    checkpoints: Sequence[str],
    tasks: str,
    episodes: int,
    num_actors: int | None,
    cfg: EvalConfig,
    progress: bool = False,
    labels: Sequence[str] = (),
) -> list[dict]:
    """`evaluate` each checkpoint with the same settings, so each episode runs on the same env
    seed for all of them; each progress bar is named by its label (default "eval")."""
    from tdmpc_ray.evaluate.score import evaluate

    names = list(labels) or ["eval"] * len(checkpoints)
    return [
        evaluate(c, tasks, episodes, num_actors, cfg, progress=progress, label=name)
        for c, name in zip(checkpoints, names, strict=True)
    ]


def format_comparison(report: dict) -> str:
    """One screen: both scores, a row per task, A - B and P(A > B) with intervals, verdict."""
    names = report["names"]
    lines = [
        f"A = {names['a']}   normalized score {Interval(**report['a']).format()}",
        f"B = {names['b']}   normalized score {Interval(**report['b']).format()}",
        "",
        f"{'task':<26} {'episodes':>8} {'A return':>9} {'B return':>9} "
        f"{'A - B return [95% interval]':>30}",
    ]
    for task, row in report["tasks"].items():
        diff = Interval(**row["difference"]).format(1)
        lines.append(f"{task:<26} {row['episodes']:>8} {row['a']:9.1f} {row['b']:9.1f} {diff:>30}")
    pairing, boot = report["pairing"], report["intervals"]
    units = (
        f"{pairing['tasks']} tasks x {pairing['episodes_per_task']} episodes on the same env seeds"
    )
    if pairing["pairs"] > 1:
        units = f"{pairing['pairs']} seed pairs as the units, each {units}"
    lines += [
        "",
        f"A - B score       {Interval(**report['difference']).format()}  (paired, {units})",
        f"P(A > B)          {Interval(**report['probability_of_improvement']).format()}  "
        f"{_improvement_meaning(report)}",
        f"verdict           {report['verdict']}",
        f"intervals         {boot['method']} ({boot['samples']} samples, seed {boot['seed']}); "
        f"an interval needs {boot['needs']}",
    ]
    return "\n".join(lines)


def _improvement_meaning(report: dict) -> str:
    """What P(A > B) counts; with ties, that they count half and that it counts wins, not
    their size, so it can lean the other way than A - B (0.53 beside a negative A - B)."""
    ties = report["ties"]
    meaning = "(the chance an episode of A beats one of B on the same task"
    if not ties:
        return meaning + ")"
    return (
        f"{meaning}; {ties:.0%} of episode pairs tie and count half: it counts wins, not by "
        "how much, so it can lean the other way than A - B)"
    )
