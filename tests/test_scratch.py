"""Trials against the sweep's scratch trial: which trial is scratch, who pairs with whom, pooling
over seeds, and the summary tables that show it (plain Python, no Ray run)."""

from __future__ import annotations

import pytest

from tdmpc_ray.config import config_keys
from tdmpc_ray.sweep.scratch import (
    DISTILL_KEYS,
    against_scratch,
    between_groups,
    is_scratch,
    pooled_over_seeds,
)
from tdmpc_ray.sweep.summary import group_over_seeds
from tdmpc_ray.sweep.tables import format_groups, format_pairs, format_table
from tdmpc_ray.train.config import TrainConfig
from tests.test_compare import result

SAME = {
    "cartpole-swingup": [700.0, 720.0],
    "finger-spin": [10.0, 900.0],
    "hopper-stand": [5.0, 6.0],
}
SCRATCH = {"walker-walk": [300.0, 500.0], "cup-catch": [0.0, 950.0], **SAME}
BETTER = {"walker-walk": [400.0, 600.0], "cup-catch": [0.0, 950.0], **SAME}
"""Five tasks, 2 episodes each (the fewest `stats` gives an interval for); BETTER is 100 higher
on walker-walk only, so it scores 2 points higher."""


def trial(name: str, recipe: str, seed: int, returns: dict, steps=(1000, 2000), **config) -> dict:
    """A trial record with an evaluation file per step (named `<name>@<step>`)."""
    return {
        "trial": name,
        "config": {"recipe": recipe, "seed": seed, **config},
        "scratch": is_scratch({"recipe": recipe}),
        "evals": {s: f"{name}@{s}" for s in steps},
    }


def files(*trials: tuple[dict, dict]) -> dict[str, dict]:
    """Evaluation files of (trial, returns) pairs: the same returns at every step, env seeds
    from the trial's seed."""
    return {
        path: result(returns, t["config"]["seed"])
        for t, returns in trials
        for path in t["evals"].values()
    }


@pytest.mark.parametrize(
    "config, run, scratch",
    [
        ({"recipe": "scratch"}, None, True),
        ({"recipe": "reward"}, None, False),
        ({"recipe": "zero"}, {"recipe": "scratch"}, True),  # the run record knows best
        ({"d_coef": 0.0}, None, True),
        ({"d_coef": 0.0, "latent_d_coef": 1.0}, None, False),
        ({"d_coef": 0.45}, {"recipe": "distill-d0.45"}, False),
        ({"batch_size": 256}, None, False),
    ],
)
def test_is_scratch(config: dict, run: dict | None, scratch: bool) -> None:
    assert is_scratch(config, run) is scratch


def test_every_distillation_setting_may_differ_from_the_baseline() -> None:
    words = ("teacher", "distill", "latent_bridge", "pca")
    fields = {
        key
        for key in config_keys(TrainConfig)
        if any(w in key for w in words) or key.split("_")[-2:] == ["d", "coef"] or key == "d_coef"
    }
    assert fields == set(DISTILL_KEYS) - {"recipe"}


def make_sweep() -> tuple[list[dict], dict[str, dict]]:
    """Scratch and reward at seeds 1 and 2 (reward +100 on walker-walk, paired), reward at
    seed 3 without a scratch partner, and one whose scratch partner evaluated other steps."""
    trials = [
        trial("s1", "scratch", 1, SCRATCH),
        trial("s2", "scratch", 2, SCRATCH),
        trial("r1", "reward", 1, BETTER),
        trial("r2", "reward", 2, BETTER),
        trial("r3", "reward", 3, BETTER),
    ]
    data = files(*((t, SCRATCH if t["scratch"] else BETTER) for t in trials))
    return trials, data


def test_each_trial_pairs_with_the_scratch_trial_of_its_seed() -> None:
    trials, data = make_sweep()
    loaded = []
    load = lambda path: loaded.append(path) or data[path]  # noqa: E731
    comparisons = against_scratch(trials, ["recipe", "seed"], load)
    assert sorted(comparisons) == ["r1", "r2"]  # scratch trials and r3 have no partner
    r1 = comparisons["r1"]
    assert r1["scratch"] == ["s1"] and r1["steps"] == [2000] and r1["pairs"] == 1
    difference = {k: r1["difference"][k] for k in ("value", "low", "high")}
    assert difference == {
        "value": pytest.approx(2.0),
        "low": pytest.approx(2.0),
        "high": pytest.approx(2.0),
    }
    assert r1["verdict"] == "trial scores higher" and r1["episodes_per_task"] == 2
    assert set(loaded) == {"r1@2000", "s1@2000", "r2@2000", "s2@2000"}

    cache: dict = {}
    assert against_scratch(trials, ["recipe", "seed"], load, cache) == comparisons
    loaded.clear()
    assert against_scratch(trials, ["recipe", "seed"], load, cache) == comparisons
    assert loaded == []


def test_a_trial_pairs_only_with_scratch_of_the_same_other_settings() -> None:
    trials = [
        trial("s", "scratch", 1, SCRATCH, batch_size=256),
        trial("r", "reward", 1, BETTER, batch_size=512),
    ]
    data = files((trials[0], SCRATCH), (trials[1], BETTER))
    assert against_scratch(trials, ["recipe", "seed", "batch_size"], data.__getitem__) == {}
    trials[1]["config"]["batch_size"] = 256
    assert against_scratch(trials, ["recipe", "seed", "batch_size"], data.__getitem__)


def test_the_latest_step_both_evaluated_is_compared() -> None:
    trials = [
        trial("s", "scratch", 1, SCRATCH, steps=(1000, 2000)),
        trial("r", "reward", 1, BETTER, steps=(1000,)),
    ]
    data = files((trials[0], SCRATCH), (trials[1], BETTER))
    assert against_scratch(trials, ["recipe"], data.__getitem__)["r"]["steps"] == [1000]


def test_unpaired_evaluations_give_an_error_entry_not_a_crash() -> None:
    trials, data = make_sweep()
    data["s1@2000"] = result(SCRATCH, seed=9)
    data.pop("s2@2000")
    comparisons = against_scratch(trials, ["recipe", "seed"], data.__getitem__)
    assert "ran on env seed" in comparisons["r1"]["error"]
    assert "s2@2000" in comparisons["r2"]["error"]


def test_seeds_pool_as_runs() -> None:
    """Each seed is one run, its mean return per task the bootstrap's unit: the seeds here
    all scored alike, so the pooled intervals have no width although each seed's episodes
    spread."""
    trials, data = make_sweep()
    pooled = pooled_over_seeds(trials, ["recipe", "seed"], data.__getitem__)
    reward, scratch = pooled[("reward",)], pooled[("scratch",)]
    assert reward["score"]["runs"] == 3 and reward["score"]["episodes_per_task"] == 2
    assert reward["score"]["normalized_score"] == pytest.approx(
        sum(sum(r) / len(r) for r in BETTER.values()) / 10 / len(BETTER)
    )
    assert reward["score"]["normalized_score_low"] == pytest.approx(
        reward["score"]["normalized_score"]
    )
    assert reward["vs_scratch"]["pairs"] == 2 and reward["vs_scratch"]["scratch"] == ["s1", "s2"]
    assert reward["vs_scratch"]["episodes_per_task"] == 2
    assert reward["vs_scratch"]["difference"]["value"] == pytest.approx(2.0)
    assert "vs_scratch" not in scratch and scratch["score"]["runs"] == 2


def test_summary_tables_show_intervals_and_the_comparison_with_scratch() -> None:
    trials, data = make_sweep()
    keys = ["recipe", "seed"]
    comparisons = against_scratch(trials, keys, data.__getitem__)
    rows = []
    for t in trials:
        score = pooled_over_seeds([t], keys, data.__getitem__)[(t["config"]["recipe"],)]["score"]
        rows.append(
            {
                "trial": t["trial"],
                **t["config"],
                "status": "TERMINATED",
                "step": 2000,
                **score,
                "eval_episodes": 2,
                "scratch": t["scratch"],
                "vs_scratch": comparisons.get(t["trial"]),
            }
        )
    summary = {"space": keys, "trials": rows}
    summary["groups"] = group_over_seeds(summary, pooled_over_seeds(trials, keys, data.__getitem__))
    table = format_table(summary)
    assert "score [95% interval]" in table and "vs scratch [95% interval]" in table
    r1 = next(line for line in table.splitlines() if line.startswith("r1 "))
    assert "2.00 [2.00, 2.00]" in r1 and "(scratch)" in next(
        line for line in table.splitlines() if line.startswith("s1 ")
    )
    groups = format_groups(summary)
    assert "pooled score [95% interval]" in groups and "2.00 [2.00, 2.00]" in groups


def test_every_two_groups_compare_over_the_seeds_both_ran() -> None:
    trials, data = make_sweep()
    trials.append(trial("l1", "latent", 1, BETTER, steps=(1000,)))
    data.update(files((trials[-1], BETTER)))
    pairs = between_groups(trials, ["recipe", "seed"], data.__getitem__)
    by_name = {(p["a"]["recipe"], p["b"]["recipe"]): p for p in pairs}
    assert set(by_name) == {("scratch", "reward"), ("scratch", "latent"), ("reward", "latent")}
    scratch_reward = by_name[("scratch", "reward")]
    assert scratch_reward["seeds"] == ["1", "2"] and scratch_reward["steps"] == [2000]
    assert scratch_reward["difference"]["value"] == pytest.approx(-2.0)
    assert (
        scratch_reward["verdict"] == "B scores higher" and scratch_reward["episodes_per_task"] == 2
    )
    assert set(scratch_reward["tasks"]) == set(SCRATCH) and scratch_reward["scores"]["b"]
    latent = by_name[("reward", "latent")]
    assert latent["seeds"] == ["1"] and latent["steps"] == [1000]
    assert latent["verdict"].startswith("not distinguishable")
    table = format_pairs({"space": ["recipe", "seed"], "pairs": pairs})
    assert "A - B [95% interval]" in table and "-2.00 [-2.00, -2.00]" in table
    assert between_groups(trials, ["recipe"], data.__getitem__) == []


@pytest.mark.parametrize(
    "broken, reason",
    [
        ({"tasks": []}, "not an evaluation result"),
        ({"tasks": {}}, "not an evaluation result"),
        ([], "not an evaluation result"),
        ({"tasks": {"walker-walk": [1.0]}}, "no per-episode returns"),
        ({"tasks": {"walker-walk": {"returns": ["x"], "env_seeds": [1]}}}, "not finite numbers"),
    ],
)
def test_a_malformed_evaluation_file_gives_an_error_entry_not_a_crash(broken, reason) -> None:
    trials, data = make_sweep()
    data["s1@2000"] = broken
    keys = ["recipe", "seed"]
    assert reason in against_scratch(trials, keys, data.__getitem__)["r1"]["error"]
    pooled = pooled_over_seeds(trials, keys, data.__getitem__)
    assert reason in pooled[("scratch",)]["score_error"]
    assert reason in pooled[("reward",)]["vs_scratch"]["error"]
    pairs = between_groups(trials, keys, data.__getitem__)
    assert any(reason in p.get("error", "") for p in pairs)
