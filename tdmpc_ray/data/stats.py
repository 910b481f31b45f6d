"""Per-task episode-return statistics that merge exactly across files (Chan et al.'s update)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ReturnStats:
    """Count, mean, sum of squared deviations, min and max of episode returns."""

    count: int
    mean: float
    m2: float
    min: float
    max: float

    @property
    def std(self) -> float:
        """Population standard deviation."""
        return math.sqrt(self.m2 / self.count) if self.count else math.nan

    @classmethod
    def of(cls, returns: np.ndarray) -> ReturnStats:
        returns = np.asarray(returns, dtype=np.float64)
        mean = float(returns.mean())
        return cls(
            count=int(returns.size),
            mean=mean,
            m2=float(((returns - mean) ** 2).sum()),
            min=float(returns.min()),
            max=float(returns.max()),
        )

    def merge(self, other: ReturnStats) -> ReturnStats:
        """Statistics of the union of both sets of episodes."""
        count = self.count + other.count
        delta = other.mean - self.mean
        return ReturnStats(
            count=count,
            mean=self.mean + delta * other.count / count,
            m2=self.m2 + other.m2 + delta**2 * self.count * other.count / count,
            min=min(self.min, other.min),
            max=max(self.max, other.max),
        )

    def to_dict(self) -> dict:
        return {
            "count": self.count,
            "mean": self.mean,
            "m2": self.m2,
            "min": self.min,
            "max": self.max,
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> ReturnStats:
        return cls(int(data["count"]), *(float(data[k]) for k in ("mean", "m2", "min", "max")))


def stats_by_task(task: np.ndarray, returns: np.ndarray) -> dict[int, ReturnStats]:
    """Return statistics of each task id present in `task` [E] with returns [E]."""
    return {int(t): ReturnStats.of(returns[task == t]) for t in np.unique(task)}


def merge_by_task(parts: Iterable[Mapping[int, ReturnStats]]) -> dict[int, ReturnStats]:
    """Merge per-task statistics of several files, sorted by task id."""
    merged: dict[int, ReturnStats] = {}
    for stats in parts:
        for task, s in stats.items():
            merged[task] = merged[task].merge(s) if task in merged else s
    return dict(sorted(merged.items()))
