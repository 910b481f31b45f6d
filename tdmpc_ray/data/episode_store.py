"""Training-side episode store: resident episodes in contiguous tensors, sampled as TD-MPC2
training windows.

Sampling matches TD-MPC2's `Buffer` (a torchrl `SliceSampler` with `traj_key='episode'`,
`slice_len=H+1`, `strict_length=True`, then `action = td['action'][1:]`,
`reward = td['reward'][1:]`, `task = td['task'][0]`): a window is H+1 consecutive steps
t..t+H of one episode, t uniform in [0, T-H-1]; it returns obs[t..t+H] and action[t+1..t+H],
reward[t+1..t+H], since step s of the stored action/reward is the one that led to obs s (step 0
is NaN and never returned). obs[t+k] is therefore paired with the action taken from it and the
reward that action earned. The reference draws an episode uniformly, then a start uniformly in
it; with every episode T steps long that is exactly uniform over all (episode, start) pairs,
which is how this store draws them: one randint, integer index math, one gather per field.

Loading streams the source's blocks into storage allocated once: when the number of episodes
is known (Parquet footers, or `max_resident_episodes`), storage of that size; otherwise (a Ray
shard) into host chunks of about `CHUNK_BYTES` as blocks arrive, then chunk by chunk into storage
of the exact size, each chunk freed once moved. Host memory stays near the episodes' size plus
one chunk, since fresh storage's pages are committed only when written (not the whole source as
Arrow plus its copy).

Placement: on `device` when it is a CUDA device and the episodes take less than 1/2.5 of its
free memory (TD-MPC2's own heuristic), else in pinned host memory when CUDA is available, else in
plain host memory; batches are returned on `device`.

Rotation (`max_resident_episodes=M`, for data bigger than memory): the store keeps M episode
slots as a ring. The source is streamed endlessly: Parquet row groups (`ROW_GROUP_EPISODES`
episodes each) in a fresh seeded shuffle every pass, Ray sources in their own order. Every
`rotate_every` calls to `sample` (or on an explicit `rotate()`), the oldest `rotate_episodes`
slots (default M/20) are overwritten with the next episodes of the stream, which a background
thread has already read. So each episode stays resident for M/rotate_episodes rotations, sampling
is uniform over the resident episodes, and every episode is resident once per pass (near a pass
boundary an episode can briefly hold two slots).
"""

from __future__ import annotations

import itertools
import os
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from tdmpc_ray.data.layout import TEACHER_COLUMNS, list_parts, table_arrays, terms_labelled_in
from tdmpc_ray.devices import to_device

GPU_HEADROOM = 2.5
CHUNK_BYTES = 256 << 20
"""Host chunk size while loading a source of unknown size."""
STEP_FIELDS = ("obs", "action", "reward", *TEACHER_COLUMNS.values())
EPISODE_FIELDS = ("episode_id", "task")
_COLUMNS = (*EPISODE_FIELDS, *STEP_FIELDS)

Arrays = dict[str, np.ndarray]
TablePasses = Callable[[int], Iterable[pa.Table]]


class Batch(NamedTuple):
    """TD-MPC2 training windows, time-major."""

    obs: torch.Tensor
    """[H+1, B, obs_dim] float32"""
    action: torch.Tensor
    """[H, B, action_dim] float32"""
    reward: torch.Tensor
    """[H, B, 1] float32"""
    task: torch.Tensor
    """[B] int64"""
    teacher: dict[str, torch.Tensor]
    """Teacher outputs by term (`teacher_outputs`): [S, B, width] for the first S <= H steps,
    paired like `reward` (obs[t+k], action[t+1+k]); the data set's labels, or the actor's."""


def batch_to(batch: Batch, device: torch.device | str) -> Batch:
    """`batch` with every tensor on `device` (`to_device`)."""
    move = lambda x: to_device(x, device)  # noqa: E731
    return Batch(*(move(x) for x in batch[:4]), {k: move(v) for k, v in batch.teacher.items()})


def _as_table(batch: Any) -> pa.Table:
    """Arrow table of a pyarrow Table/RecordBatch or pandas DataFrame batch (whose NaN stay
    NaN: `Table.from_pandas` would turn them into nulls)."""
    if isinstance(batch, pa.Table):
        return batch
    if isinstance(batch, pa.RecordBatch):
        return pa.Table.from_batches([batch])
    columns = [pa.array(batch[name].to_numpy(), from_pandas=False) for name in batch.columns]
    return pa.Table.from_arrays(columns, names=[str(name) for name in batch.columns])


def _parquet_passes(paths: Sequence[Path], seed: int | None) -> TablePasses:
    """Row groups of the part files: in file order, or reshuffled each pass when seeded."""
    units = [(path, g) for path in paths for g in range(pq.ParquetFile(path).num_row_groups)]

    def tables(pass_index: int) -> Iterator[pa.Table]:
        order = range(len(units))
        if seed is not None:
            order = np.random.default_rng([seed, pass_index]).permutation(len(units))
        for i in order:
            path, group = units[i]
            file = pq.ParquetFile(path)
            columns = [c for c in _COLUMNS if c in file.schema_arrow.names]
            yield file.read_row_group(group, columns=columns)

    return tables


def _parquet_paths(source: Any) -> list[Path] | None:
    """The part files `source` names (a path or a sequence of paths), or None."""
    if isinstance(source, (str, os.PathLike)):
        return list_parts(source)
    if isinstance(source, Sequence) and source and isinstance(source[0], (str, os.PathLike)):
        return [p for s in source for p in list_parts(s)]
    return None


def table_passes(source: Any, seed: int | None = None) -> TablePasses:
    """A function giving the episode tables of pass p over `source`: Parquet path(s) (a data
    set directory, part files), a Ray Dataset or DataIterator (e.g. `ray.train.
    get_dataset_shard`), or an iterable of Arrow/pandas batches (re-iterable to rotate)."""
    paths = _parquet_paths(source)
    if paths is not None:
        return _parquet_passes(paths, seed)
    if hasattr(source, "iter_batches"):
        return lambda _: source.iter_batches(batch_format="pyarrow", batch_size=None)
    return lambda _: (_as_table(batch) for batch in source)


def episode_count(source: Any) -> int | None:
    """Episodes in a Parquet source, from the footers; None for other sources."""
    paths = _parquet_paths(source)
    return None if paths is None else sum(pq.read_metadata(p).num_rows for p in paths)


def _episode_arrays(table: pa.Table) -> Arrays:
    """The stored fields of a table's episodes as numpy arrays."""
    arrays = table_arrays(table)
    arrays["task"] = arrays["task"].astype(np.int64)
    if "episode_id" not in arrays:
        arrays["episode_id"] = np.full(len(arrays["task"]), -1, dtype=np.int64)
    return arrays


def _as_tensor(array: np.ndarray) -> torch.Tensor:
    """A tensor sharing `array`'s memory. Arrow's memory is read-only, which torch warns
    about; these tensors are only ever read (copied into the store)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "The given NumPy array is not writable")
        return torch.from_numpy(array)


def _blocks(tables: Iterable[pa.Table], size: int) -> Iterator[Arrays]:
    """Regroup a stream of episode tables into blocks of exactly `size` episodes."""
    pending: list[pa.Table] = []
    count = 0
    for table in tables:
        pending.append(table)
        count += len(table)
        while count >= size:
            joined = pa.concat_tables(pending)
            yield _episode_arrays(joined.slice(0, size))
            pending, count = [joined.slice(size)], count - size


def _endless(passes: TablePasses, first_pass: Iterator[pa.Table]) -> Iterator[pa.Table]:
    """The rest of pass 0, then passes 1, 2, ... forever."""
    yield from first_pass
    for pass_index in itertools.count(1):
        empty = True
        for table in passes(pass_index):
            empty = empty and len(table) == 0
            yield table
        if empty:
            raise ValueError(
                "the episode source is empty on its second pass: rotation needs Parquet "
                "paths, a Ray Dataset/DataIterator or a list of batches"
            )


def _storage_device(nbytes: int, device: torch.device) -> tuple[torch.device, bool]:
    """Where episodes live and whether host memory is pinned (see module docstring)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        if GPU_HEADROOM * nbytes < free:
            return device, False
    return torch.device("cpu"), torch.cuda.is_available()


def _allocate(num_episodes: int, example: Arrays, device: torch.device) -> dict[str, torch.Tensor]:
    """Empty storage for `num_episodes` episodes shaped like `example`, placed for `device`."""
    shapes = {
        name: (num_episodes, *example[name].shape[1:])
        for name in (*EPISODE_FIELDS, *STEP_FIELDS)
        if name in example
    }
    dtypes = {name: _as_tensor(example[name][:0]).dtype for name in shapes}
    nbytes = sum(int(np.prod(s)) * dtypes[n].itemsize for n, s in shapes.items())
    storage, pin = _storage_device(nbytes, device)
    return {
        name: torch.empty(shape, dtype=dtypes[name], device=storage, pin_memory=pin)
        for name, shape in shapes.items()
    }


def _check_steps(got: int, want: int) -> None:
    if got != want:
        raise ValueError(f"episodes of {got} and {want} steps in one store")


def _fill(
    tables: Iterator[pa.Table], capacity: int, device: torch.device
) -> tuple[dict[str, torch.Tensor], pa.Table | None]:
    """Copy up to `capacity` episodes from `tables` into storage allocated on the first
    table; returns the storage (cut to the episodes copied) and the unused rest of the
    last table read, or None when the tables ran out first."""
    fields: dict[str, torch.Tensor] = {}
    filled = 0
    for table in tables:
        take = min(len(table), capacity - filled)
        if take == 0:
            continue
        arrays = _episode_arrays(table.slice(0, take))
        fields = fields or _allocate(capacity, arrays, device)
        _check_steps(arrays["reward"].shape[1], fields["reward"].shape[1])
        for name, tensor in fields.items():
            tensor[filled : filled + take].copy_(_as_tensor(arrays[name]))
        filled += take
        if filled == capacity:
            return fields, table.slice(take)
    if not filled:
        raise ValueError("the episode source holds no episodes")
    return {name: tensor[:filled] for name, tensor in fields.items()}, None


def _gather(tables: Iterator[pa.Table], device: torch.device) -> dict[str, torch.Tensor]:
    """Every episode of `tables`, a source of unknown size, in storage of the exact size: copied
    into host chunks of about `CHUNK_BYTES` as tables arrive, then moved chunk by chunk, each
    freed once moved."""
    chunks: list[dict[str, torch.Tensor]] = []
    pending = next((t for t in tables if len(t)), None)
    while pending is not None:
        size = max(1, CHUNK_BYTES * len(pending) // max(1, pending.nbytes))
        chunk, rest = _fill(itertools.chain([pending], tables), size, torch.device("cpu"))
        chunks.append(chunk)
        following = itertools.chain([rest], tables) if rest is not None else iter(())
        pending = next((t for t in following if len(t)), None)
    if not chunks:
        raise ValueError("the episode source holds no episodes")
    example = {name: tensor[:0].numpy() for name, tensor in chunks[0].items()}
    fields = _allocate(sum(len(c["task"]) for c in chunks), example, device)
    filled = 0
    while chunks:
        chunk = chunks.pop(0)
        _check_steps(chunk["reward"].shape[1], fields["reward"].shape[1])
        count = len(chunk["task"])
        for name, tensor in fields.items():
            tensor[filled : filled + count].copy_(chunk[name])
        filled += count
    return fields


class EpisodeStore:
    """Episodes resident in contiguous tensors; `sample` draws TD-MPC2 training windows."""

    def __init__(
        self,
        fields: dict[str, torch.Tensor],
        device: torch.device,
        stream: Iterator[Arrays] | None = None,
        rotate_every: int = 0,
    ) -> None:
        self.fields = fields
        self.device = device
        self.rotate_every = rotate_every
        self.rotations = 0
        self._stream = stream
        self._samples = 0
        self._cursor = 0
        self._flat = {  # [E*T, width] views: one index_select per field gathers a batch
            name: fields[name].view(fields[name].shape[0] * fields[name].shape[1], -1)
            for name in STEP_FIELDS
            if name in fields
        }
        self._executor = ThreadPoolExecutor(1) if stream is not None else None
        self._next: Future[Arrays] | None = None
        if stream is not None:
            self._next = self._executor.submit(next, stream)

    @classmethod
    def load(
        cls,
        source: Any,
        device: str | torch.device | None = None,
        max_resident_episodes: int | None = None,
        rotate_every: int = 100,
        rotate_episodes: int | None = None,
        seed: int = 0,
    ) -> EpisodeStore:
        """Fill a store from `source` (see `table_passes`); with `max_resident_episodes` below
        the data set's size, keep that many resident and rotate (see module docstring).
        Episodes stream into storage allocated once, so loading needs little memory beyond
        the store (see module docstring)."""
        device = torch.device(device or "cpu")
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        rotating = max_resident_episodes is not None
        if rotating and not (
            1 <= (rotate_episodes or 1) <= max_resident_episodes and rotate_every >= 1
        ):
            raise ValueError(
                "need 1 <= rotate_episodes <= max_resident_episodes, rotate_every >= 1"
            )
        passes = table_passes(source, seed if rotating else None)
        tables = iter(passes(0))
        capacity = max_resident_episodes or episode_count(source)
        if capacity is None:
            return cls(_gather(tables, device), device)
        fields, rest = _fill(tables, capacity, device)
        following = itertools.chain([rest], tables) if rest is not None else iter(())
        first = next((t for t in following if len(t)), None) if rotating else None
        if first is None:
            return cls(fields, device)
        block = rotate_episodes or max(1, capacity // 20)
        stream = _blocks(_endless(passes, itertools.chain([first], following)), block)
        return cls(fields, device, stream=stream, rotate_every=rotate_every)

    @property
    def num_episodes(self) -> int:
        return self.fields["task"].shape[0]

    @property
    def episode_length(self) -> int:
        return self.fields["reward"].shape[1]

    @property
    def labelled_terms(self) -> tuple[str, ...]:
        """Teacher terms with labels in the data (see `data.layout.TEACHER_COLUMNS`)."""
        return terms_labelled_in(tuple(self.fields))

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.fields.values())

    def num_windows(self, horizon: int) -> int:
        """Number of distinct (episode, start) windows of H+1 steps."""
        return self.num_episodes * max(0, self.episode_length - horizon)

    def sample(
        self, batch_size: int, horizon: int, generator: torch.Generator | None = None
    ) -> Batch:
        """`batch_size` windows of `horizon`+1 steps, uniform over (episode, start) pairs.
        Indices are drawn on the CPU with `generator`, so a seed gives the same windows
        wherever the store lives."""
        if self._stream is not None and self._samples and self._samples % self.rotate_every == 0:
            self.rotate()
        self._samples += 1
        T = self.episode_length
        starts_per_episode = T - horizon
        if starts_per_episode < 1:
            raise ValueError(f"horizon {horizon} needs episodes longer than {T} steps")
        draw = torch.randint(
            self.num_episodes * starts_per_episode, (batch_size,), generator=generator
        )
        draw = to_device(draw, self.fields["task"].device)
        episode = draw // starts_per_episode
        first = episode * T + draw % starts_per_episode
        steps = (first + torch.arange(horizon + 1, device=first.device).unsqueeze(1)).view(-1)
        after = steps[batch_size:]

        def gather(name: str, index: torch.Tensor) -> torch.Tensor:
            return (
                self._flat[name]
                .index_select(0, index)
                .view(-1, batch_size, self._flat[name].shape[1])
            )

        batch = Batch(
            obs=gather("obs", steps),
            action=gather("action", after),
            reward=gather("reward", after),
            task=self.fields["task"].index_select(0, episode),
            teacher={t: gather(TEACHER_COLUMNS[t], after) for t in self.labelled_terms},
        )
        if batch.task.device == self.device:
            return batch
        return batch_to(batch, self.device)

    def rotate(self) -> None:
        """Replace the oldest resident episodes with the next prefetched block of the stream."""
        if self._next is None:
            raise ValueError("this store holds its whole data set and does not rotate")
        block = self._next.result()
        self._next = self._executor.submit(next, self._stream)
        count = len(block["task"])
        slots = (self._cursor + torch.arange(count)) % self.num_episodes
        self._cursor = (self._cursor + count) % self.num_episodes
        slots = to_device(slots, self.fields["task"].device)
        for name, tensor in self.fields.items():
            tensor.index_copy_(0, slots, to_device(_as_tensor(block[name]), tensor.device))
        self.rotations += 1

    def close(self) -> None:
        """Stop the background reader of a rotating store."""
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None
