"""Data pipeline speed and memory, written to bench/results/data.json.

    python bench/data.py [--episodes 35000] [--tmp DIR]

1. Writes a synthetic chunk (>= 2 GB at the default 35,000 episodes) in TD-MPC2's public layout
   (a TensorDict saved with torch.save; per-task dims zero-padded, NaN step 0) to a temporary
   directory, in a child process so the driver's peak RSS measures conversion only.
2. Converts it with `tdmpc_ray.data.convert` on a local Ray (2 CPUs): MB/s and episodes/s, peak
   RSS of the driver and of the conversion workers (VmHWM, which counts the memory-mapped chunk
   pages a worker touched) against the chunk size; the page-cache read speed of the chunk is the
   ceiling for reference.
3. Loads the Parquet parts into an `EpisodeStore` and times `sample(256, 3)`: transitions/s and
   the cost relative to one training update of the 1M model at batch 256, against a per-window
   Python loop as the baseline.
The temporary directory is deleted at the end.
"""

from __future__ import annotations

import argparse
import multiprocessing
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from common import stamped  # noqa: E402

from tdmpc_ray.atomic import write_json  # noqa: E402
from tdmpc_ray.data.convert import convert, peak_rss_bytes  # noqa: E402
from tdmpc_ray.data.episode_store import EpisodeStore  # noqa: E402
from tdmpc_ray.data.layout import EPISODES_PER_FILE  # noqa: E402
from tdmpc_ray.tasks.task_sets import get_task_set  # noqa: E402

STEPS = 501
BLOCK_EPISODES = 1000
BATCH, HORIZON = 256, 3
REFERENCE_UPDATE_MS = 324.0
"""TD-MPC2 reference update of the 1M model at batch 256, measured once by hand on this machine
kind before bench/train.py timed it beside ours in one run (bench/results/train.json)."""


def write_synthetic_chunk(path: Path, episodes: int, seed: int = 0) -> None:
    """A chunk in the public layout whose padding and value ranges look like MT30's: task
    e % 30 for episode e, random-walk obs and uniform actions in the task's own dims.

    Made in blocks of `BLOCK_EPISODES` (each seeded by (seed, block), so the data depend only
    on `seed` and `episodes`) into file-backed tensors beside `path`, which `torch.save` then
    streams into the chunk: memory stays at one block however big the chunk (a real one is
    12.8 GB); the disk briefly holds the chunk twice."""
    from tensordict import TensorDict

    task_set = get_task_set("mt30")
    shapes = {
        "obs": ((episodes, STEPS, task_set.obs_dim), torch.float32),
        "action": ((episodes, STEPS, task_set.action_dim), torch.float32),
        "reward": ((episodes, STEPS), torch.float32),
        "task": ((episodes, STEPS), torch.int32),
    }
    raw = {name: path.with_name(f".{path.name}.{name}.raw") for name in shapes}
    try:
        fields = {
            name: torch.from_file(
                str(raw[name]), shared=True, size=int(np.prod(shape)), dtype=dtype
            ).view(shape)
            for name, (shape, dtype) in shapes.items()
        }
        for first in range(0, episodes, BLOCK_EPISODES):
            block = _synthetic_block(first, min(first + BLOCK_EPISODES, episodes), seed)
            for name, values in block.items():
                fields[name][first : first + len(values)] = values
        torch.save(TensorDict(fields, batch_size=[episodes, STEPS]), path)
    finally:
        for file in raw.values():
            file.unlink(missing_ok=True)


def _synthetic_block(first: int, stop: int, seed: int) -> dict[str, torch.Tensor]:
    """Episodes [first, stop) of `write_synthetic_chunk`."""
    task_set = get_task_set("mt30")
    num_tasks = len(task_set.tasks)
    generator = torch.Generator().manual_seed(seed * 1_000_003 + first // BLOCK_EPISODES)
    count = stop - first
    task = torch.arange(first, stop, dtype=torch.int32) % num_tasks
    obs = torch.zeros(count, STEPS, task_set.obs_dim)
    action = torch.zeros(count, STEPS, task_set.action_dim)
    reward = torch.rand(count, STEPS, generator=generator)
    for k, (obs_dim, action_dim) in enumerate(
        zip(task_set.obs_dims, task_set.action_dims, strict=True)
    ):
        rows = (task == k).nonzero().squeeze(1)
        walk = torch.randn(len(rows), STEPS, obs_dim, generator=generator).mul_(0.1).cumsum(1)
        obs[rows, :, :obs_dim] = walk
        action[rows, :, :action_dim] = (
            torch.rand(len(rows), STEPS, action_dim, generator=generator) * 2 - 1
        )
    action[:, 0] = float("nan")
    reward[:, 0] = float("nan")
    return {
        "obs": obs,
        "action": action,
        "reward": reward,
        "task": task.unsqueeze(1).expand(count, STEPS),
    }


def _read_speed(path: Path) -> float:
    """MB/s of reading the file sequentially (from the page cache after writing it)."""
    started = time.perf_counter()
    with path.open("rb") as f:
        while f.read(64 << 20):
            pass
    return path.stat().st_size / 1e6 / (time.perf_counter() - started)


def _idle_worker_rss() -> int:
    """Peak RSS of a fresh Ray worker that imported the conversion code but read no data
    (measured before any conversion task has run on a worker)."""
    import ray

    @ray.remote(num_cpus=1)
    def idle() -> int:
        import tdmpc_ray.data.convert  # noqa: F401

        return peak_rss_bytes()

    return ray.get(idle.remote())


def bench_convert(chunk: Path, dst: Path) -> dict:
    """Convert the chunk once and report speed and memory."""
    chunk_bytes = chunk.stat().st_size
    idle_worker_rss = _idle_worker_rss()
    summary = convert([chunk], dst, progress=False)
    episodes = summary.dataset.episodes
    worker_rss = summary.worker_peak_rss_bytes
    return {
        "chunk_bytes": chunk_bytes,
        "episodes": episodes,
        "episodes_per_file": EPISODES_PER_FILE,
        "parts": len(summary.dataset.parts),
        "parquet_bytes": summary.dataset.num_bytes,
        "seconds": round(summary.seconds, 2),
        "megabytes_per_second": round(summary.megabytes_per_second, 1),
        "episodes_per_second": round(episodes / summary.seconds, 1),
        "chunk_read_megabytes_per_second_page_cache": round(_read_speed(chunk), 1),
        "driver_peak_rss_bytes": summary.driver_peak_rss_bytes,
        "worker_peak_rss_bytes": worker_rss,
        "idle_worker_peak_rss_bytes": idle_worker_rss,
        "worker_peak_rss_above_idle_bytes": worker_rss - idle_worker_rss,
        "part_source_bytes": chunk_bytes * EPISODES_PER_FILE // episodes,
        "worker_peak_rss_over_chunk_size": round(worker_rss / chunk_bytes, 3),
        "driver_peak_rss_over_chunk_size": round(summary.driver_peak_rss_bytes / chunk_bytes, 3),
    }


def _loop_sample(store: EpisodeStore, generator: torch.Generator) -> tuple:
    """Baseline: one window at a time with Python slicing, then stacking."""
    T = store.episode_length
    episodes = torch.randint(store.num_episodes, (BATCH,), generator=generator).tolist()
    starts = torch.randint(T - HORIZON, (BATCH,), generator=generator).tolist()
    obs, action, reward = [], [], []
    for e, t in zip(episodes, starts, strict=True):
        obs.append(store.fields["obs"][e, t : t + HORIZON + 1])
        action.append(store.fields["action"][e, t + 1 : t + HORIZON + 1])
        reward.append(store.fields["reward"][e, t + 1 : t + HORIZON + 1])
    return torch.stack(obs, 1), torch.stack(action, 1), torch.stack(reward, 1).unsqueeze(-1)


def _per_batch_seconds(sample, iterations: int) -> float:
    for _ in range(20):
        sample()
    started = time.perf_counter()
    for _ in range(iterations):
        sample()
    return (time.perf_counter() - started) / iterations


def bench_sampler(dst: Path, iterations: int) -> dict:
    """Load the parts into a store and time batches of TD-MPC2 windows."""
    started = time.perf_counter()
    store = EpisodeStore.load(dst)
    load_seconds = time.perf_counter() - started
    generator = torch.Generator().manual_seed(0)
    ours = _per_batch_seconds(lambda: store.sample(BATCH, HORIZON, generator), iterations)
    loop = _per_batch_seconds(lambda: _loop_sample(store, generator), max(1, iterations // 10))
    transitions = BATCH * HORIZON
    return {
        "store_episodes": store.num_episodes,
        "store_bytes": store.nbytes,
        "load_seconds": round(load_seconds, 2),
        "load_megabytes_per_second": round(store.nbytes / 1e6 / load_seconds, 1),
        "batch_size": BATCH,
        "horizon": HORIZON,
        "transitions_per_batch": transitions,
        "ms_per_batch": round(ours * 1e3, 4),
        "transitions_per_second": round(transitions / ours),
        "baseline_python_loop_ms_per_batch": round(loop * 1e3, 4),
        "speedup_over_python_loop": round(loop / ours, 1),
        "update_ms_1M_batch256": REFERENCE_UPDATE_MS,
        "update_ms_source": "TD-MPC2 reference, measured on this machine kind (our update is "
        "not built yet)",
        "sampler_cost_relative_to_update": round(ours * 1e3 / REFERENCE_UPDATE_MS, 6),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=35_000)
    parser.add_argument("--iterations", type=int, default=2000)
    parser.add_argument("--tmp", default=None, help="directory for the temporary files")
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "data.json"))
    args = parser.parse_args(argv)
    import ray

    tmp = Path(tempfile.mkdtemp(prefix="tdmpc_ray_bench_data_", dir=args.tmp))
    try:
        chunk = tmp / "chunk_0.pt"
        child = multiprocessing.get_context("spawn").Process(
            target=write_synthetic_chunk, args=(chunk, args.episodes)
        )
        child.start()
        child.join()
        if child.exitcode:
            raise SystemExit(f"writing the synthetic chunk failed ({child.exitcode})")
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        result = stamped(
            {
                "convert": bench_convert(chunk, tmp / "parquet"),
                "sampler": bench_sampler(tmp / "parquet", args.iterations),
            }
        )
        ray.shutdown()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    write_json(args.out, result)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
