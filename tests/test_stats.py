"""Interval estimates: stratified and paired bootstraps, IQM and P(A > B)."""

from __future__ import annotations

import numpy as np
import pytest

from tdmpc_ray.evaluate.stats import (
    Interval,
    compare,
    iqm,
    iqm_interval,
    paired_difference,
    probability_of_improvement,
    score_interval,
    task_interval,
    verdict,
)


def _returns(seed: int, tasks: int = 6, episodes: int = 5, shift: float = 0.0) -> dict:
    rng = np.random.default_rng(seed)
    return {
        f"t{i}": list(np.clip(rng.normal(100 * i + shift, 80, episodes), 0, 1000))
        for i in range(tasks)
    }


def test_iqm_drops_the_lowest_and_highest_quarter():
    assert iqm(np.array([0.0, 1, 2, 3, 4, 5, 6, 1000])) == pytest.approx(3.5)
    assert iqm(np.array([[1.0, 2, 3, 4], [10, 0, 0, 10]])).tolist() == [2.5, 5.0]


def test_score_interval_is_seeded_and_brackets_the_score():
    returns = _returns(0)
    first, again = score_interval(returns), score_interval(returns)
    assert first == again
    assert first.value == pytest.approx(np.mean([np.mean(r) for r in returns.values()]) / 10)
    assert first.low < first.value < first.high
    assert score_interval(returns, seed=1) != first


def test_one_episode_per_task_has_no_interval():
    single = {"a": [500.0], "b": [100.0, 200.0]}
    assert score_interval(single) == Interval(pytest.approx(32.5), None, None)
    assert task_interval([3.0]).low is None
    assert verdict(paired_difference(single, single)).startswith("no interval")


@pytest.mark.parametrize("tasks,episodes", [(3, 10), (30, 2)])
def test_score_interval_covers_the_true_score_about_95_percent_of_the_time(tasks, episodes):
    rng = np.random.default_rng(11)
    means = rng.uniform(0, 900, tasks)
    covered = 0
    for trial in range(300):
        returns = {f"t{i}": rng.normal(m, 150, episodes).tolist() for i, m in enumerate(means)}
        interval = score_interval(returns, seed=trial, reps=1000)
        covered += interval.low <= means.mean() / 10 <= interval.high
    assert 0.89 <= covered / 300 <= 0.99


def test_iqm_interval_is_robust_to_one_outlier_task():
    returns = {f"t{i}": [100.0 + j for j in range(6)] for i in range(8)}
    returns["t0"] = [1000.0] * 6
    robust, mean = iqm_interval(returns), score_interval(returns)
    assert robust.value == pytest.approx(2470 / 24 / 10)  # the middle 24 of 48 episodes
    assert mean.value > robust.value + 10


def test_paired_difference_cancels_shared_noise():
    a = _returns(3)
    b = {task: [r - 20.0 for r in rs] for task, rs in a.items()}
    diff = paired_difference(a, b)
    assert diff.value == pytest.approx(2.0) and diff.low == pytest.approx(2.0)
    assert diff.high == pytest.approx(2.0) and not diff.spans_zero
    assert verdict(diff, "int8", "fp16") == "int8 scores higher"
    assert paired_difference(a, a).spans_zero
    assert (
        verdict(paired_difference(a, _returns(4))) == "not distinguishable (the interval spans 0)"
    )


def test_probability_of_improvement():
    a = _returns(5)
    assert probability_of_improvement(a, a).value == pytest.approx(0.5)
    better = {task: [r + 1000.0 for r in rs] for task, rs in a.items()}
    assert probability_of_improvement(better, a).value == 1.0


def test_paired_statistics_refuse_unpaired_inputs():
    with pytest.raises(ValueError, match="same tasks"):
        paired_difference({"a": [1.0, 2.0]}, {"b": [1.0, 2.0]})
    with pytest.raises(ValueError, match="same episodes"):
        paired_difference({"a": [1.0, 2.0]}, {"a": [1.0, 2.0, 3.0]})
    with pytest.raises(ValueError, match="no episodes"):
        score_interval({"a": []})


def test_compare_reports_scores_difference_and_a_task_table():
    a, b = _returns(8, shift=50.0), _returns(9)
    report = compare(a, b)
    assert report["difference"]["value"] == pytest.approx(
        report["a"]["value"] - report["b"]["value"]
    )
    assert set(report["tasks"]) == set(a) and report["episodes_per_task"] == 5
    row = report["tasks"]["t1"]
    assert row["difference"]["value"] == pytest.approx(row["a"] - row["b"])
    assert (
        0
        <= report["probability_of_improvement"]["low"]
        <= report["probability_of_improvement"]["high"]
        <= 1
    )


def test_probability_of_improvement_interval_holds_its_estimate_under_shared_noise():
    """Same-seed episodes share most of their return (the environment), so A beats B on every
    same-seed pair but only about half the cross pairs; the interval must still contain the
    estimate (resampling both agents with shared indices would push it above)."""
    rng = np.random.default_rng(2)
    noise = {f"t{i}": rng.normal(500, 150, 3) for i in range(6)}
    a = {task: list(n + 5.0) for task, n in noise.items()}
    b = {task: list(n) for task, n in noise.items()}
    p = probability_of_improvement(a, b)
    assert p.low <= p.value <= p.high
