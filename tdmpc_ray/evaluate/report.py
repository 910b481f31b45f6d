"""Evaluation results on disk (`eval.json`, `eval.csv`, written atomically) and on one screen."""

from __future__ import annotations

import csv
from pathlib import Path

from tdmpc_ray.atomic import atomic_path, write_json

CSV_FIELDS = ("task", "task_id", "episodes", "mean_return", "std_return", "score", "returns")


def write_results(result: dict, out_dir: str | Path) -> list[Path]:
    """Write `result` (from `evaluate`) as eval.json and eval.csv under `out_dir`.

    The CSV has one row per task (score = mean return / 10, returns space-separated in
    episode order) and a last row `all` whose score is the normalized score.
    """
    out_dir = Path(out_dir)
    json_path = write_json(out_dir / "eval.json", result)
    csv_path = out_dir / "eval.csv"
    with atomic_path(csv_path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_FIELDS)
        for task, row in result["tasks"].items():
            writer.writerow(
                [task, row["task_id"], len(row["returns"]), f"{row['mean']:.4f}",
                 f"{row['std']:.4f}", f"{row['mean'] / 10:.4f}",
                 " ".join(f"{r:.4f}" for r in row["returns"])]
            )  # fmt: skip
        writer.writerow(
            ["all", "", result["episodes_run"], "", "", f"{result['normalized_score']:.4f}", ""]
        )
    return [json_path, csv_path]


def format_summary(result: dict, paths: list[Path]) -> str:
    """One screen: a row per task, the normalized score, settings, speed, retries, paths."""
    cfg = result["config"]
    planner = cfg["planner"]
    mode = (
        f"MPPI {planner['iterations']}x{planner['num_samples']} horizon {planner['horizon']}"
        if planner["mpc"]
        else "policy prior"
    )
    lines = [f"{'task':<26} {'episodes':>8} {'mean':>8} {'std':>7}"]
    for task, row in result["tasks"].items():
        lines.append(f"{task:<26} {len(row['returns']):>8} {row['mean']:8.1f} {row['std']:7.1f}")
    lines += [
        "",
        f"normalized score  {result['normalized_score']:.2f}  ({len(result['tasks'])} tasks)",
        f"acting            {mode}, eval_mode={cfg['eval_mode']}, seed {cfg['seed']}"
        + (f", episodes cut at {cfg['max_steps']} steps" if cfg["max_steps"] else ""),
        f"speed             {result['env_steps']} env steps in {result['wall_time_s']:.1f} s "
        f"({result['env_steps_per_s']:.1f}/s) on {cfg['num_actors']} actors",
        f"retries           {len(result['retries'])}",
    ]
    if result["videos"]:
        lines.append(f"videos            {len(result['videos'])} mp4 files in {cfg['video_dir']}")
    lines += [f"wrote             {path}" for path in paths]
    return "\n".join(lines)
