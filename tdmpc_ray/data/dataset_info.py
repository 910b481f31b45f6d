"""What a Parquet episode data set holds, read from its part files' footers only.

Feeds `tdmpc-ray data inspect` and the summary that ends `data convert`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass

from tdmpc_ray.data.layout import EpisodeMeta, PartInfo, list_parts, read_part_info
from tdmpc_ray.data.stats import ReturnStats, merge_by_task


@dataclass(frozen=True)
class DatasetInfo:
    """Parts of a data set, their shared layout and merged per-task return statistics."""

    parts: tuple[PartInfo, ...]
    meta: EpisodeMeta
    stats: dict[int, ReturnStats]

    @property
    def episodes(self) -> int:
        return sum(p.num_episodes for p in self.parts)

    @property
    def num_bytes(self) -> int:
        return sum(p.num_bytes for p in self.parts)


def _shared_layout(meta: EpisodeMeta) -> EpisodeMeta:
    """The facts every part of one data set must agree on (all but the source)."""
    return dataclasses.replace(meta, source="")


def combine_parts(parts: Sequence[PartInfo]) -> DatasetInfo:
    """One data set from part footers; raises ValueError naming a part that does not fit."""
    first = parts[0]
    for part in parts[1:]:
        if _shared_layout(part.meta) != _shared_layout(first.meta) or part.schema != first.schema:
            raise ValueError(f"{part.path}: layout differs from {first.path}")
    stats = merge_by_task(p.stats for p in parts)
    return DatasetInfo(parts=tuple(parts), meta=first.meta, stats=stats)


def dataset_info(path: str | os.PathLike) -> DatasetInfo:
    """Footers of every part under `path` (a directory of parts or one part file)."""
    return combine_parts([read_part_info(p) for p in list_parts(path)])


def format_bytes(num_bytes: float) -> str:
    """Human-readable size in decimal units."""
    for unit in ("B", "kB", "MB"):
        if num_bytes < 1000:
            return f"{num_bytes:.0f} {unit}" if unit == "B" else f"{num_bytes:.1f} {unit}"
        num_bytes /= 1000
    return f"{num_bytes:.1f} GB"


def format_task_table(info: DatasetInfo) -> list[str]:
    """Per-task episodes, steps (E*T, TD-MPC2's buffer count), transitions (E*(T-1)) and
    episode-return statistics (sum over steps, NaN step 0 excluded), plus a total line."""
    T = info.meta.episode_length
    header = (
        f"{'id':>3} {'task':<25} {'episodes':>10} {'steps':>13} {'transitions':>13} "
        f"{'return mean':>11} {'std':>8} {'min':>8} {'max':>8}"
    )
    lines = [header]
    for task, s in info.stats.items():
        name = info.meta.tasks[task] if task < len(info.meta.tasks) else "?"
        lines.append(
            f"{task:>3} {name:<25} {s.count:>10,} {s.count * T:>13,} {s.count * (T - 1):>13,} "
            f"{s.mean:>11.1f} {s.std:>8.1f} {s.min:>8.1f} {s.max:>8.1f}"
        )
    E = info.episodes
    lines.append(f"{'':>3} {'total':<25} {E:>10,} {E * T:>13,} {E * (T - 1):>13,}")
    return lines


def format_inspect(info: DatasetInfo) -> str:
    """The report of `tdmpc-ray data inspect`: layout, schema, per-task table, size."""
    meta = {k: v for k, v in info.meta.to_dict().items() if k not in ("tasks", "source")}
    first, last = info.parts[0], info.parts[-1]
    lines = [
        f"{first.path.parent}: {len(info.parts)} part file(s), {info.episodes:,} episodes, "
        f"{format_bytes(info.num_bytes)} on disk",
        f"layout: {json.dumps(meta)}",
        f"sources: {first.meta.source} .. {last.meta.source}",
        "schema:",
        *("  " + line for line in str(first.schema).splitlines()),
        *format_task_table(info),
    ]
    if first.provenance:
        lines.append(f"written by: {json.dumps(first.provenance)}")
    return "\n".join(lines)
