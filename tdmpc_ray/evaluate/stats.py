"""Interval estimates of scores that keep their promise at the counts users run.

A 95% interval is given only where it covers the true value about 95% of the time (at least
90%) on returns like DMControl's: normal, skewed, and all-or-nothing (bimodal) tasks. Measured
by simulation (tests/test_stats.py, docs/decisions.md), that needs `MIN_EPISODES` episodes per
task, or 2 per task on `MIN_TASKS` tasks or more: with fewer, the episodes of an all-or-nothing
task agree too often for any interval drawn from them to hold, so the interval is None with the
reason `TOO_FEW` ("too few episodes for an interval").

Means and paired differences (the normalized score, a task's mean return, A - B) use Student's t
over the stratified mean: the variance of each task's mean from its own episodes (capped at the
most a bounded return can vary, Popoviciu's range^2 / 4), the degrees of freedom by
Welch-Satterthwaite, bounds clipped to the range returns can take. A percentile
bootstrap of a few episodes is about their range (2 episodes: 42% coverage), which is why the
mean no longer uses one. The IQM and P(A > B), which no formula serves, keep rliable's stratified
percentile bootstrap (Agarwal et al. 2021): episodes resampled within each task; for P(A > B) A's
and B's independently. Everything is seeded, so a number can be reproduced exactly.

Inputs are returns by task: `{task: [return of episode 0, 1, ...]}`, returns in [0, 1000] as
DMControl gives them; scores are returns / 10 (TD-MPC2's normalized score, 0..100).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy.stats import t as student_t

CONFIDENCE = 0.95
BOOTSTRAP_SAMPLES = 5000
"""Replicates per bootstrap interval (rliable uses 2000-50000; 5000 keeps percentiles stable to
~0.1 points on MT30 and costs milliseconds)."""
SEED = 0
RETURN_TO_SCORE = 0.1
"""Normalized score of one episode: return / 10."""
MAX_RETURN = 1000.0
"""Returns lie in [0, MAX_RETURN] (DMControl); intervals are clipped to what they can take."""
MIN_EPISODES = 6
"""Episodes per task an interval needs with fewer than `MIN_TASKS` tasks."""
MIN_TASKS = 5
"""Tasks from which 2 episodes per task suffice: the tasks' errors average out."""
TOO_FEW = "too few episodes for an interval"
NEEDS = f"{MIN_EPISODES} episodes per task, or 2 per task on {MIN_TASKS} or more tasks"
"""What an interval needs, in words."""

Returns = Mapping[str, Sequence[float]]


@dataclass(frozen=True)
class Interval:
    """A point estimate with its 95% interval, or None bounds and the reason (`note`)."""

    value: float
    low: float | None
    high: float | None
    note: str | None = None
    """Why there is no interval (`TOO_FEW`); None when there is one."""

    @property
    def spans_zero(self) -> bool:
        """Whether 0 lies inside the interval (always True without one): a difference whose
        interval spans zero is not distinguishable from no difference."""
        return self.low is None or self.high is None or self.low <= 0 <= self.high

    def format(self, digits: int = 2) -> str:
        """`31.04 [27.12, 35.01]`, or `31.04 [too few episodes for an interval]`."""
        if self.low is None or self.high is None:
            return f"{self.value:.{digits}f} [{self.note or 'no interval'}]"
        return f"{self.value:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"

    def to_dict(self) -> dict:
        return asdict(self)


def interval_note(tasks: int, episodes: int) -> str | None:
    """None where an interval holds for `tasks` tasks of `episodes` episodes each (the fewest
    of any task), else the reason there is none (`TOO_FEW`)."""
    if episodes >= MIN_EPISODES or (episodes >= 2 and tasks >= MIN_TASKS):
        return None
    return TOO_FEW


def iqm(values: np.ndarray, axis: int = -1) -> np.ndarray:
    """Interquartile mean along `axis`: the mean of the middle half (the lowest and highest
    quarter, floor(n/4) values each, are dropped), as scipy's `trim_mean(x, 0.25)`."""
    values = np.sort(np.asarray(values, dtype=np.float64), axis=axis)
    n = values.shape[axis]
    cut = int(0.25 * n)
    return np.take(values, np.arange(cut, n - cut), axis=axis).mean(axis=axis)


def _arrays(returns: Returns, what: str) -> dict[str, np.ndarray]:
    if not returns:
        raise ValueError(f"{what}: no tasks")
    arrays = {task: np.asarray(r, dtype=np.float64) for task, r in returns.items()}
    empty = [task for task, r in arrays.items() if r.size == 0]
    if empty:
        raise ValueError(f"{what}: task {empty[0]!r} has no episodes")
    return arrays


def _mean_interval(per_task: Sequence[np.ndarray], scale: float, difference: bool) -> Interval:
    """`scale` x the mean over tasks of each task's mean, with its Student-t interval: the
    variance of each task's mean from its episodes (n - 1 degrees of freedom each; at most the
    largest variance values in the returns' range can have, range^2 / 4), combined by
    Welch-Satterthwaite; bounds clipped to [0, MAX_RETURN] (or +-MAX_RETURN for `difference`).
    The cap keeps one all-or-nothing task of 2 episodes (0 and 990) from claiming more spread
    than any task can have."""
    value = scale * float(np.mean([s.mean() for s in per_task]))
    note = interval_note(len(per_task), min(s.size for s in per_task))
    if note is not None:
        return Interval(value, None, None, note)
    spread = 2 * MAX_RETURN if difference else MAX_RETURN
    variances = np.array([min(s.var(ddof=1), spread**2 / 4) / s.size for s in per_task])
    dof = np.array([s.size - 1 for s in per_task], dtype=np.float64)
    total = variances.sum()
    df = total**2 / (variances**2 / dof).sum() if total > 0 else dof.sum()
    half = scale * float(student_t.ppf((1 + CONFIDENCE) / 2, df)) * np.sqrt(total) / len(per_task)
    bound = scale * MAX_RETURN
    floor = -bound if difference else 0.0
    return Interval(value, float(max(value - half, floor)), float(min(value + half, bound)))


def _bootstrap(
    samples: Sequence[np.ndarray],
    statistic: Callable[[list[np.ndarray]], np.ndarray],
    seed: int,
    reps: int,
    tasks: int,
) -> Interval:
    """`statistic` of the data, and its percentile interval over `reps` stratified replicates
    (None, with the reason, where `tasks` tasks of their episodes are too few).

    `samples` holds one array [n_task] per task and side. `statistic` maps the list of arrays,
    each with a leading replicate axis, to one value per replicate."""
    value = float(statistic([s[None] for s in samples])[0])
    note = interval_note(tasks, min(s.size for s in samples))
    if note is not None:
        return Interval(value, None, None, note)
    rng = np.random.default_rng(seed)
    replicates = [s[rng.integers(0, s.size, size=(reps, s.size))] for s in samples]
    alpha = (1 - CONFIDENCE) / 2
    low, high = np.quantile(statistic(replicates), [alpha, 1 - alpha])
    return Interval(value, float(low), float(high))


def task_interval(returns: Sequence[float]) -> Interval:
    """Mean return of one task's episodes with its Student-t interval."""
    return _mean_interval(list(_arrays({"task": returns}, "task_interval").values()), 1.0, False)


def _iqm_score(per_task: list[np.ndarray]) -> np.ndarray:
    return iqm(np.concatenate(per_task, axis=-1), axis=-1) * RETURN_TO_SCORE


def score_interval(returns: Returns) -> Interval:
    """TD-MPC2's normalized score (mean over tasks of mean return / 10) with its stratified
    Student-t interval."""
    return _mean_interval(list(_arrays(returns, "score").values()), RETURN_TO_SCORE, False)


def iqm_interval(returns: Returns, seed: int = SEED, reps: int = BOOTSTRAP_SAMPLES) -> Interval:
    """Interquartile mean of every episode's score (return / 10, pooled over tasks), with its
    stratified bootstrap interval: robust to the few tasks that score all or nothing."""
    arrays = list(_arrays(returns, "IQM").values())
    return _bootstrap(arrays, _iqm_score, seed, reps, len(arrays))


def _paired(a: Returns, b: Returns) -> list[tuple[np.ndarray, np.ndarray]]:
    """A's and B's returns per task, checked to pair episode by episode."""
    a_arrays, b_arrays = _arrays(a, "A"), _arrays(b, "B")
    if set(a_arrays) != set(b_arrays):
        only = sorted(set(a_arrays) ^ set(b_arrays))[0]
        raise ValueError(f"paired comparison needs the same tasks; {only!r} is in only one")
    pairs = []
    for task, left in a_arrays.items():
        right = b_arrays[task]
        if left.shape != right.shape:
            raise ValueError(
                f"paired comparison needs the same episodes; {task!r} has {left.size} vs {right.size}"
            )
        pairs.append((left, right))
    return pairs


def _improvement(samples: list[np.ndarray]) -> np.ndarray:
    """rliable's P(A > B): per task, the Mann-Whitney probability that an episode of A beats one
    of B (ties count half), averaged over tasks. `samples` holds A's tasks, then B's."""
    half = len(samples) // 2
    per_task = []
    for left, right in zip(samples[:half], samples[half:], strict=True):
        a, b = left[..., :, None], right[..., None, :]
        per_task.append(((a > b) + 0.5 * (a == b)).mean(axis=(-2, -1)))
    return np.mean(per_task, axis=0)


def tie_share(a: Returns, b: Returns) -> float:
    """The share of (episode of A, episode of B) pairs of the same task that tie, averaged over
    tasks as P(A > B) averages them: each counts half there, so with many ties (tasks where
    both score 0, say) P(A > B) can sit above 0.5 while A - B is negative."""
    return float(np.mean([(x[:, None] == y[None, :]).mean() for x, y in _paired(a, b)]))


def paired_difference(a: Returns, b: Returns) -> Interval:
    """Normalized score of A minus B's, with the Student-t interval of the per-episode
    differences (episode i of a task ran on the same environment seed for both agents, so the
    environment's share of the noise cancels)."""
    return _mean_interval([x - y for x, y in _paired(a, b)], RETURN_TO_SCORE, True)


def probability_of_improvement(
    a: Returns, b: Returns, seed: int = SEED, reps: int = BOOTSTRAP_SAMPLES
) -> Interval:
    """P(A > B) (0.5: no difference; an episode tied with one of B counts half) with a
    stratified bootstrap interval. As in rliable, A's and B's episodes are resampled
    independently within each task: the statistic compares every episode of A with every
    episode of B, so shared indices would weight the same-seed pairs above their share in the
    estimate (the interval could then miss the estimate)."""
    pairs = _paired(a, b)
    samples = [x for x, _ in pairs] + [y for _, y in pairs]
    return _bootstrap(samples, _improvement, seed, reps, len(pairs))


def interval_record(seed: int = SEED, reps: int = BOOTSTRAP_SAMPLES) -> dict:
    """How the intervals beside it were computed, so they can be reproduced."""
    return {
        "method": "Student-t over the stratified mean (Welch-Satterthwaite df) for scores and "
        "differences; stratified percentile bootstrap for IQM and P(A > B)",
        "samples": reps,
        "seed": seed,
        "confidence": CONFIDENCE,
        "needs": NEEDS,
    }


def score_summary(returns: Returns, seed: int = SEED, reps: int = BOOTSTRAP_SAMPLES) -> dict:
    """The normalized score and the IQM with their intervals as flat fields (`normalized_score`,
    `normalized_score_low`, `normalized_score_high`, `normalized_score_note`, the same for
    `iqm`; without an interval the bounds are None and the note says why), the episodes per
    task, and how the intervals were computed (`intervals`)."""
    fields = {}
    for name, interval in (
        ("normalized_score", score_interval(returns)),
        ("iqm", iqm_interval(returns, seed, reps)),
    ):
        fields.update(
            {
                name: interval.value,
                f"{name}_low": interval.low,
                f"{name}_high": interval.high,
                f"{name}_note": interval.note,
            }
        )
    return {
        **fields,
        "episodes_per_task": min(len(r) for r in returns.values()),
        "intervals": interval_record(seed, reps),
    }


def verdict(difference: Interval, a: str = "A", b: str = "B") -> str:
    """Plain words for a difference A - B: which is better, or not distinguishable."""
    if difference.low is None:
        return f"{difference.note or TOO_FEW} (an interval needs {NEEDS})"
    if difference.spans_zero:
        return "not distinguishable (the interval spans 0)"
    return f"{a} scores higher" if difference.value > 0 else f"{b} scores higher"


def compare(
    a: Returns,
    b: Returns,
    seed: int = SEED,
    reps: int = BOOTSTRAP_SAMPLES,
    names: tuple[str, str] = ("A", "B"),
) -> dict:
    """Everything a paired comparison reports: both scores, their difference and P(A > B) with
    intervals, the share of tied episode pairs (`tie_share`), the verdict (naming A and B by `names`), and a per-task table (mean returns and
    their difference with its interval)."""
    difference = paired_difference(a, b)
    tasks = {
        task: {
            "a": float(x.mean()),
            "b": float(y.mean()),
            "difference": _mean_interval([x - y], 1.0, True).to_dict(),
            "episodes": int(x.size),
        }
        for task, (x, y) in zip(a, _paired(a, b), strict=True)
    }
    return {
        "a": score_interval(a).to_dict(),
        "b": score_interval(b).to_dict(),
        "difference": difference.to_dict(),
        "probability_of_improvement": probability_of_improvement(a, b, seed, reps).to_dict(),
        "ties": tie_share(a, b),
        "verdict": verdict(difference, *names),
        "episodes_per_task": min(len(r) for r in a.values()),
        "tasks": tasks,
        "intervals": interval_record(seed, reps),
    }
