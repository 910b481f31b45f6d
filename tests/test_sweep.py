"""Sweeps: specs parse and validate; tune/quick.yaml runs a scratch and a distilled trial under
Ray Tune, with asynchronous evaluation scores reaching Tune."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import pytest

from tdmpc_ray.sweep.spec import load_spec
from tests.helpers import REPO, shared_checkpoint

SPECS = sorted((REPO / "tune").glob("*.yaml"))


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.stem)
def test_every_spec_in_tune_parses_into_valid_trials(path):
    spec = load_spec(path)
    assert spec.trial_configs()


def test_paper_table_1_spec_has_the_papers_d_coef_grid():
    spec = load_spec(REPO / "tune" / "dcoef.yaml")
    assert [c.d_coef for c in spec.trial_configs()] == [0.0, 0.05, 0.25, 0.4, 0.55, 0.6, 0.9]
    assert {(c.steps, c.batch_size) for c in spec.trial_configs()} == {(200_000, 256)}


def test_bad_specs_fail_with_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("space:\n  d_kof: {grid: [0.1]}\n")
    with pytest.raises(ValueError, match="space key 'd_kof' is not a training setting"):
        load_spec(bad)
    bad.write_text("space:\n  lr: {normal: [0, 1]}\n")
    with pytest.raises(ValueError, match="space 'lr' must be one of"):
        load_spec(bad)
    with pytest.raises(ValueError, match="steps: expected int"):
        load_spec(REPO / "tune" / "quick.yaml", {"steps": "many"})
    with pytest.raises(FileNotFoundError):
        load_spec(tmp_path / "missing.yaml")


@pytest.mark.slow
def test_quick_sweep_runs_scratch_and_distilled_trials(ray_session, tmp_path):
    from tdmpc_ray.data.generate import GenerateConfig, generate
    from tdmpc_ray.sweep.runner import format_table, run_sweep

    data = tmp_path / "data"
    generate(
        GenerateConfig(tasks="cartpole-balance,cup-catch", episodes_per_task=2, max_steps=24),
        data,
        progress=False,
    )
    overrides = {
        "data": str(data), "teacher": str(shared_checkpoint("mt30_1M_steps_045dist_fp16.pt")),
        "steps": "10", "batch_size": "16", "checkpoint_every": "5", "log_every": "5", "eval_freq": "10",
        "eval_tasks": "cartpole-balance", "eval_max_steps": "5", "storage_path": str(tmp_path / "sweeps"),
    }  # fmt: skip
    summary = run_sweep(load_spec(REPO / "tune" / "quick.yaml", overrides))
    assert sorted(t["d_coef"] for t in summary["trials"]) == [0.0, 0.45]
    assert all(t["status"] == "TERMINATED" and t["step"] == 10 for t in summary["trials"])
    assert all(t["normalized_score"] is not None for t in summary["trials"])
    assert Path(summary["best"]["student"]).is_file()
    assert "normalized_score" in format_table(summary)
    trial_dirs = [p for p in Path(summary["experiment"]).iterdir() if (p / "params.json").is_file()]
    assert len(trial_dirs) == 2
    rows = [json.loads(line) for line in (trial_dirs[0] / "result.json").read_text().splitlines()]
    assert any("score/cartpole-balance" in row for row in rows)


def test_recipes_grid_with_seeds_and_pool_scores_over_seeds(tmp_path):
    spec_path = tmp_path / "study.yaml"
    spec_path.write_text(
        "base: {data: d, teacher: t.pt}\n"
        "recipes:\n  scratch: {d_coef: 0.0}\n"
        "  latent: {d_coef: 0.45, latent_d_coef: 1.0, latent_bridge: pca}\n"
        "space:\n  seed: {grid: [1, 2]}\n"
    )
    spec = load_spec(spec_path)
    configs = spec.trial_configs()
    assert [(c.recipe(), c.seed) for c in configs] == [
        ("scratch", 1), ("scratch", 2), ("distill-d0.45-latent-pca1", 1), ("distill-d0.45-latent-pca1", 2),
    ]  # fmt: skip
    assert spec.searched_keys() == ["recipe", "seed"]
    from tdmpc_ray.sweep.runner import format_groups, group_over_seeds

    trials = [{"recipe": r, "seed": s, "normalized_score": v}
              for r, s, v in [("a", 1, 10.0), ("a", 2, 14.0), ("b", 1, 20.0), ("b", 2, None)]]  # fmt: skip
    groups = group_over_seeds({"space": ["recipe", "seed"], "trials": trials})
    assert groups[0] == {"recipe": "b", "n": 1, "mean": 20.0, "std": None, "min": 20.0, "max": 20.0}
    assert groups[1]["mean"] == 12.0 and abs(groups[1]["std"] - 8**0.5) < 1e-12
    assert "mean" in format_groups({"space": ["recipe", "seed"], "groups": groups})
    spec_path.write_text("recipes:\n  bad: {d_kof: 1}\n")
    with pytest.raises(ValueError, match="recipe 'bad': 'd_kof' is not a training setting"):
        load_spec(spec_path)


@pytest.mark.slow
def test_a_recipe_sweep_trains_each_recipe_with_its_terms(ray_session, tmp_path):
    from tdmpc_ray.data.generate import GenerateConfig, generate
    from tdmpc_ray.sweep.runner import run_sweep

    data = tmp_path / "data"
    generate(GenerateConfig(tasks="cartpole-balance", episodes_per_task=2, max_steps=24), data,
             progress=False)  # fmt: skip
    overrides = {
        "data": str(data), "teacher": str(shared_checkpoint("mt30-1M-fp16")), "steps": "4",
        "batch_size": "16", "checkpoint_every": "4",
        "log_every": "2", "eval_freq": "0", "storage_path": str(tmp_path / "sweeps"), "pca_samples": "64",
        "max_concurrent_trials": "1",
    }  # fmt: skip
    spec = load_spec(REPO / "tune" / "study.yaml", overrides)
    recipes = {k: spec.recipes[k] for k in ("reward+latent-pca", "all-terms")}
    spec = dataclasses.replace(spec, recipes=recipes, space={"seed": {"grid": [1]}})
    summary = run_sweep(spec)
    assert sorted(t["recipe"] for t in summary["trials"]) == ["all-terms", "reward+latent-pca"]
    assert all(t["status"] == "TERMINATED" and t["step"] == 4 for t in summary["trials"])
    experiment = Path(summary["experiment"])
    with open(experiment / "curves.csv", newline="") as f:
        curves = list(csv.DictReader(f))
    assert list(curves[0]) == ["trial", "recipe", "seed", "step", "metric", "value"]
    metrics = {row["metric"] for row in curves}
    assert {"latent_distill_loss", "value_distill_loss", "policy_distill_loss"} <= metrics
    assert json.loads((experiment / "summary.json").read_text())["groups"]
