"""`tdmpc-ray data label`: add a teacher's outputs (reward, value and policy mean: the
deterministic, small ones, `layout.TEACHER_COLUMNS`) to a Parquet episode data set, so
distillation can read them instead of asking a teacher actor during training.

Alignment: the label at step s >= 1 is the teacher's output for (obs[s-1], action[s], task), the
pair whose environment reward is reward[s]; step 0 is NaN like reward. So the episode store's
windows (obs[t..t+H], action[t+1..t+H], reward and labels [t+1..t+H]) give label[k] for
(obs[t+k], action[t+1+k]), exactly what the `TeacherActor` answers for that window during
training. Both use `teacher_outputs`, one code path for the math.

Pipeline: `ray.data.read_parquet` -> `map_batches(TeacherLabeler)` on a pool of actors (each
holding the teacher, on a GPU when the cluster has one) -> the driver gathers each part's rows
(in order) and writes the part with the new column and the teacher's checkpoint hash in its
footer: atomically replacing the part in place, or into `out`. Labelling again replaces the
label columns. An interrupted in-place run leaves every part whole, some with
the new labels: run it again to finish (existing labels are ignored on read). The data set and
the teacher checkpoint must be on a file system every Ray node sees.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import ray
import ray.data
import torch
from tqdm import tqdm

from tdmpc_ray.data.dataset_info import format_bytes
from tdmpc_ray.data.layout import (
    TEACHER_COLUMNS,
    EpisodeMeta,
    PartInfo,
    episodes_to_table,
    list_parts,
    read_part_info,
    table_arrays,
    write_part,
)
from tdmpc_ray.model import checkpoint_hash, load_world_model, teacher_outputs
from tdmpc_ray.model.published import resolve_checkpoint
from tdmpc_ray.model.world_model import WorldModel
from tdmpc_ray.provenance import provenance

BATCH_EPISODES = 64
_READ_COLUMNS = ["episode_id", "task", "obs", "action", "reward", "path"]


def episode_labels(
    model: WorldModel,
    obs: np.ndarray,
    action: np.ndarray,
    task: np.ndarray,
    terms: tuple[str, ...] = tuple(TEACHER_COLUMNS),
) -> dict[str, np.ndarray]:
    """Teacher labels by term, [E, T] (policy [E, T, A]) float32, for episodes obs [E,T,D],
    action [E,T,A], task [E]: step s >= 1 is the output for (obs[s-1], action[s], task), step 0
    is NaN."""
    E, T, D = obs.shape
    device = next(model.parameters()).device
    rows = torch.tensor(obs[:, :-1], device=device).view(-1, D)
    actions = torch.tensor(action[:, 1:], device=device).view(-1, action.shape[2])
    tasks = torch.tensor(task, device=device).long().repeat_interleave(T - 1)
    labels = {}
    for term, value in teacher_outputs(model, rows, actions, tasks, terms).items():
        out = np.full((E, T, value.shape[-1]), np.nan, dtype=np.float32)
        out[:, 1:] = value.view(E, T - 1, -1).cpu().numpy()
        labels[term] = out if term == "policy" else out[..., 0]
    return labels


class TeacherLabeler:
    """Ray Data actor: the teacher on this actor's device, adding its label columns to batches of
    episodes (pyarrow tables in the episode layout)."""

    def __init__(self, checkpoint: str, task_set: str) -> None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = load_world_model(checkpoint, task_set, device=device).requires_grad_(False)

    def __call__(self, batch: pa.Table) -> pa.Table:
        arrays = table_arrays(batch)
        labels = episode_labels(self.model, arrays["obs"], arrays["action"], arrays["task"])
        for term, values in labels.items():
            flat = values.reshape(len(values), -1)
            column = pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), flat.shape[1])
            batch = batch.append_column(TEACHER_COLUMNS[term], column)
        return batch


@dataclass
class _TaskTotals:
    """Running sums over labelled transitions of one task, for the summary."""

    count: int = 0
    reward: float = 0.0
    teacher: float = 0.0
    abs_error: float = 0.0

    def add(self, reward: np.ndarray, teacher: np.ndarray) -> None:
        self.count += reward.size
        self.reward += float(reward.sum(dtype=np.float64))
        self.teacher += float(teacher.sum(dtype=np.float64))
        self.abs_error += float(np.abs(teacher - reward).sum(dtype=np.float64))


@dataclass(frozen=True)
class LabelSummary:
    """Outcome of a labelling run: parts written, per-task reward vs teacher reward, speed."""

    paths: tuple[Path, ...]
    tasks: tuple[str, ...]
    totals: dict[int, _TaskTotals]
    teacher: Path
    teacher_checkpoint: str
    num_gpus: float
    num_bytes: int
    seconds: float

    @property
    def transitions(self) -> int:
        return sum(t.count for t in self.totals.values())

    def format(self) -> str:
        """One screen: per-task mean env and teacher reward and their gap, speed, paths."""
        lines = [
            f"labelled {len(self.paths)} part(s) with teacher {self.teacher} "
            f"(sha256 {self.teacher_checkpoint[:16]}...) on "
            f"{f'{self.num_gpus:g} GPU per actor' if self.num_gpus else 'CPU'}",
            f"{'id':>3} {'task':<25} {'transitions':>13} {'reward':>8} {'teacher':>8} {'|diff|':>8}",
        ]
        for task, t in sorted(self.totals.items()):
            lines.append(
                f"{task:>3} {self.tasks[task]:<25} {t.count:>13,} {t.reward / t.count:>8.3f} "
                f"{t.teacher / t.count:>8.3f} {t.abs_error / t.count:>8.3f}"
            )
        lines += [
            f"{self.transitions:,} transitions in {self.seconds:.1f} s "
            f"({self.transitions / self.seconds:,.0f}/s); {format_bytes(self.num_bytes)} written",
            f"paths: {self.paths[0]} .. {self.paths[-1].name}",
        ]
        return "\n".join(lines)


def _shared_layout(meta: EpisodeMeta) -> EpisodeMeta:
    """What every part must agree on to be labelled together (not source or old labels)."""
    return dataclasses.replace(meta, source="", teacher_checkpoint=None)


def _read_parts(data: str | os.PathLike) -> list[PartInfo]:
    """Footers of the data set's parts; raises ValueError naming a part that does not fit."""
    parts = [read_part_info(path) for path in list_parts(data)]
    for part in parts[1:]:
        if _shared_layout(part.meta) != _shared_layout(parts[0].meta):
            raise ValueError(f"{part.path}: layout differs from {parts[0].path}")
    return parts


def _destination(data: str | os.PathLike, out: str | os.PathLike | None) -> Path:
    """Directory the labelled parts go to: the data set's own (in place) or an empty `out`."""
    source_dir = Path(data) if Path(data).is_dir() else Path(data).parent
    if out is None or Path(out).resolve() == source_dir.resolve():
        return source_dir
    out = Path(out)
    if out.is_dir() and any(out.glob("part-*.parquet")):
        raise ValueError(f"{out}: already holds part files; use an empty directory or no --out")
    return out


class _LabelledPartWriter:
    """Gathers labelled rows per part and writes each part once all of its rows are in."""

    def __init__(self, parts: Sequence[PartInfo], dst: Path, digest: str, label_info: dict):
        self.parts = {part.path.name: part for part in parts}
        self.dst, self.digest, self.label_info = dst, digest, label_info
        self.pending: dict[str, list[pa.Table]] = defaultdict(list)
        self.rows: dict[str, int] = defaultdict(int)
        self.totals: dict[int, _TaskTotals] = defaultdict(_TaskTotals)
        self.written: list[Path] = []
        self.num_bytes = 0

    def add(self, batch: pa.Table) -> None:
        paths = batch.column("path").to_numpy(zero_copy_only=False)
        for name in dict.fromkeys(Path(p).name for p in paths):
            rows = batch.filter(pa.array([Path(p).name == name for p in paths]))
            self.pending[name].append(rows)
            self.rows[name] += len(rows)
            if self.rows[name] == self.parts[name].num_episodes:
                self._write(name)

    def _write(self, name: str) -> None:
        part = self.parts.pop(name)
        arrays = table_arrays(pa.concat_tables(self.pending.pop(name)))
        meta = dataclasses.replace(part.meta, teacher_checkpoint=self.digest)
        table = episodes_to_table(
            meta,
            episode_id=arrays["episode_id"],
            task=arrays["task"],
            obs=arrays["obs"],
            action=arrays["action"],
            reward=arrays["reward"],
            teacher={term: arrays[column] for term, column in TEACHER_COLUMNS.items()},
        )
        info = {**(part.provenance or {}), "label": self.label_info}
        path = self.dst / name
        self.num_bytes += write_part(path, table, meta, info)
        self.written.append(path)
        for task in np.unique(arrays["task"]):
            rows = arrays["task"] == task
            self.totals[int(task)].add(
                arrays["reward"][rows, 1:], arrays["teacher_reward"][rows, 1:]
            )

    def check_complete(self) -> None:
        """Raise if a part's rows did not all come back (the part is then left unchanged)."""
        if self.parts:
            name, part = next(iter(self.parts.items()))
            raise RuntimeError(
                f"{part.path}: {self.rows[name]} of {part.num_episodes} episodes came back labelled"
            )


def _gpus_per_actor(num_actors: int) -> float:
    """A GPU per labelling actor when the cluster has enough, a share of them otherwise. Each
    actor also takes a CPU, and reading needs one more: with fewer the pipeline would stall, so
    that fails here with one line."""
    resources = ray.cluster_resources()
    cpus, gpus = resources.get("CPU", 0.0), resources.get("GPU", 0.0)
    if num_actors + 1 > cpus:
        raise ValueError(
            f"--num-actors {num_actors} needs {num_actors + 1} CPUs (one per actor, one to "
            f"read), the Ray cluster has {cpus:g}"
        )
    return min(1.0, gpus / num_actors) if gpus else 0.0


def label(
    data: str | os.PathLike,
    teacher: str | os.PathLike,
    out: str | os.PathLike | None = None,
    batch_episodes: int = BATCH_EPISODES,
    num_actors: int = 1,
    progress: bool = True,
) -> LabelSummary:
    """Add the label columns computed by `teacher` (reward, value, policy) to every part of `data`, in place
    or into `out`. Bad arguments, data or checkpoints fail with one line before any actor
    starts; with `out`, a failed run removes the parts it wrote."""
    started = time.perf_counter()
    if batch_episodes < 1 or num_actors < 1:
        raise ValueError(
            f"batch_episodes and num_actors must be at least 1, got {batch_episodes}, {num_actors}"
        )
    parts = _read_parts(data)
    meta = parts[0].meta
    teacher = resolve_checkpoint(teacher).resolve()
    load_world_model(teacher, meta.task_set)  # an unusable checkpoint fails here, in one line
    dst = _destination(data, out)
    digest = checkpoint_hash(teacher)
    if not ray.is_initialized():
        ray.init(logging_level=logging.WARNING)
    num_gpus = _gpus_per_actor(num_actors)
    dataset = (
        ray.data.read_parquet([str(p.path.resolve()) for p in parts], include_paths=True)
        .select_columns(_READ_COLUMNS)
        .map_batches(
            TeacherLabeler,
            fn_constructor_args=(str(teacher), meta.task_set),
            batch_size=batch_episodes,
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=num_actors),
            num_cpus=1,
            num_gpus=num_gpus,
        )
    )
    dataset.context.execution_options.preserve_order = True
    dataset.context.enable_progress_bars = False
    info = {"teacher": str(teacher), "teacher_checkpoint": digest, **provenance()}
    writer = _LabelledPartWriter(parts, dst, digest, info)
    total = sum(p.num_episodes for p in parts)
    try:
        with tqdm(total=total, unit="episode", desc="label", disable=not progress) as bar:
            for batch in dataset.iter_batches(batch_size=None, batch_format="pyarrow"):
                writer.add(batch)
                bar.update(len(batch))
        writer.check_complete()
    except BaseException:
        if dst.resolve() != parts[0].path.parent.resolve():  # in place, written parts are whole
            for path in writer.written:
                path.unlink(missing_ok=True)
        raise
    return LabelSummary(
        paths=tuple(writer.written),
        tasks=meta.tasks,
        totals=dict(writer.totals),
        teacher=teacher,
        teacher_checkpoint=digest,
        num_gpus=num_gpus,
        num_bytes=writer.num_bytes,
        seconds=time.perf_counter() - started,
    )
