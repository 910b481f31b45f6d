"""tune/study_scores.py: a study's priors and the teacher, compared with seeds as the units."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from tests.helpers import REPO

TASKS = ("walker-stand", "cup-catch", "finger-spin", "reacher-easy", "cartpole-swingup")


def _scores_module():
    spec = importlib.util.spec_from_file_location("study_scores", REPO / "tune/study_scores.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _result(path: Path, seed: int, level: float) -> Path:
    """An eval.json of 2 episodes per task on env seeds derived from `seed`, returns `level`
    plus a per-episode offset shared by every agent on those env seeds."""
    tasks = {
        task: {
            "returns": [level + 10 * i + seed for i in range(2)],
            "env_seeds": [1000 * seed + 10 * t + i for i in range(2)],
            "lengths": [500, 500],
        }
        for t, task in enumerate(TASKS)
    }
    path.mkdir(parents=True, exist_ok=True)
    (path / "eval.json").write_text(json.dumps({"tasks": tasks, "config": {"seed": seed}}))
    return path / "eval.json"


def _study(root: Path, levels: dict[str, tuple[float, float]], seeds=range(1, 4)) -> Path:
    """A sweep folder (summary.json, one MPPI evaluation per trial), its priors and a teacher:
    `levels` maps each recipe to its (MPPI, prior) return level."""
    trials = []
    for recipe, (mppi, prior) in levels.items():
        for seed in seeds:
            name = f"{recipe}-{seed}"
            _result(root / "sweep" / name, seed, mppi)
            _result(root / "priors" / name, seed, prior)
            files = {"3000": f"{name}/eval.json"}
            trials.append(
                {"trial": name, "recipe": recipe, "seed": seed, "status": "TERMINATED"}
                | {"eval_files": files, "student": f"{name}/student.pt"}
            )
    for seed in seeds:
        _result(root / "teacher" / f"mppi-seed{seed}", seed, 300.0)
        _result(root / "teacher" / f"prior-seed{seed}", seed, 100.0)
    (root / "sweep" / "summary.json").write_text(json.dumps({"trials": trials}))
    return root


def test_priors_compare_with_scratch_their_mppi_and_the_teacher(tmp_path: Path) -> None:
    scores = _scores_module()
    root = _study(tmp_path, {"scratch": (100.0, 50.0), "planner": (150.0, 200.0)})
    study = scores.load_study(root / "sweep", root / "priors")
    rows = scores.study_scores(study, scores.load_teacher(root / "teacher"))
    by_names = {(r["a_name"], r["b_name"]): r for r in rows}
    # Return differences of 150, 50, -100 and 200 are 15, 5, -10 and 20 score points.
    expected = {
        ("planner prior", "scratch prior"): 15.0,
        ("planner MPPI", "planner prior"): -5.0,
        ("planner prior", "teacher MPPI"): -10.0,
        ("scratch MPPI", "teacher MPPI"): -20.0,
        ("teacher prior", "teacher MPPI"): -20.0,
    }
    for names, difference in expected.items():
        assert by_names[names]["difference"]["value"] == pytest.approx(difference)
        assert by_names[names]["seeds"] == [1, 2, 3]
    assert "planner prior" in scores.format_rows(rows)


def test_priors_on_other_env_seeds_are_refused(tmp_path: Path) -> None:
    scores = _scores_module()
    root = _study(tmp_path, {"scratch": (100.0, 50.0)})
    _result(root / "priors" / "scratch-2", 7, 50.0)
    study = scores.load_study(root / "sweep", root / "priors")
    with pytest.raises(ValueError, match="not paired: 'walker-stand' episode 0 ran on env seed"):
        scores.study_scores(study, scores.load_teacher(root / "teacher"))
