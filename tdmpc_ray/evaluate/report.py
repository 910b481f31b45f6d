"""Evaluation results on disk (`eval.json`, `eval.csv`, written atomically), as the flat metrics
a training run reports, and on one screen. Every score comes with its 95% interval and episode
count (`stats`)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from tdmpc_ray.atomic import atomic_path, write_json
from tdmpc_ray.evaluate.stats import NEEDS, Interval

EVALS_DIR = "evals"
"""A run folder's per-step evaluation files (`step_file`); in a sweep's experiment folder itself,
evaluations of agents the sweep did not train (`<name>.json`: the quickstart's teacher), which
the dashboard shows beside the trials as references."""


def step_file(evals_dir: str, step: int) -> str:
    """Where the evaluation of step `step` is kept in an `evals_dir` (a run's `EVALS_DIR`): the
    one name training writes, and the dashboard and quickstart read."""
    return f"{evals_dir}/step_{step:09d}.json"


CSV_FIELDS = (
    "task",
    "task_id",
    "episodes",
    "mean_return",
    "mean_return_low",
    "mean_return_high",
    "std_return",
    "score",
    "score_low",
    "score_high",
    "returns",
    "env_seeds",
)
SCORE_FIELDS = ("normalized_score", "iqm")
"""Scores reported with their intervals as `<name>_low` / `<name>_high`."""


def write_results(result: dict, out_dir: str | Path) -> list[Path]:
    """Write `result` (from `evaluate`) as eval.json and eval.csv under `out_dir`.

    The CSV has one row per task (score = mean return / 10, with the interval of the mean;
    returns and env seeds space-separated in episode order), then a row `iqm` and a last row
    `all` whose score is the normalized score; empty bounds mean too few episodes for an
    interval (`stats.interval_note`).
    """
    out_dir = Path(out_dir)
    json_path = write_json(out_dir / "eval.json", result)
    csv_path = out_dir / "eval.csv"
    with atomic_path(csv_path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_FIELDS)
        for task, row in result["tasks"].items():
            bounds = [row.get("mean_low"), row.get("mean_high")]
            writer.writerow(
                [
                    task,
                    row["task_id"],
                    len(row["returns"]),
                    _num(row["mean"]),
                    *map(_num, bounds),
                    _num(row["std"]),
                    _num(row["mean"] / 10),
                    *(_num(b / 10 if b is not None else None) for b in bounds),
                    " ".join(f"{r:.4f}" for r in row["returns"]),
                    " ".join(str(s) for s in row["env_seeds"]),
                ]
            )
        for label, name in (("iqm", "iqm"), ("all", "normalized_score")):
            writer.writerow(
                [
                    label,
                    "",
                    result["episodes_run"],
                    "",
                    "",
                    "",
                    "",
                    _num(result[name]),
                    _num(result.get(f"{name}_low")),
                    _num(result.get(f"{name}_high")),
                    "",
                    "",
                ]
            )
    return [json_path, csv_path]


def _num(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def interval(result: dict, name: str) -> Interval:
    """The score `name` of a result (or of a row of its metrics) with its interval, or the
    reason it has none."""
    return Interval(
        result[name],
        result.get(f"{name}_low"),
        result.get(f"{name}_high"),
        result.get(f"{name}_note"),
    )


def training_metrics(result: dict) -> dict:
    """The flat metrics a training run reports for an evaluation: the scores with their bounds
    (absent without an interval), episodes per task, and `score/<task>` (mean return / 10)."""
    keys = [f"{name}{suffix}" for name in SCORE_FIELDS for suffix in ("", "_low", "_high")]
    metrics = {key: result[key] for key in keys if result.get(key) is not None}
    metrics["eval_episodes"] = result["episodes_per_task"]
    metrics.update({f"score/{task}": row["mean"] / 10 for task, row in result["tasks"].items()})
    return metrics


def save_json(path: str, obj: object) -> str:
    """Write `obj` as JSON at a local path (atomically) or a storage URI (`s3://...`: the object
    appears whole or not at all); returns `path`."""
    if "://" not in path:
        write_json(path, obj)
        return path
    import pyarrow.fs

    fs, where = pyarrow.fs.FileSystem.from_uri(path)
    fs.create_dir(where.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(where) as f:
        f.write(json.dumps(obj, indent=2, default=str).encode())
    return path


def load_json(path: str | Path) -> dict:
    """A JSON object from a local path or a storage URI."""
    if "://" not in str(path):
        return json.loads(Path(path).read_text())
    import pyarrow.fs

    fs, where = pyarrow.fs.FileSystem.from_uri(str(path))
    with fs.open_input_stream(where) as f:
        return json.loads(f.read())


def score_line(result: dict) -> str:
    """`31.04 [27.12, 35.01] (95% interval, 30 tasks x 2 episodes)`, or the score, "too few
    episodes for an interval" and what one needs."""
    tasks, episodes = len(result["tasks"]), result["episodes_per_task"]
    score = interval(result, "normalized_score")
    counts = f"{tasks} tasks x {episodes} episodes"
    if score.low is None:
        return f"{score.format()}  ({counts}; an interval needs {NEEDS})"
    return f"{score.format()}  (95% interval, {counts})"


def format_summary(result: dict, paths: list[Path]) -> str:
    """One screen: a row per task (mean return and its interval), the normalized score and IQM
    with their intervals, settings, speed, retries, paths."""
    cfg = result["config"]
    planner = cfg["planner"]
    mode = (
        f"MPPI {planner['iterations']}x{planner['num_samples']} horizon {planner['horizon']}"
        if planner["mpc"]
        else "policy prior"
    )
    lines = [f"{'task':<26} {'episodes':>8} {'mean return [95% interval]':>28} {'std':>7}"]
    for task, row in result["tasks"].items():
        mean = interval(row, "mean").format(1)
        lines.append(f"{task:<26} {len(row['returns']):>8} {mean:>28} {row['std']:7.1f}")
    boot = result["intervals"]
    lines += [
        "",
        f"normalized score  {score_line(result)}",
        f"IQM               {interval(result, 'iqm').format()}",
        f"intervals         {boot['method']} ({boot['samples']} samples, seed "
        f"{boot['seed']}); an interval needs {boot['needs']}",
        f"acting            {mode}, eval_mode={cfg['eval_mode']}, seed {cfg['seed']}"
        + (f", episodes cut at {cfg['max_steps']} steps" if cfg["max_steps"] else ""),
        f"speed             {result['env_steps_run']} env steps in "
        f"{result['wall_time_s']:.1f} s ({result['env_steps_per_s']:.1f}/s) on "
        f"{cfg['num_actors']} actors"
        + (
            f"; {result['resumed_episodes']} episodes from an earlier run"
            if result["resumed_episodes"]
            else ""
        ),
        f"retries           {len(result['retries'])}",
    ]
    if result["videos"]:
        lines.append(f"videos            {len(result['videos'])} mp4 files in {cfg['video_dir']}")
    lines += [f"wrote             {path}" for path in paths]
    return "\n".join(lines)
