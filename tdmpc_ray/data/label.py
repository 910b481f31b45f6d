"""`tdmpc-ray data label`: add a teacher's outputs (reward, value and policy mean: the
deterministic, small ones, `MODEL_LABELS`; on request its planner's distribution) to a Parquet
episode data set, so distillation can read them instead of asking a teacher actor during
training.

Alignment: the label at step s >= 1 is the teacher's output for (obs[s-1], action[s], task), the
pair whose environment reward is reward[s]; step 0 is NaN like reward. So the episode store's
windows (obs[t..t+H], action[t+1..t+H], reward and labels [t+1..t+H]) give label[k] for
(obs[t+k], action[t+1+k]), exactly what the `TeacherActor` answers for that window during
training. Both use `teacher_outputs`, one code path for the math.

Planner labels (`planner`, opt-in: `planner=PlannerConfig(...)`, `data label --mpc`): at step s
the mean and std of the teacher's MPPI distribution over the first action at obs[s-1] (the
state the policy prior sees there), the planner cold-started at every state. Each episode's
T-1 states are planned in one batch, the planner reset and its generator seeded from (`seed`,
episode id), so an episode's labels depend only on the teacher, the settings, the seed and
the device kind, never on which run or actor labelled it. The settings and the seed go into
each part's footer (`provenance.label.planner`); a part counts as labelled only with them.

Pipeline: the parts to label go into a Ray Data pool of teacher replicas (`map_batches` with
`PartLabeler`, `ActorPoolStrategy`; each replica on a GPU share when the cluster has GPUs). A
replica reads a whole part, labels it in batches of `batch_episodes` and writes the labelled part
itself under a temporary name renamed into place, so a part is whole or absent, and the driver
only sees one small summary row per part (its memory does not grow with the data). Labelling
again with another teacher replaces the label columns. A rerun skips every part already
labelled by this teacher (checked in its footer: same layout, source, episode count, teacher
hash and all label columns), so an interrupted run resumes where it stopped. The data set and
the teacher checkpoint must be on a file system every Ray node sees.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import socket
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
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
from tdmpc_ray.model.world_model import TEACHER_TERMS, WorldModel
from tdmpc_ray.planning import Planner, PlannerConfig
from tdmpc_ray.provenance import provenance
from tdmpc_ray.shared_paths import check_shared_paths

log = logging.getLogger(__name__)

BATCH_EPISODES = 64
_READ_COLUMNS = ["episode_id", "task", "obs", "action", "reward"]
MODEL_LABELS = tuple(t for t in TEACHER_COLUMNS if t in TEACHER_TERMS)
"""The labels every run writes: the stored outputs of one teacher forward pass."""


def episode_labels(
    model: WorldModel,
    obs: np.ndarray,
    action: np.ndarray,
    task: np.ndarray,
    terms: tuple[str, ...] = MODEL_LABELS,
) -> dict[str, np.ndarray]:
    """Teacher labels by term, [E, T] (wider outputs such as policy [E, T, width]) float32, for
    episodes obs [E,T,D], action [E,T,A], task [E]: step s >= 1 is the output for
    (obs[s-1], action[s], task), step 0 is NaN."""
    E, T, D = obs.shape
    device = next(model.parameters()).device
    rows = torch.tensor(obs[:, :-1], device=device).view(-1, D)
    actions = torch.tensor(action[:, 1:], device=device).view(-1, action.shape[2])
    tasks = torch.tensor(task, device=device).long().repeat_interleave(T - 1)
    labels = {}
    for term, value in teacher_outputs(model, rows, actions, tasks, terms).items():
        out = np.full((E, T, value.shape[-1]), np.nan, dtype=np.float32)
        out[:, 1:] = value.view(E, T - 1, -1).cpu().numpy()
        labels[term] = out[..., 0] if value.shape[-1] == 1 else out
    return labels


def episode_seed(seed: int, episode_id: int) -> int:
    """The planner's generator seed for one episode's labels: a hash of (seed, episode id), so
    episodes get independent noise whatever part, batch or run labels them."""
    return int(np.random.SeedSequence([seed, episode_id]).generate_state(1)[0])


def planner_labels(
    model: WorldModel,
    cfg: PlannerConfig,
    seed: int,
    obs: np.ndarray,
    task: np.ndarray,
    episode_id: np.ndarray,
) -> np.ndarray:
    """Planner labels [E, T, 2A] float32 (mean, then std; step 0 NaN) for episodes obs
    [E,T,D], task [E], episode_id [E]: step s >= 1 is the teacher's MPPI distribution at
    obs[s-1], every state cold-started, each episode's states one batch seeded by
    `episode_seed`."""
    E, T, _ = obs.shape
    device = next(model.parameters()).device
    planner = Planner(model, cfg, num_envs=T - 1)
    out = np.full((E, T, 2 * model.cfg.action_dim), np.nan, dtype=np.float32)
    for e in range(E):
        planner.reset()
        planner.generator.manual_seed(episode_seed(seed, int(episode_id[e])))
        states = torch.tensor(obs[e, :-1], device=device)  # a copy: Arrow's arrays are read-only
        mean, std = planner.distribution(states, torch.full((T - 1,), int(task[e])))
        out[e, 1:] = torch.cat([mean, std], -1).cpu().numpy()
    return out


def _planner_settings(part: PartInfo) -> dict | None:
    """The planner settings and seed of the part's planner labels, from its footer."""
    footer = part.provenance if isinstance(part.provenance, dict) else {}
    label = footer.get("label")
    return label.get("planner") if isinstance(label, dict) else None


class PartLabeler:
    """Ray Data actor: the teacher on this actor's device, labelling whole part files and
    writing each labelled part itself (atomically); returns one summary row per part."""

    def __init__(
        self, checkpoint: str, task_set: str, dst: str, digest: str, info: dict, batch: int
    ) -> None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = load_world_model(checkpoint, task_set, device=device).requires_grad_(False)
        self.dst, self.digest, self.info, self.batch = Path(dst), digest, info, batch
        self.planner = info.get("planner")  # {"config": PlannerConfig fields, "seed"} or None

    def __call__(self, rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        summaries = [self.label_part(Path(path)) for path in rows["path"]]
        return {key: np.array([s[key] for s in summaries]) for key in summaries[0]}

    def label_part(self, src: Path) -> dict:
        """Label one part and write it under `dst` with the same name."""
        part = read_part_info(src)
        arrays = table_arrays(pq.read_table(src, columns=_READ_COLUMNS))
        labels: dict[str, list[np.ndarray]] = defaultdict(list)
        for start in range(0, len(arrays["task"]), self.batch):
            rows = slice(start, start + self.batch)
            batch = episode_labels(
                self.model, arrays["obs"][rows], arrays["action"][rows], arrays["task"][rows]
            )
            for term, values in batch.items():
                labels[term].append(values)
        teacher = {term: np.concatenate(values) for term, values in labels.items()}
        if self.planner is not None:
            cfg = PlannerConfig(**self.planner["config"])
            teacher["planner"] = planner_labels(
                self.model,
                cfg,
                self.planner["seed"],
                arrays["obs"],
                arrays["task"],
                arrays["episode_id"],
            )
        meta = dataclasses.replace(part.meta, teacher_checkpoint=self.digest)
        table = episodes_to_table(
            meta,
            episode_id=arrays["episode_id"],
            task=arrays["task"],
            obs=arrays["obs"],
            action=arrays["action"],
            reward=arrays["reward"],
            teacher=teacher,
        )
        path = self.dst / src.name
        writer = {"host": socket.gethostname(), "pid": os.getpid()}
        label = {**self.info, "writer": writer}
        num_bytes = write_part(path, table, meta, {**(part.provenance or {}), "label": label})
        totals: dict[int, _TaskTotals] = defaultdict(_TaskTotals)
        for task in np.unique(arrays["task"]):
            mask = arrays["task"] == task
            totals[int(task)].add(arrays["reward"][mask, 1:], teacher["reward"][mask, 1:])
        return {
            "path": str(path),
            "episodes": len(arrays["task"]),
            "num_bytes": num_bytes,
            "totals": json.dumps({task: dataclasses.asdict(t) for task, t in totals.items()}),
        }


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

    def merge(self, other: _TaskTotals) -> None:
        for f in dataclasses.fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


@dataclass(frozen=True)
class LabelSummary:
    """Outcome of a labelling run: parts written, per-task reward vs teacher reward, speed."""

    paths: tuple[Path, ...]
    """Every labelled part of the data set, the ones already labelled included."""
    written: int
    """Parts labelled in this run; the others were already labelled by this teacher."""
    tasks: tuple[str, ...]
    totals: dict[int, _TaskTotals]
    """Per task, over the parts labelled in this run."""
    teacher: Path
    teacher_checkpoint: str
    num_gpus: float
    num_bytes: int
    seconds: float
    planner: dict | None = None
    """Settings and seed of the planner labels; None without them."""

    @property
    def transitions(self) -> int:
        return sum(t.count for t in self.totals.values())

    def format(self) -> str:
        """One screen: per-task mean env and teacher reward and their gap, speed, paths."""
        skipped = len(self.paths) - self.written
        lines = [
            f"labelled {self.written} part(s) with teacher {self.teacher} "
            f"(sha256 {self.teacher_checkpoint[:16]}...) on "
            f"{f'{self.num_gpus:g} GPU per actor' if self.num_gpus else 'CPU'}"
            + (f"; {skipped} part(s) were already labelled by it" if skipped else ""),
            *(
                [
                    f"with planner labels: seed {self.planner['seed']}, MPPI "
                    + " ".join(f"{k}={v}" for k, v in self.planner["config"].items() if k != "mpc")
                ]
                if self.planner
                else []
            ),
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
    """Directory the labelled parts go to: the data set's own (in place) or `out`."""
    source_dir = Path(data) if Path(data).is_dir() else Path(data).parent
    if out is None or Path(out).resolve() == source_dir.resolve():
        return source_dir
    return Path(out)


def _to_label(
    parts: Sequence[PartInfo], dst: Path, digest: str, planner: dict | None = None
) -> list[PartInfo]:
    """The parts not yet labelled by the teacher `digest` in `dst`. A part there counts as
    done only if its footer says so: the source part's layout and source, its episode count,
    that teacher's hash, every label column and, with `planner` settings, planner labels made
    with them. In place, other parts are (re)labelled; in another directory, a part file that
    holds other episodes or another teacher's labels raises ValueError."""
    columns = {TEACHER_COLUMNS[t] for t in (*MODEL_LABELS, *(("planner",) if planner else ()))}
    names = {part.path.name for part in parts}
    if dst.is_dir():
        for stale in dst.glob(".part-*.parquet.*.tmp"):  # a replica stopped while writing
            stale.unlink(missing_ok=True)
        foreign = sorted(p.name for p in dst.glob("part-*.parquet") if p.name not in names)
        if foreign:
            raise ValueError(f"{dst / foreign[0]}: not a part of this data set; use an empty --out")
    in_place = dst.resolve() == parts[0].path.parent.resolve()
    todo = []
    for part in parts:
        path = dst / part.path.name
        if not path.exists():
            todo.append(part)
            continue
        done = read_part_info(path)
        same = done.meta == dataclasses.replace(part.meta, teacher_checkpoint=digest)
        ours = same and done.num_episodes == part.num_episodes
        planned = planner is None or _planner_settings(done) == planner
        if ours and columns.issubset(done.schema.names) and planned:
            continue
        if not in_place and not ours:
            raise ValueError(
                f"{path}: holds other episodes or another teacher's labels; use an empty --out"
            )
        todo.append(part)
    return todo


def _gpus_per_actor(num_actors: int) -> float:
    """A GPU per labelling actor when the cluster has enough, a share of them otherwise. Each
    actor also takes a CPU: with fewer the pool would never fill, so that fails here with one
    line."""
    resources = ray.cluster_resources()
    cpus, gpus = resources.get("CPU", 0.0), resources.get("GPU", 0.0)
    if num_actors > cpus:
        raise ValueError(
            f"--num-actors {num_actors} needs {num_actors} CPUs (one per actor), the Ray "
            f"cluster has {cpus:g}"
        )
    return min(1.0, gpus / num_actors) if gpus else 0.0


def label(
    data: str | os.PathLike,
    teacher: str | os.PathLike,
    out: str | os.PathLike | None = None,
    batch_episodes: int = BATCH_EPISODES,
    num_actors: int = 1,
    progress: bool = True,
    planner: PlannerConfig | None = None,
    seed: int = 0,
) -> LabelSummary:
    """Add the label columns computed by `teacher` (reward, value, policy and, with `planner`
    settings, its MPPI distribution seeded by `seed`) to every part of `data`, in place or into
    `out`, skipping parts already labelled by it. Bad arguments, data or checkpoints fail with
    one line before any actor starts; a failed or interrupted run leaves every part whole: run
    it again to finish."""
    started = time.perf_counter()
    if batch_episodes < 1 or num_actors < 1:
        raise ValueError(
            f"batch_episodes and num_actors must be at least 1, got {batch_episodes}, {num_actors}"
        )
    parts = _read_parts(data)
    meta = parts[0].meta
    teacher = resolve_checkpoint(teacher).resolve()
    model = load_world_model(teacher, meta.task_set)  # an unusable checkpoint fails here
    planned = None
    if planner is not None:
        if not planner.mpc or seed < 0:
            raise ValueError(
                f"planner labels need mpc=true and a seed >= 0, got {planner.mpc}, {seed}"
            )
        Planner(model, planner)  # settings that cannot plan fail here, in one line
        planned = {"config": dataclasses.asdict(planner), "seed": seed}
    dst = _destination(data, out)
    digest = checkpoint_hash(teacher)
    todo = _to_label(parts, dst, digest, planned)
    if not ray.is_initialized():
        ray.init(logging_level=logging.WARNING)
    check_shared_paths({"data": data, "teacher": teacher}, {"out": dst})
    num_gpus = _gpus_per_actor(num_actors)
    if 0 < len(todo) < num_actors:
        log.warning(
            "%d part(s) to label: %d actor(s) start, not %d (a part is one actor's work; "
            "`data generate` and `data convert` write smaller parts with --episodes-per-file)",
            len(todo),
            len(todo),
            num_actors,
        )
        num_actors = len(todo)
    info = {"teacher": str(teacher), "teacher_checkpoint": digest, **provenance()}
    if planned:
        info["planner"] = planned
    totals: dict[int, _TaskTotals] = defaultdict(_TaskTotals)
    written, num_bytes = 0, 0
    total = sum(p.num_episodes for p in todo)
    with tqdm(total=total, unit="episode", desc="label", disable=not progress) as bar:
        for row in _label_rows(
            todo, dst, teacher, meta.task_set, digest, info, batch_episodes, num_actors, num_gpus
        ):
            written += 1
            num_bytes += int(row["num_bytes"])
            for task, sums in json.loads(row["totals"]).items():
                totals[int(task)].merge(_TaskTotals(**sums))
            bar.update(int(row["episodes"]))
    return LabelSummary(
        paths=tuple(dst / part.path.name for part in parts),
        written=written,
        tasks=meta.tasks,
        totals=dict(totals),
        teacher=teacher,
        teacher_checkpoint=digest,
        num_gpus=num_gpus,
        num_bytes=num_bytes,
        seconds=time.perf_counter() - started,
        planner=planned,
    )


def _label_rows(
    todo: Sequence[PartInfo],
    dst: Path,
    teacher: Path,
    task_set: str,
    digest: str,
    info: dict,
    batch_episodes: int,
    num_actors: int,
    num_gpus: float,
):
    """Summary rows of the parts `todo`, labelled and written by a pool of `PartLabeler`s."""
    if not todo:
        return
    dataset = ray.data.from_items([{"path": str(part.path.resolve())} for part in todo])
    dataset = dataset.map_batches(
        PartLabeler,
        fn_constructor_args=(
            str(teacher),
            task_set,
            str(dst.resolve()),
            digest,
            info,
            batch_episodes,
        ),
        batch_size=1,
        compute=ray.data.ActorPoolStrategy(size=num_actors),
        num_cpus=1,
        num_gpus=num_gpus,
    )
    dataset.context.enable_progress_bars = False
    yield from dataset.iter_rows()
