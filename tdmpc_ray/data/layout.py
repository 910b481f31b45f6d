"""The Parquet episode layout (DESIGN.md): one row per episode, files `part-NNNNN.parquet`, zstd.

Columns: `episode_id` int64, `task` int32, `obs` fixed_size_list<float32>[T*obs_dim],
`action` fixed_size_list<float32>[T*action_dim] (step 0 NaN), `reward`
fixed_size_list<float32>[T] (step 0 NaN), and optional teacher labels (`TEACHER_COLUMNS`, one
per stored teacher output): `teacher_reward` and `teacher_value` fixed_size_list<float32>[T],
`teacher_policy` fixed_size_list<float32>[T*action_dim], `teacher_planner`
fixed_size_list<float32>[T*2*action_dim] (mean then std; step 0 NaN).
Step t of `action`/`reward` is the action that led to observation t and the reward it earned,
exactly as in TD-MPC2's public data set, so step 0 has none; teacher label step t is the
teacher's output for that same pair (obs t-1, action t). Parts hold `EPISODES_PER_FILE`
episodes by default (about 62 MB of float32 for MT30).

The file's key-value metadata holds one JSON document under the key `tdmpc_ray`: the layout
facts (`EpisodeMeta`: task set, task names, dims, T, source, teacher checkpoint hash), the
per-task return statistics of the file's episodes (so `data inspect` and conversion summaries
read only footers), and the provenance of the writer.

Float columns are written with byte-stream-split encoding (smaller and faster for floats under
zstd), no dictionary and no min/max statistics; row groups hold `ROW_GROUP_EPISODES` episodes,
the unit in which the episode store streams and shuffles data bigger than memory.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tdmpc_ray.atomic import atomic_path
from tdmpc_ray.data.stats import ReturnStats, stats_by_task
from tdmpc_ray.model.world_model import TEACHER_OUTPUTS

FORMAT_VERSION = 1
METADATA_KEY = b"tdmpc_ray"
ROW_GROUP_EPISODES = 128
EPISODES_PER_FILE = 1000
TEACHER_COLUMNS = {name: out.column for name, out in TEACHER_OUTPUTS.items() if out.cached}
"""Teacher output -> its label column: the stored ones of `model.TEACHER_OUTPUTS` (a next-state
latent is 20-57x an observation, so it is always served by the teacher actor)."""
STEP_COLUMNS = ("obs", "action", "reward", *TEACHER_COLUMNS.values())
_FLOAT_LEAVES = [f"{name}.list.element" for name in STEP_COLUMNS]


@dataclass(frozen=True)
class EpisodeMeta:
    """Layout facts stored in every part file's footer."""

    task_set: str
    tasks: tuple[str, ...]
    obs_dim: int
    action_dim: int
    episode_length: int
    source: str
    teacher_checkpoint: str | None = None
    """Hash of the teacher checkpoint that produced the teacher labels; None without labels."""

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "tasks": list(self.tasks)}

    @classmethod
    def from_dict(cls, data: Mapping) -> EpisodeMeta:
        fields = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in fields}
        return cls(**{**kwargs, "tasks": tuple(kwargs["tasks"])})


@dataclass(frozen=True)
class PartInfo:
    """What a part file's footer says: layout, per-task return statistics, size."""

    path: Path
    meta: EpisodeMeta
    stats: dict[int, ReturnStats]
    num_episodes: int
    num_bytes: int
    schema: pa.Schema
    provenance: dict | None


def part_name(index: int) -> str:
    """File name of the `index`-th part of a data set."""
    return f"part-{index:05d}.parquet"


def list_parts(path: str | os.PathLike) -> list[Path]:
    """The part files of a data set directory (sorted), or `[path]` for a single file."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such file or directory")
    parts = sorted(path.glob("part-*.parquet"))
    if not parts:
        raise FileNotFoundError(f"{path}: no part-*.parquet files")
    return parts


def episode_schema(meta: EpisodeMeta, teacher: Mapping[str, int] | None = None) -> pa.Schema:
    """Arrow schema of a part file with `meta`'s dims and the label columns of `teacher` outputs
    (name -> floats per step), without the footer metadata."""
    T = meta.episode_length
    fields = [
        pa.field("episode_id", pa.int64(), nullable=False),
        pa.field("task", pa.int32(), nullable=False),
        pa.field("obs", pa.list_(pa.float32(), T * meta.obs_dim), nullable=False),
        pa.field("action", pa.list_(pa.float32(), T * meta.action_dim), nullable=False),
        pa.field("reward", pa.list_(pa.float32(), T), nullable=False),
    ]
    for term, column in TEACHER_COLUMNS.items():
        if term in (teacher or {}):
            size = T * teacher[term]
            fields.append(pa.field(column, pa.list_(pa.float32(), size), nullable=False))
    return pa.schema(fields)


def terms_labelled_in(names: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """The teacher terms whose label columns are among column `names`."""
    return tuple(term for term, column in TEACHER_COLUMNS.items() if column in names)


def _fixed_list(array: np.ndarray) -> pa.FixedSizeListArray:
    """[E, ...] float32 array as a fixed-size list per episode, sharing its memory."""
    flat = np.ascontiguousarray(array, dtype=np.float32).reshape(-1)
    return pa.FixedSizeListArray.from_arrays(pa.array(flat), flat.size // len(array))


def episodes_to_table(
    meta: EpisodeMeta,
    episode_id: np.ndarray,
    task: np.ndarray,
    obs: np.ndarray,
    action: np.ndarray,
    reward: np.ndarray,
    teacher: Mapping[str, np.ndarray] | None = None,
) -> pa.Table:
    """Arrow table of E episodes from arrays [E], [E], [E,T,obs], [E,T,act], [E,T] and teacher
    labels by term ([E,T], policy [E,T,act])."""
    teacher = teacher or {}
    columns = [
        pa.array(episode_id, pa.int64()),
        pa.array(task, pa.int32()),
        _fixed_list(obs),
        _fixed_list(action),
        _fixed_list(reward),
    ]
    widths = {t: int(np.prod(teacher[t].shape[2:])) for t in TEACHER_COLUMNS if t in teacher}
    columns += [_fixed_list(teacher[term]) for term in widths]
    schema = episode_schema(meta, teacher=widths)
    return pa.Table.from_arrays(columns, schema=schema)


def write_part(
    path: str | os.PathLike, table: pa.Table, meta: EpisodeMeta, provenance: dict | None = None
) -> int:
    """Write `table` as one part file atomically, with `meta` and return statistics in its
    footer; returns the file size in bytes."""
    teacher = terms_labelled_in(table.column_names)
    T = meta.episode_length
    widths = {t: _list_size(table.column(TEACHER_COLUMNS[t])) // T for t in teacher}
    if table.schema != episode_schema(meta, widths):
        raise ValueError(f"{path}: table schema does not match the episode layout of {meta}")
    if teacher and meta.teacher_checkpoint is None:
        raise ValueError(f"{path}: teacher labels need the teacher checkpoint hash in meta")
    arrays = table_arrays(table)
    stats = stats_by_task(arrays["task"], np.nansum(arrays["reward"], axis=1))
    footer = {
        "format": FORMAT_VERSION,
        **meta.to_dict(),
        "stats": {str(task): s.to_dict() for task, s in stats.items()},
        "provenance": provenance,
    }
    table = table.replace_schema_metadata({METADATA_KEY: json.dumps(footer).encode()})
    leaves = [leaf for leaf in _FLOAT_LEAVES if leaf.split(".")[0] in table.column_names]
    with atomic_path(path) as tmp:
        pq.write_table(
            table,
            tmp,
            compression="zstd",
            row_group_size=ROW_GROUP_EPISODES,
            use_dictionary=["episode_id", "task"],
            write_statistics=["episode_id", "task"],
            use_byte_stream_split=leaves,
        )
    return Path(path).stat().st_size


def read_part_info(path: str | os.PathLike) -> PartInfo:
    """Footer of one part file; raises ValueError if it is not in our episode layout."""
    path = Path(path)
    try:
        metadata = pq.read_metadata(path)
    except (OSError, pa.ArrowException) as err:
        raise ValueError(f"{path}: not a readable Parquet file ({err})") from None
    raw = (metadata.metadata or {}).get(METADATA_KEY)
    if raw is None:
        raise ValueError(
            f"{path}: no {METADATA_KEY.decode()} metadata: not a tdmpc_ray episode file"
        )
    try:
        footer = json.loads(raw)
        if not isinstance(footer, dict):
            raise TypeError(f"a JSON {type(footer).__name__}, not an object")
        if footer.get("format") != FORMAT_VERSION:
            raise ValueError(f"episode layout format {footer.get('format')!r} is not supported")
        meta = EpisodeMeta.from_dict(footer)
        stats = {int(k): ReturnStats.from_dict(v) for k, v in footer["stats"].items()}
    except (ValueError, TypeError, KeyError, AttributeError) as err:
        why = f"missing key {err}" if isinstance(err, KeyError) else str(err).splitlines()[0]
        raise ValueError(f"{path}: bad {METADATA_KEY.decode()} metadata: {why}") from None
    return PartInfo(
        path=path,
        meta=meta,
        stats=stats,
        num_episodes=metadata.num_rows,
        num_bytes=path.stat().st_size,
        schema=metadata.schema.to_arrow_schema().remove_metadata(),
        provenance=footer.get("provenance"),
    )


def fixed_list_to_numpy(column: pa.Array | pa.ChunkedArray, step_size: int) -> np.ndarray:
    """[E, T, step_size] float32 view of a list column holding T*step_size floats per episode
    (`step_size` 1 gives [E, T]). Zero-copy for an array or a single-chunk column; a column
    of several chunks is joined once."""
    if isinstance(column, pa.ChunkedArray):
        column = column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()
    values = column.flatten().to_numpy(zero_copy_only=True)
    episodes = len(column)
    if episodes == 0 or values.size % (episodes * step_size):
        raise ValueError(
            f"list column of {values.size} floats does not split into {episodes} episodes"
        )
    shape = (episodes, values.size // (episodes * step_size), step_size)
    return values.reshape(shape[:2] if step_size == 1 else shape)


def table_arrays(table: pa.Table | pa.RecordBatch) -> dict[str, np.ndarray]:
    """Numpy views of an episode table: `task` [E], `obs` [E,T,obs_dim], `action`
    [E,T,action_dim], `reward` [E,T] and, when present, `episode_id` [E] and the teacher label
    columns ([E,T], `teacher_policy` [E,T,action_dim]). Dims are read from the list sizes (T from `reward`), so Ray Data batches that lost
    the footer metadata work too."""
    reward = fixed_list_to_numpy(table.column("reward"), 1)
    T = reward.shape[1]
    out = {"task": table.column("task").to_numpy(), "reward": reward}
    for name in ("obs", "action", *TEACHER_COLUMNS.values()):
        if name in table.column_names:
            column = table.column(name)
            out[name] = fixed_list_to_numpy(column, _list_size(column) // T)
    if "episode_id" in table.column_names:
        out["episode_id"] = table.column("episode_id").to_numpy()
    return out


def _list_size(column: pa.Array | pa.ChunkedArray) -> int:
    """Values per episode of a list column."""
    if pa.types.is_fixed_size_list(column.type):
        return column.type.list_size
    first = column[0].values if len(column) else []
    return len(first)
