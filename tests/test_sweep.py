"""Sweeps: specs parse and validate; tune/quick.yaml runs a scratch and a distilled trial under
Ray Tune, with asynchronous evaluation scores reaching Tune."""

from __future__ import annotations

import csv
import dataclasses
import json
import re
from pathlib import Path

import pytest

from tdmpc_ray.cli import main
from tdmpc_ray.sweep.spec import load_spec
from tests.helpers import REPO, shared_checkpoint

SPECS = sorted((REPO / "tune").glob("*.yaml"))


def _episodes(
    dst: Path, tasks: str = "cartpole-balance", per_task: int = 2, steps: int = 24
) -> Path:
    """Random-policy rollouts made by `data generate` into `dst`."""
    from tdmpc_ray.data.generate import GenerateConfig, generate

    generate(
        GenerateConfig(tasks=tasks, episodes_per_task=per_task, max_steps=steps),
        dst,
        progress=False,
    )
    return dst


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.stem)
def test_every_spec_in_tune_parses_into_valid_trials(path):
    spec = load_spec(path)
    assert spec.trial_configs()


def test_paper_table_1_spec_has_the_papers_d_coef_grid():
    spec = load_spec(REPO / "tune" / "dcoef.yaml")
    assert [c.loss.d_coef for c in spec.trial_configs()] == [0.0, 0.05, 0.25, 0.4, 0.55, 0.6, 0.9]
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
def test_a_sweep_with_a_failed_trial_exits_non_zero_and_names_it(ray_session, tmp_path, capsys):
    _episodes(tmp_path / "data")
    spec_path = tmp_path / "failing.yaml"
    spec_path.write_text(
        "base: {data: data, steps: 4, batch_size: 16, log_every: 2, checkpoint_every: 4,\n"
        "       cpus_per_worker: 0.5}\n"
        "space:\n  horizon: {grid: [3, 40]}\n"  # 40 steps do not fit the 25-step episodes
        "max_concurrent_trials: 1\n"  # one at a time whatever earlier tests left in this Ray
        f"storage_path: {tmp_path / 'sweeps'}\n"
    )
    assert main(["sweep", str(spec_path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    failed = [line for line in err if line.startswith("tdmpc-ray sweep: trial ")]
    assert len(failed) == 1, err
    assert re.search(
        r"trial \S+ failed: ValueError: horizon 40 needs episodes longer than 25", failed[0]
    )


@pytest.mark.slow
def test_quick_sweep_runs_scratch_and_distilled_trials(ray_session, tmp_path):
    from tdmpc_ray.sweep.runner import run_sweep
    from tdmpc_ray.sweep.tables import format_table

    data = _episodes(tmp_path / "data", "cartpole-balance,cup-catch")
    overrides = {
        "data": str(data),
        "teacher": str(shared_checkpoint("mt30_1M_steps_045dist_fp16.pt")),
        "steps": "10",
        "batch_size": "16",
        "checkpoint_every": "5",
        "log_every": "5",
        "eval_freq": "10",
        "eval_tasks": "cartpole-balance",
        "eval_max_steps": "5",
        "eval_episodes": "6",  # one task needs 6 episodes for an interval
        "storage_path": str(tmp_path / "sweeps"),
        "scheduler": "{type: asha, grace_period: 10, max_t: 10}",
    }
    summary = run_sweep(load_spec(REPO / "tune" / "quick.yaml", overrides))
    trials = {t["d_coef"]: t for t in summary["trials"]}
    assert sorted(trials) == [0.0, 0.45]
    assert all(t["status"] == "TERMINATED" and t["step"] == 10 for t in trials.values())
    assert summary["unfinished"] == 0
    for t in trials.values():
        assert t["eval_step"] == 10 and t["eval_episodes"] == 6
        assert t["normalized_score_low"] <= t["normalized_score"] <= t["normalized_score_high"]
    assert Path(summary["best"]["student"]).is_file()
    scratch, distilled = trials[0.0], trials[0.45]
    assert summary["scratch"] == [scratch["trial"]] and scratch["vs_scratch"] is None
    versus = distilled["vs_scratch"]
    assert versus["steps"] == [10] and versus["pairs"] == 1 and "error" not in versus
    assert versus["difference"]["low"] <= versus["difference"]["high"]
    table = format_table(summary)
    assert "score [95% interval]" in table and "(scratch)" in table
    experiment = Path(summary["experiment"])
    runs = {
        t["d_coef"]: json.loads((experiment / t["run_dir"] / "run.json").read_text())
        for t in trials.values()
    }
    assert runs[0.0]["config"]["teacher"] is None and runs[0.0]["recipe"] == "scratch"
    assert runs[0.45]["config"]["teacher"] and runs[0.45]["versions"]["ray"]
    evaluations = [
        json.loads((experiment / t["eval_files"]["10"]).read_text()) for t in trials.values()
    ]
    seeds = [e["tasks"]["cartpole-balance"]["env_seeds"] for e in evaluations]
    assert seeds[0] == seeds[1] and len(seeds[0]) == 6 and evaluations[0]["step"] == 10
    trial_dirs = [p for p in experiment.iterdir() if (p / "params.json").is_file()]
    assert len(trial_dirs) == 2
    rows = [json.loads(line) for line in (trial_dirs[0] / "result.json").read_text().splitlines()]
    assert all(row["run_dir"] for row in rows)
    scored = [row for row in rows if "normalized_score" in row]
    assert [row["eval_step"] for row in scored] == [10] and "score/cartpole-balance" in scored[0]
    assert len(rows) > len(scored)  # reports without an evaluation carry no score at all


def test_asha_stops_the_worst_trial_on_rows_that_mostly_lack_the_score(ray_session, tmp_path):
    """Trainables that report like the sweep's trials (a score only at evaluated steps, at
    `eval_step`) under the sweep's ASHA and Tune environment: no error for rows without the
    metric, the worst trial is stopped at the first rung, and Tune's settings are as before."""
    import os

    from ray import tune

    from tdmpc_ray.sweep.runner import asha, tune_environment

    def trainable(config: dict) -> None:
        for step in range(1, 9):
            row = {"step": step, "total_loss": 1.0 / step}
            if step % 2 == 0:
                row.update(normalized_score=config["quality"] * step, eval_step=step)
            tune.report(row)

    tuner = tune.Tuner(
        trainable,
        param_space={"quality": tune.grid_search([3.0, 2.0, 1.0])},
        tune_config=tune.TuneConfig(
            scheduler=asha({"grace_period": 2, "max_t": 8, "reduction_factor": 2}),
            max_concurrent_trials=1,
        ),
        run_config=tune.RunConfig(name="asha", storage_path=str(tmp_path), verbose=0),
    )
    names = ("TUNE_DISABLE_STRICT_METRIC_CHECKING", "TUNE_GLOBAL_CHECKPOINT_S")
    before = [os.environ.get(name) for name in names]
    with tune_environment():
        grid = tuner.fit()
    assert [os.environ.get(name) for name in names] == before
    assert not grid.errors
    last = {r.config["quality"]: r.metrics_dataframe["eval_step"].max() for r in grid}
    assert last[3.0] == 8 and last[1.0] < 8


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
        ("scratch", 1),
        ("scratch", 2),
        ("distill-d0.45-latent-pca1", 1),
        ("distill-d0.45-latent-pca1", 2),
    ]
    assert spec.searched_keys() == ["recipe", "seed"]
    from tdmpc_ray.sweep.summary import group_over_seeds
    from tdmpc_ray.sweep.tables import format_groups

    trials = [
        {"recipe": r, "seed": s, "normalized_score": v}
        for r, s, v in [("a", 1, 10.0), ("a", 2, 14.0), ("b", 1, 20.0), ("b", 2, None)]
    ]
    groups = group_over_seeds({"space": ["recipe", "seed"], "trials": trials})
    assert groups[0] == {"recipe": "b", "n": 1, "mean": 20.0, "std": None, "min": 20.0, "max": 20.0}
    assert groups[1]["mean"] == 12.0 and abs(groups[1]["std"] - 8**0.5) < 1e-12
    assert "mean" in format_groups({"space": ["recipe", "seed"], "groups": groups})
    spec_path.write_text("recipes:\n  bad: {d_kof: 1}\n")
    with pytest.raises(ValueError, match="recipe 'bad': 'd_kof' is not a training setting"):
        load_spec(spec_path)


@pytest.mark.slow
def test_a_recipe_sweep_trains_each_recipe_with_its_terms(ray_session, tmp_path):
    from tdmpc_ray.sweep.runner import run_sweep

    data = _episodes(tmp_path / "data")
    overrides = {
        "data": str(data),
        "teacher": str(shared_checkpoint("mt30-1M-fp16")),
        "steps": "4",
        "batch_size": "16",
        "checkpoint_every": "4",
        "log_every": "2",
        "eval_freq": "0",
        "storage_path": str(tmp_path / "sweeps"),
        "pca_samples": "64",
        "max_concurrent_trials": "1",
    }
    spec = load_spec(REPO / "tune" / "study.yaml", overrides)
    recipes = {
        "reward+latent-pca": {"d_coef": 0.45, "latent_d_coef": 1.0, "latent_bridge": "pca"},
        "all-terms": {
            "d_coef": 0.45,
            "latent_d_coef": 1.0,
            "latent_bridge": "linear",
            "value_d_coef": 0.1,
            "policy_d_coef": 1.0,
        },
    }
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


def test_spec_paths_are_relative_to_the_spec_and_overrides_to_the_working_directory(
    tmp_path, monkeypatch
):
    specs = tmp_path / "project" / "specs"
    specs.mkdir(parents=True)
    (specs / "s.yaml").write_text(
        "base: {data: ../data, teacher: t.pt}\n"
        "recipes:\n  scratch: {d_coef: 0.0}\n  other: {teacher: ../other.pt}\n"
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    spec = load_spec("../project/specs/s.yaml")
    assert spec.base["data"] == str(tmp_path / "project" / "data")
    assert spec.base["teacher"] == str(specs / "t.pt")
    assert spec.recipes["other"]["teacher"] == str(tmp_path / "project" / "other.pt")
    spec = load_spec(specs / "s.yaml", {"data": "mine", "teacher": "none", "storage_path": "out"})
    assert spec.base["data"] == str(elsewhere / "mine") and spec.base["teacher"] == "none"
    assert spec.storage_path == "out"  # outputs: relative to where the sweep runs


@pytest.mark.slow
def test_a_sweep_checks_its_data_and_teacher_before_any_trial(tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tdmpc_ray.sweep.spec import check_trial_data_and_teachers

    spec_path = tmp_path / "s.yaml"
    spec_path.write_text("base: {data: data, teacher: t.pt}\n")
    with pytest.raises(FileNotFoundError) as err:
        check_trial_data_and_teachers(load_spec(spec_path))
    assert str(err.value) == f"data={tmp_path / 'data'}: no such file or directory"
    (tmp_path / "data").mkdir()
    pq.write_table(pa.table({"x": [1]}), tmp_path / "data" / "part-00000.parquet")
    with pytest.raises(ValueError, match=r"^data=.*/data: .*part-00000.parquet: no .* metadata"):
        check_trial_data_and_teachers(load_spec(spec_path))

    _episodes(tmp_path / "episodes", per_task=1, steps=4)
    spec_path.write_text("base: {data: episodes, teacher: t.pt}\n")
    with pytest.raises(FileNotFoundError, match=r"^teacher=.*/t.pt: no such checkpoint file$"):
        check_trial_data_and_teachers(load_spec(spec_path))
    (tmp_path / "t.pt").write_bytes(b"not a checkpoint")
    assert main(["sweep", str(spec_path)]) == 2  # through the CLI: one line, before Ray
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"tdmpc-ray sweep: error: teacher={tmp_path / 't.pt'}: ")


def test_a_sweep_warns_on_a_cluster_without_the_state_api(
    ray_session, tmp_path, monkeypatch, caplog
):
    """Ray Train frees the workers of a trial Tune stops early only through Ray's State API."""
    from tdmpc_ray.resources import ResourceError, state_api_reachable
    from tdmpc_ray.sweep import runner

    assert state_api_reachable(wait_s=0)
    _episodes(tmp_path / "data", per_task=1)
    spec_path = tmp_path / "big.yaml"
    spec_path.write_text(
        "base: {data: data, steps: 4, cpus_per_worker: 64}\n"
        "space:\n  seed: {grid: [1]}\n"
        f"storage_path: {tmp_path / 'sweeps'}\n"
    )
    monkeypatch.setattr(runner, "state_api_reachable", lambda: False)
    with pytest.raises(ResourceError, match="one trial needs"):
        runner.run_sweep(load_spec(spec_path))
    assert "the cluster has no State API" in caplog.text
