"""`tdmpc-ray data convert`: TD-MPC2 chunk files -> Parquet episode parts, in parallel on Ray.

The plan is deterministic: each source (in the order given) is cut into ranges of
`episodes_per_file` episodes, part k holds one range of one source and is named
`part-{k:05d}.parquet`; episode ids count up across sources in that order. One Ray task per
part memory-maps its source, reads and validates only its range, and writes the part under a
temporary name before renaming it, so a task's memory is bounded by one part (not by the chunk)
and a part file is whole or absent. A rerun skips parts already present whose footer names the
same source range, so an interrupted conversion resumes where it stopped. When a source holds
a bad episode, the conversion stops with one line naming the file, the episode and the problem,
and removes every part of that source. Sources and destination must be on a file system that
every Ray node sees. Run one conversion per destination at a time.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import ray
from tqdm import tqdm

from tdmpc_ray.data.chunks import ChunkInfo, check_chunk, check_episodes, load_chunk, read_episodes
from tdmpc_ray.data.dataset_info import DatasetInfo, combine_parts, format_bytes, format_task_table
from tdmpc_ray.data.layout import (
    EPISODES_PER_FILE,
    EpisodeMeta,
    episodes_to_table,
    part_name,
    read_part_info,
    write_part,
)
from tdmpc_ray.provenance import provenance
from tdmpc_ray.shared_paths import check_shared_paths
from tdmpc_ray.tasks.task_sets import TaskSet, get_task_set


@dataclass(frozen=True)
class PartPlan:
    """One output part: episodes [start, stop) of `source`, ids from `first_episode_id`."""

    index: int
    source: Path
    start: int
    stop: int
    first_episode_id: int
    source_bytes: int

    @property
    def name(self) -> str:
        return part_name(self.index)

    @property
    def source_tag(self) -> str:
        """What the part's footer records as its source; a resumed run must find the same."""
        return f"{self.source.name}[{self.start}:{self.stop}]"


@dataclass(frozen=True)
class PartResult:
    """What one conversion task did: the part it wrote, or the one-line reason it could not."""

    index: int
    error: str | None = None
    source_bytes: int = 0
    peak_rss_bytes: int = 0


@dataclass(frozen=True)
class ConvertSummary:
    """Outcome of a conversion: the data set written and how fast."""

    dst: Path
    dataset: DatasetInfo
    written: int
    skipped: int
    source_bytes: int
    seconds: float
    driver_peak_rss_bytes: int
    worker_peak_rss_bytes: int

    @property
    def megabytes_per_second(self) -> float:
        """Source bytes converted per second in this run (skipped parts excluded)."""
        return self.source_bytes / 1e6 / self.seconds

    def format(self) -> str:
        """One screen: per-task table, sizes, speed, memory and the paths written."""
        parts = self.dataset.parts
        return "\n".join(
            [
                f"converted into {self.dst}: {len(parts)} parts ({self.written} written, "
                f"{self.skipped} already there), {self.dataset.meta.episode_length} steps "
                f"per episode",
                *format_task_table(self.dataset),
                f"read {format_bytes(self.source_bytes)} in {self.seconds:.1f} s "
                f"({self.megabytes_per_second:.1f} MB/s); "
                f"{format_bytes(self.dataset.num_bytes)} on disk; peak RSS driver "
                f"{format_bytes(self.driver_peak_rss_bytes)}, worker "
                f"{format_bytes(self.worker_peak_rss_bytes)}",
                f"paths: {parts[0].path} .. {parts[-1].path.name}",
            ]
        )


def peak_rss_bytes() -> int:
    """High-water resident set size of this process (Linux /proc; 0 where unavailable)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def plan_parts(chunks: Sequence[ChunkInfo], episodes_per_file: int) -> list[PartPlan]:
    """Cut every source into ranges of `episodes_per_file` episodes, numbered in order."""
    plans: list[PartPlan] = []
    first_id = 0
    for chunk in chunks:
        bytes_per_episode = chunk.num_bytes // chunk.episodes
        for start in range(0, chunk.episodes, episodes_per_file):
            stop = min(start + episodes_per_file, chunk.episodes)
            plans.append(
                PartPlan(
                    index=len(plans),
                    source=chunk.path,
                    start=start,
                    stop=stop,
                    first_episode_id=first_id + start,
                    source_bytes=(stop - start) * bytes_per_episode,
                )
            )
        first_id += chunk.episodes
    return plans


def convert_part(part: PartPlan, dst: Path, task_set: TaskSet, provenance: dict) -> PartResult:
    """Read, validate and write one part (runs as a Ray task)."""
    try:
        data = load_chunk(part.source)
        episodes = read_episodes(data, part.start, part.stop)
        problem = check_episodes(episodes, part.start, len(task_set.tasks))
        if problem:
            return PartResult(part.index, error=f"{part.source}: {problem}")
        meta = EpisodeMeta(
            task_set=task_set.name,
            tasks=task_set.tasks,
            obs_dim=task_set.obs_dim,
            action_dim=task_set.action_dim,
            episode_length=episodes["obs"].shape[1],
            source=part.source_tag,
        )
        table = episodes_to_table(
            meta,
            episode_id=np.arange(
                part.first_episode_id, part.first_episode_id + len(episodes["obs"])
            ),
            task=episodes["task"][:, 0],
            obs=episodes["obs"],
            action=episodes["action"],
            reward=episodes["reward"],
        )
        write_part(dst / part.name, table, meta, provenance)
    except (ValueError, OSError) as err:
        return PartResult(part.index, error=str(err).splitlines()[0])
    return PartResult(part.index, source_bytes=part.source_bytes, peak_rss_bytes=peak_rss_bytes())


def _check_sources(sources: Sequence[str | os.PathLike], task_set: TaskSet) -> list[ChunkInfo]:
    """Open every source and check shapes, equal episode lengths and distinct names."""
    chunks = [check_chunk(source, task_set) for source in sources]
    names = [c.path.name for c in chunks]
    for chunk in chunks:
        if names.count(chunk.path.name) > 1:
            raise ValueError(f"{chunk.path}: two sources are named {chunk.path.name}")
        if chunk.episode_length != chunks[0].episode_length:
            raise ValueError(
                f"{chunk.path}: episodes have {chunk.episode_length} steps, "
                f"{chunks[0].path} has {chunks[0].episode_length}"
            )
    return chunks


def _parts_to_write(plans: Sequence[PartPlan], dst: Path, task_set: TaskSet) -> list[PartPlan]:
    """Plans whose part is not yet in `dst`; raises if `dst` holds parts of another plan."""
    _remove_temporaries(dst)
    planned = {p.name for p in plans}
    foreign = sorted(p.name for p in dst.glob("part-*.parquet") if p.name not in planned)
    if foreign:
        raise ValueError(f"{dst / foreign[0]}: not part of this conversion; use an empty directory")
    todo = []
    for plan in plans:
        path = dst / plan.name
        if not path.exists():
            todo.append(plan)
            continue
        meta = read_part_info(path).meta
        if meta.source != plan.source_tag or meta.task_set != task_set.name:
            raise ValueError(
                f"{path}: holds {meta.task_set} {meta.source}, this conversion plans "
                f"{task_set.name} {plan.source_tag}; use an empty directory"
            )
    return todo


def _remove_temporaries(dst: Path) -> None:
    """Delete half-written parts: a worker interrupted while writing can leave its temporary."""
    for stale in dst.glob(".part-*.parquet.*.tmp"):
        stale.unlink(missing_ok=True)


def _abort(pending: Sequence[ray.ObjectRef]) -> None:
    """Cancel unfinished tasks and wait until none can still write a part."""
    for ref in pending:
        ray.cancel(ref)
    if pending:
        ray.wait(list(pending), num_returns=len(pending))


def _run_parts(
    todo: Sequence[PartPlan],
    plans: Sequence[PartPlan],
    dst: Path,
    task_set: TaskSet,
    progress: bool,
) -> list[PartResult]:
    """Convert `todo` as Ray tasks; on a bad source, stop and delete all of that source's parts."""
    task = ray.remote(num_cpus=1)(convert_part)
    info = provenance()
    pending = {task.remote(plan, dst, task_set, info): plan for plan in todo}
    results, failed = [], None
    with tqdm(
        total=len(todo), unit="part", desc="convert", disable=None if progress else True
    ) as bar:
        try:
            while pending and failed is None:
                (ref,), _ = ray.wait(list(pending), num_returns=1)
                plan = pending.pop(ref)
                result = ray.get(ref)
                if result.error:
                    failed = plan.source, result.error
                else:
                    results.append(result)
                    bar.update()
        finally:
            _abort(list(pending))
            _remove_temporaries(dst)
    if failed:
        source, error = failed
        for plan in plans:
            if plan.source == source:
                (dst / plan.name).unlink(missing_ok=True)
        raise ValueError(error)
    return results


def convert(
    sources: Sequence[str | os.PathLike],
    dst: str | os.PathLike,
    episodes_per_file: int = EPISODES_PER_FILE,
    task_set: str = "mt30",
    progress: bool = True,
) -> ConvertSummary:
    """Convert TD-MPC2 chunk files into Parquet episode parts under `dst` (resumable)."""
    started = time.perf_counter()
    if episodes_per_file < 1:
        raise ValueError(f"--episodes-per-file must be positive, got {episodes_per_file}")
    if not sources:
        raise ValueError("no source files given")
    tasks = get_task_set(task_set)
    plans = plan_parts(_check_sources(sources, tasks), episodes_per_file)
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    todo = _parts_to_write(plans, dst, tasks)
    if todo and not ray.is_initialized():
        ray.init(logging_level=logging.WARNING)
    if todo:
        check_shared_paths({f"source {i}": s for i, s in enumerate(sources)}, {"out": dst})
    results = _run_parts(todo, plans, dst, tasks, progress)
    return ConvertSummary(
        dst=dst,
        dataset=combine_parts([read_part_info(dst / p.name) for p in plans]),
        written=len(results),
        skipped=len(plans) - len(todo),
        source_bytes=sum(r.source_bytes for r in results),
        seconds=time.perf_counter() - started,
        driver_peak_rss_bytes=peak_rss_bytes(),
        worker_peak_rss_bytes=max((r.peak_rss_bytes for r in results), default=0),
    )
