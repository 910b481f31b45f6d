"""Interval estimates of scores, as RL reports now need them (Agarwal et al. 2021, "Deep RL at the
Edge of the Statistical Precipice"; the `rliable` library).

Every statistic comes with a 95% percentile-bootstrap interval. Bootstraps are stratified: episodes
are resampled within each task, never across tasks, so every replicate scores every task. The
paired difference (two agents run on the same environment seeds) resamples the same episode
indices for both agents, which cancels the environment's share of the noise; P(A > B) compares
all episodes of A with all of B, as rliable does, and resamples each agent's independently. Everything is seeded, so a
number can be reproduced exactly. An interval needs at least 2 episodes in every task; with
fewer it is None (one episode says nothing of its own spread).

Inputs are returns by task: `{task: [return of episode 0, 1, ...]}`, returns in [0, 1000] as
DMControl gives them; scores are returns / 10 (TD-MPC2's normalized score, 0..100).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

CONFIDENCE = 0.95
BOOTSTRAP_SAMPLES = 5000
"""Replicates per interval (rliable uses 2000-50000; 5000 keeps percentiles stable to ~0.1
points on MT30 and costs milliseconds)."""
SEED = 0
RETURN_TO_SCORE = 0.1
"""Normalized score of one episode: return / 10."""

Returns = Mapping[str, Sequence[float]]


@dataclass(frozen=True)
class Interval:
    """A point estimate with its bootstrap interval (None where it cannot be estimated)."""

    value: float
    low: float | None
    high: float | None

    @property
    def spans_zero(self) -> bool:
        """Whether 0 lies inside the interval (always True without one): a difference whose
        interval spans zero is not distinguishable from no difference."""
        return self.low is None or self.high is None or self.low <= 0 <= self.high

    def format(self, digits: int = 2) -> str:
        """`31.04 [27.12, 35.01]`, or `31.04 [no interval]`."""
        if self.low is None or self.high is None:
            return f"{self.value:.{digits}f} [no interval]"
        return f"{self.value:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"

    def to_dict(self) -> dict:
        return asdict(self)


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


def _bootstrap(
    samples: Sequence[np.ndarray],
    statistic: Callable[[list[np.ndarray]], np.ndarray],
    seed: int,
    reps: int,
    rescale: bool = False,
) -> Interval:
    """`statistic` of the data, and its percentile interval over `reps` stratified replicates.

    `samples` holds one array per task, [n_task] or [agents, n_task] (paired agents share the
    resampled episode indices). `statistic` maps the list of per-task arrays, each with a leading
    replicate axis, to one value per replicate. `rescale` (for means) spreads each resampled task
    around its own mean by sqrt(n / (n - 1)), the small-sample correction of the bootstrap's
    variance: without it, 2 episodes per task give intervals that cover 75% of the time, not
    95% (docs/decisions.md)."""
    value = float(statistic([s[None] if s.ndim == 1 else s[:, None] for s in samples])[0])
    if min(s.shape[-1] for s in samples) < 2:
        return Interval(value, None, None)
    rng = np.random.default_rng(seed)
    replicates = []
    for s in samples:
        idx = rng.integers(0, s.shape[-1], size=(reps, s.shape[-1]))
        drawn = s[idx] if s.ndim == 1 else s[:, idx]
        if rescale:
            mean = s.mean(-1, keepdims=True)[..., None]
            drawn = mean + np.sqrt(s.shape[-1] / (s.shape[-1] - 1)) * (drawn - mean)
        replicates.append(drawn)
    stats = statistic(replicates)
    alpha = (1 - CONFIDENCE) / 2
    low, high = np.quantile(stats, [alpha, 1 - alpha])
    return Interval(value, float(low), float(high))


def task_interval(
    returns: Sequence[float], seed: int = SEED, reps: int = BOOTSTRAP_SAMPLES
) -> Interval:
    """Mean return of one task's episodes with its bootstrap interval."""
    arrays = _arrays({"task": returns}, "task_interval")
    return _bootstrap(list(arrays.values()), lambda s: s[0].mean(-1), seed, reps, rescale=True)


def _score(per_task: list[np.ndarray]) -> np.ndarray:
    return np.mean([s.mean(-1) for s in per_task], axis=0) * RETURN_TO_SCORE


def _iqm_score(per_task: list[np.ndarray]) -> np.ndarray:
    return iqm(np.concatenate(per_task, axis=-1), axis=-1) * RETURN_TO_SCORE


def score_interval(returns: Returns, seed: int = SEED, reps: int = BOOTSTRAP_SAMPLES) -> Interval:
    """TD-MPC2's normalized score (mean over tasks of mean return / 10) with its stratified
    bootstrap interval."""
    return _bootstrap(list(_arrays(returns, "score").values()), _score, seed, reps, rescale=True)


def iqm_interval(returns: Returns, seed: int = SEED, reps: int = BOOTSTRAP_SAMPLES) -> Interval:
    """Interquartile mean of every episode's score (return / 10, pooled over tasks), with its
    stratified bootstrap interval: robust to the few tasks that score all or nothing."""
    return _bootstrap(list(_arrays(returns, "IQM").values()), _iqm_score, seed, reps)


def _paired(a: Returns, b: Returns) -> list[np.ndarray]:
    """[2, n_task] arrays of A's and B's returns, checked to pair episode by episode."""
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
        pairs.append(np.stack([left, right]))
    return pairs


def _difference(pairs: list[np.ndarray]) -> np.ndarray:
    return np.mean([p[0].mean(-1) - p[1].mean(-1) for p in pairs], axis=0) * RETURN_TO_SCORE


def _improvement(samples: list[np.ndarray]) -> np.ndarray:
    """rliable's P(A > B): per task, the Mann-Whitney probability that an episode of A beats one
    of B (ties count half), averaged over tasks. `samples` holds A's tasks, then B's."""
    half = len(samples) // 2
    per_task = []
    for left, right in zip(samples[:half], samples[half:], strict=True):
        a, b = left[..., :, None], right[..., None, :]
        per_task.append(((a > b) + 0.5 * (a == b)).mean(axis=(-2, -1)))
    return np.mean(per_task, axis=0)


def paired_difference(
    a: Returns, b: Returns, seed: int = SEED, reps: int = BOOTSTRAP_SAMPLES
) -> Interval:
    """Normalized score of A minus B's, with a paired stratified bootstrap interval (episode i of
    a task ran on the same environment seed for both agents)."""
    return _bootstrap(_paired(a, b), _difference, seed, reps, rescale=True)


def probability_of_improvement(
    a: Returns, b: Returns, seed: int = SEED, reps: int = BOOTSTRAP_SAMPLES
) -> Interval:
    """P(A > B) (0.5: no difference) with a stratified bootstrap interval. As in rliable, A's and
    B's episodes are resampled independently within each task: the statistic compares every
    episode of A with every episode of B, so shared indices would weight the same-seed pairs
    above their share in the estimate (the interval could then miss the estimate)."""
    pairs = _paired(a, b)
    return _bootstrap([p[0] for p in pairs] + [p[1] for p in pairs], _improvement, seed, reps)


def bootstrap_record(seed: int = SEED, reps: int = BOOTSTRAP_SAMPLES) -> dict:
    """How the intervals beside it were computed, so they can be reproduced."""
    return {
        "method": "percentile bootstrap, stratified: episodes resampled within each task",
        "samples": reps,
        "seed": seed,
        "confidence": CONFIDENCE,
    }


def score_summary(returns: Returns, seed: int = SEED, reps: int = BOOTSTRAP_SAMPLES) -> dict:
    """The normalized score and the IQM with their intervals as flat fields (`normalized_score`,
    `normalized_score_low`, `normalized_score_high`, `iqm`, `iqm_low`, `iqm_high`; the bounds
    are None without an interval), the episodes per task, and the bootstrap's settings."""
    fields = {}
    for name, interval in (
        ("normalized_score", score_interval(returns, seed, reps)),
        ("iqm", iqm_interval(returns, seed, reps)),
    ):
        fields.update(
            {name: interval.value, f"{name}_low": interval.low, f"{name}_high": interval.high}
        )
    return {
        **fields,
        "episodes_per_task": min(len(r) for r in returns.values()),
        "bootstrap": bootstrap_record(seed, reps),
    }


def verdict(difference: Interval, a: str = "A", b: str = "B") -> str:
    """Plain words for a difference A - B: which is better, or not distinguishable."""
    if difference.low is None:
        return "no interval (needs at least 2 episodes per task)"
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
    intervals, the verdict (naming A and B by `names`), and a per-task table (mean returns and
    their difference with its interval)."""
    difference = paired_difference(a, b, seed, reps)
    tasks = {}
    for task, pair in zip(a, _paired(a, b), strict=True):
        tasks[task] = {
            "a": float(pair[0].mean()),
            "b": float(pair[1].mean()),
            "difference": _bootstrap(
                [pair], lambda p: p[0][0].mean(-1) - p[0][1].mean(-1), seed, reps, rescale=True
            ).to_dict(),
            "episodes": int(pair.shape[1]),
        }
    return {
        "a": score_interval(a, seed, reps).to_dict(),
        "b": score_interval(b, seed, reps).to_dict(),
        "difference": difference.to_dict(),
        "probability_of_improvement": probability_of_improvement(a, b, seed, reps).to_dict(),
        "verdict": verdict(difference, *names),
        "episodes_per_task": min(len(r) for r in a.values()),
        "tasks": tasks,
        "bootstrap": bootstrap_record(seed, reps),
    }
