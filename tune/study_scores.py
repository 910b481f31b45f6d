"""The policy priors of a distillation study, and the teacher, against the students' MPPI.

The sweep scores every final student with MPPI and compares the recipes on that (its
summary.json). This adds what the sweep does not score: each student's policy prior and the
teacher (MPPI and prior), all on the env seeds of the student's training seed, pooled over
seeds as runs (`compare_results`, the sweep's method). Per recipe it compares the prior with
scratch's prior, the recipe's MPPI with its own prior, and the prior and the MPPI with the
teacher's MPPI on the same env seeds.

    python tune/study_scores.py SWEEP PRIORS TEACHER OUT.json

SWEEP is the sweep's folder (its summary.json), PRIORS holds `<trial>/eval.json` of every
trial's prior, TEACHER holds `mppi-seed<N>/` and `prior-seed<N>/` evaluations of the teacher;
tune/run_study.sh makes all three.
"""

from __future__ import annotations

import sys
from pathlib import Path

from tdmpc_ray.atomic import write_json
from tdmpc_ray.evaluate.compare import compare_results, load_result
from tdmpc_ray.evaluate.report import load_json
from tdmpc_ray.evaluate.stats import Interval
from tdmpc_ray.provenance import provenance

Runs = dict[int, dict]
"""Evaluation results by training seed."""


def load_study(sweep: Path, priors: Path) -> dict[str, dict[str, Runs]]:
    """Per recipe, its students' MPPI (the sweep's last evaluation) and prior results by seed;
    trials without a finished evaluation are left out."""
    study: dict[str, dict[str, Runs]] = {}
    for trial in load_json(sweep / "summary.json")["trials"]:
        files = trial.get("eval_files") or {}
        if trial["status"] != "TERMINATED" or not files:
            continue
        runs = study.setdefault(trial["recipe"], {"mppi": {}, "prior": {}})
        runs["mppi"][trial["seed"]] = load_result(sweep / files[max(files, key=int)])
        runs["prior"][trial["seed"]] = load_result(priors / trial["trial"])
    return study


def load_teacher(folder: Path) -> dict[str, Runs]:
    """The teacher's MPPI and prior results by seed, from `<mode>-seed<N>` folders."""
    teacher: dict[str, Runs] = {"mppi": {}, "prior": {}}
    for mode, runs in teacher.items():
        for path in sorted(folder.glob(f"{mode}-seed*")):
            runs[int(path.name.removeprefix(f"{mode}-seed"))] = load_result(path)
    return teacher


def compared(a: Runs, b: Runs, names: tuple[str, str]) -> dict:
    """A - B over the seeds both have, each seed one run: both scores, the difference and
    P(A > B) with their intervals, and the verdict."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        raise ValueError(f"{names[0]} and {names[1]} share no seed")
    report = compare_results([(a[s], b[s]) for s in seeds], names)
    keep = ("a", "b", "difference", "probability_of_improvement", "verdict", "episodes_per_task")
    return {"a_name": names[0], "b_name": names[1], "seeds": seeds} | {k: report[k] for k in keep}


def study_scores(study: dict[str, dict[str, Runs]], teacher: dict[str, Runs]) -> list[dict]:
    """Every comparison of the study's priors, MPPI and teacher, scratch's prior first."""
    rows = []
    scratch = study.get("scratch")
    for recipe, runs in study.items():
        if scratch is not None and recipe != "scratch":
            rows.append(
                compared(runs["prior"], scratch["prior"], (f"{recipe} prior", "scratch prior"))
            )
        rows.append(compared(runs["mppi"], runs["prior"], (f"{recipe} MPPI", f"{recipe} prior")))
        for mode in ("prior", "mppi"):
            if teacher["mppi"]:
                name = f"{recipe} {'MPPI' if mode == 'mppi' else 'prior'}"
                rows.append(compared(runs[mode], teacher["mppi"], (name, "teacher MPPI")))
    if teacher["mppi"] and teacher["prior"]:
        rows.append(compared(teacher["prior"], teacher["mppi"], ("teacher prior", "teacher MPPI")))
    return rows


def format_rows(rows: list[dict]) -> str:
    """A markdown table: A, B, both scores, A - B and P(A > B) with intervals, verdict."""
    lines = [
        "| A | B | seeds | A score | B score | A − B | P(A > B) | verdict |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        cells = [
            r["a_name"],
            r["b_name"],
            str(len(r["seeds"])),
            *(Interval(**r[k]).format() for k in ("a", "b", "difference")),
            Interval(**r["probability_of_improvement"]).format(),
            r["verdict"],
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    """Score the study in `argv` (SWEEP PRIORS TEACHER OUT.json), print and write the table."""
    if len(argv) != 4:
        print(__doc__.split("\n\n")[2], file=sys.stderr)
        return 2
    sweep, priors, teacher_dir, out = map(Path, argv)
    rows = study_scores(load_study(sweep, priors), load_teacher(teacher_dir))
    write_json(out, {"comparisons": rows, **provenance()})
    print(format_rows(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
