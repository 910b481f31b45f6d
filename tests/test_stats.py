"""Interval estimates: Student-t means and differences that cover at the counts users run,
stratified bootstraps for the IQM and P(A > B), and "too few episodes" where none holds."""

from __future__ import annotations

import numpy as np
import pytest

from tdmpc_ray.evaluate.stats import (
    MIN_EPISODES,
    MIN_TASKS,
    TOO_FEW,
    Interval,
    compare,
    interval_note,
    iqm,
    iqm_interval,
    paired_difference,
    probability_of_improvement,
    score_interval,
    score_summary,
    task_interval,
    verdict,
)


def _returns(seed: int, tasks: int = 6, episodes: int = 6, shift: float = 0.0) -> dict:
    rng = np.random.default_rng(seed)
    return {
        f"t{i}": list(np.clip(rng.normal(100 * i + shift, 80, episodes), 0, 1000))
        for i in range(tasks)
    }


FAMILIES = ("normal", "skewed", "bimodal")


def _task(family: str, rng: np.random.Generator) -> tuple[float, object]:
    """A task's true mean return and a sampler of its episodes, drawn like DMControl's tasks:
    normal around a level, right-skewed, or all-or-nothing (success near 870 with probability
    p in [0.2, 0.8], else near 30)."""
    if family == "normal":
        mean, std = rng.uniform(150, 850), rng.uniform(20, 150)
        return mean, lambda n: rng.normal(mean, std, n)
    if family == "skewed":
        a, b = rng.uniform(0.5, 1.5), rng.uniform(2, 6)
        return 1000 * a / (a + b), lambda n: 1000 * rng.beta(a, b, n)
    p = rng.uniform(0.2, 0.8)
    hit, miss = 1000 * 20 / 23, 1000 / 31

    def sample(n: int) -> np.ndarray:
        success = rng.random(n) < p
        return 1000 * np.where(success, rng.beta(20, 3, n), rng.beta(1, 30, n))

    return p * hit + (1 - p) * miss, sample


def coverage(tasks: int, episodes: int, family: str, trials: int = 300, seed: int = 0):
    """How often `score_interval`'s interval holds the true score over `trials` draws of
    `tasks` tasks of `family` ("mixed": the three families in turn), and how often it gives
    one (None: never)."""
    rng = np.random.default_rng(seed)
    covered = given = 0
    for _ in range(trials):
        kinds = [FAMILIES[i % 3] if family == "mixed" else family for i in range(tasks)]
        drawn = [_task(kind, rng) for kind in kinds]
        truth = np.mean([mean for mean, _ in drawn]) / 10
        interval = score_interval({f"t{i}": s(episodes) for i, (_, s) in enumerate(drawn)})
        if interval.low is not None:
            given += 1
            covered += interval.low <= truth <= interval.high
    return covered / given if given else None


COUNTS = [(1, 2), (1, 3), (1, 5), (1, 10), (2, 2), (2, 3), (2, 5), (2, 10), (6, 2), (30, 2)]


@pytest.mark.parametrize("tasks,episodes", COUNTS)
def test_intervals_cover_at_least_90_percent_or_say_too_few_episodes(tasks, episodes):
    """At every count users print, on normal, skewed and all-or-nothing tasks (and, from 6
    tasks, a mix of the three), the 95% interval covers the true score at least 90% of the
    time; where no method can (a few episodes of an all-or-nothing task agree too often),
    there is no interval, and the reason says so."""
    families = FAMILIES + (("mixed",) if tasks >= 3 else ())
    found = {family: coverage(tasks, episodes, family) for family in families}
    if episodes < MIN_EPISODES and tasks < MIN_TASKS:
        assert set(found.values()) == {None}
        assert interval_note(tasks, episodes) == TOO_FEW
    else:
        assert all(0.90 <= c <= 0.995 for c in found.values()), found


def test_a_t_interval_of_two_episodes_is_wide_and_a_single_task_needs_six():
    """The issue's walker-walk returns 326.5 and 231.0: a percentile bootstrap made them
    [211.2, 346.3]; Student's t with 1 degree of freedom gives about +-607, so 2 episodes
    alone get no interval; 6 episodes do."""
    assert task_interval([326.5, 231.0]) == Interval(278.75, None, None, TOO_FEW)
    six = [326.5, 231.0, 300.0, 280.0, 250.0, 310.0]
    half = 2.5706 * np.std(six, ddof=1) / np.sqrt(6)  # t quantile for 5 degrees of freedom
    assert task_interval(six) == Interval(
        pytest.approx(np.mean(six)),
        pytest.approx(np.mean(six) - half, abs=0.01),
        pytest.approx(np.mean(six) + half, abs=0.01),
    )
    assert task_interval([990.0, 10.0, 990.0, 10.0, 990.0, 10.0]).low == 0.0  # clipped


def test_a_score_has_one_interval_whatever_the_bootstrap_seed():
    """The quickstart's summary printed two intervals for one student (its evaluation's and its
    comparison's bootstraps, seeds 0 and 1): a score's interval now has no seed."""
    a, b = _returns(1), _returns(2)
    summary = score_summary(a)
    shown = Interval(
        summary["normalized_score"],
        summary["normalized_score_low"],
        summary["normalized_score_high"],
    )
    assert compare(a, b, seed=0)["a"] == compare(a, b, seed=1)["a"] == shown.to_dict()


def test_a_task_cannot_claim_more_spread_than_a_bounded_return():
    """One all-or-nothing task of 2 episodes (0, 990) among steady ones: its variance is capped
    at 1000^2 / 4, the most a return in [0, 1000] can have."""
    steady = {f"t{i}": [500.0, 510.0] for i in range(30)}
    with_jump = score_interval({**steady, "t0": [0.0, 990.0]})
    spread = np.sqrt(1000.0**2 / 4 / 2 + 29 * 50 / 2) / 30 / 10  # uncapped: sqrt(990^2 / 4)
    assert with_jump.high - with_jump.value == pytest.approx(12.7 * spread, rel=0.05)  # ~1 df


def test_score_interval_is_deterministic_and_brackets_the_score():
    returns = _returns(0)
    first = score_interval(returns)
    assert first == score_interval(returns)
    assert first.value == pytest.approx(np.mean([np.mean(r) for r in returns.values()]) / 10)
    assert first.low < first.value < first.high


def test_too_few_episodes_have_no_interval_and_say_so():
    single = {"a": [500.0], "b": [100.0, 200.0]}
    assert score_interval(single) == Interval(pytest.approx(32.5), None, None, TOO_FEW)
    assert task_interval([3.0]).low is None
    assert score_interval(single).format() == "32.50 [too few episodes for an interval]"
    assert verdict(paired_difference(single, single)).startswith(TOO_FEW)
    four = {"a": [1.0, 2.0], "b": [3.0, 5.0]}
    assert iqm_interval(four).note == probability_of_improvement(four, four).note == TOO_FEW
    assert score_interval(_returns(1, tasks=MIN_TASKS, episodes=2)).low is not None


def test_iqm_drops_the_lowest_and_highest_quarter():
    assert iqm(np.array([0.0, 1, 2, 3, 4, 5, 6, 1000])) == pytest.approx(3.5)
    assert iqm(np.array([[1.0, 2, 3, 4], [10, 0, 0, 10]])).tolist() == [2.5, 5.0]


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
    assert set(report["tasks"]) == set(a) and report["episodes_per_task"] == 6
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
