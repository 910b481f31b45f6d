"""Every GPU measurement in one command, for a session that is lent a GPU (<= 8 min on one
H100/H200 plus ~2 min of MT30 evaluation; each section is written as soon as it is measured, so a cut-short run keeps what it
finished):

- `update`: updates/s of the 1M student at batch 256 and 1024: eager fp32, compiled fp32
  (CUDA graphs), compiled bf16;
- `loop`: the training loop's own steps (episode store -> teacher -> compiled update) with a
  317M-shaped teacher actor on the same GPU, its outputs asked of the actor or read from cached
  labels, and the teacher's overhead;
- `teacher`: the teacher actor's rows/s (fp32 and bf16);
- `planning`: MPPI actions/s for 1, 30 and 300 environments (compiled planner);
- `train_run`: a 200-step Ray Train run whose teacher actor shares the worker's GPU (0.5 GPU
  each);
- `mt30_eval`: the paper's MT30 evaluation (30 tasks x 10 episodes, full MPPI) with rollout
  actors on every CPU but one sharing the GPU (bench/eval.py `mt30_eval`): its wall time.

    python bench/device_check.py                # on a GPU: writes bench/results/gpu.json
    python bench/device_check.py --dry          # the same code paths, tiny, on CPU (CI)

`--dry` writes to a temporary file (printed) unless `--out` is given, never to the committed
results.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, machine, median_seconds, write_random_checkpoint  # noqa: E402

from tdmpc_ray.atomic import write_json  # noqa: E402
from tdmpc_ray.config import build_config  # noqa: E402
from tdmpc_ray.data.episode_store import EpisodeStore  # noqa: E402
from tdmpc_ray.data.layout import (  # noqa: E402
    EpisodeMeta,
    episodes_to_table,
    part_name,
    write_part,
)
from tdmpc_ray.model import WorldModel, checkpoint_hash, load_world_model, model_config  # noqa: E402
from tdmpc_ray.planning import Planner, PlannerConfig  # noqa: E402
from tdmpc_ray.provenance import provenance  # noqa: E402
from tdmpc_ray.tasks import get_task_set  # noqa: E402
from tdmpc_ray.train.config import TrainConfig  # noqa: E402
from tdmpc_ray.train.loop import TeacherTargets, updates  # noqa: E402
from tdmpc_ray.train.losses import LossConfig  # noqa: E402
from tdmpc_ray.train.update import Learner, OptimConfig, read_metrics  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Sizes:
    """How big each measurement is: the real ones on a GPU, tiny ones for `--dry`."""

    device: str
    student: dict
    """`model_config` overrides of the 1M student (none: the preset)."""
    teacher_size: int
    batches: tuple[int, ...]
    updates: int
    """Timed updates per setting (after warm-up/compilation)."""
    episodes: int
    episode_length: int
    teacher_rows: int
    envs: tuple[int, ...]
    planner: PlannerConfig
    train_steps: int


FULL = Sizes(device="cuda", student={}, teacher_size=317, batches=(256, 1024), updates=100,
             episodes=256, episode_length=501, teacher_rows=16384, envs=(1, 30, 300),
             planner=PlannerConfig(compile=True), train_steps=200)  # fmt: skip
DRY = Sizes(device="cpu", student={"enc_dim": 64, "mlp_dim": 64, "latent_dim": 32}, teacher_size=1,
            batches=(64,), updates=2, episodes=8, episode_length=51, teacher_rows=256, envs=(1, 3),
            planner=PlannerConfig(compile=True, iterations=2, num_samples=64, num_elites=8,
                                  num_pi_trajs=4), train_steps=6)  # fmt: skip


class Results:
    """The result file, rewritten after every section so an interrupted run keeps its data."""

    def __init__(self, path: Path, sizes: Sizes):
        self.path = path
        self.data = {
            "what": "GPU measurements of tdmpc_ray (bench/device_check.py)",
            "sizes": {**dataclasses.asdict(sizes), "planner": dataclasses.asdict(sizes.planner)},
            "device": torch.cuda.get_device_name() if sizes.device == "cuda" else "cpu",
            **provenance(),
            "machine": machine(),
        }

    def add(self, section: str, value) -> None:
        self.data[section] = value
        write_json(self.path, self.data)
        print(f"{section}: {value}", flush=True)


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _student(sizes: Sizes) -> WorldModel:
    torch.manual_seed(0)
    return WorldModel(model_config(1, "mt30", **sizes.student)).to(sizes.device)


def _rate(step, count: int, device: str, warmup: int = 3) -> float:
    """Calls of `step()` per second over `count` calls after `warmup` (compiles happen there)."""
    for _ in range(warmup):
        step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(count):
        step()
    _sync(device)
    return count / (time.perf_counter() - start)


def measure_updates(sizes: Sizes, store: EpisodeStore) -> list[dict]:
    """Updates/s of the student per batch size and setting, on windows from `store` (its cached
    reward labels as the teacher's)."""
    settings = {"eager": OptimConfig(), "compiled": OptimConfig(compile=True),
                "compiled_bf16": OptimConfig(compile=True, precision="bf16")}  # fmt: skip
    rows = []
    gen = torch.Generator().manual_seed(0)
    for batch_size in sizes.batches:
        batch = store.sample(batch_size, 3, gen)
        row = {"batch_size": batch_size}
        for name, optim in settings.items():
            learner = Learner(_student(sizes), LossConfig(d_coef=0.45), optim)
            metrics = {}

            def step(learner=learner, metrics=metrics, batch=batch):
                metrics.update(learner.update(batch))

            row[f"{name}_updates_per_s"] = round(_rate(step, sizes.updates, sizes.device), 2)
            row[f"{name}_total_loss"] = round(read_metrics(metrics)["total_loss"], 4)
        row["compiled_speedup"] = round(
            row["compiled_updates_per_s"] / row["eager_updates_per_s"], 2
        )
        rows.append(row)
    return rows


def measure_loop(sizes: Sizes, cfg: TrainConfig, store: EpisodeStore) -> list[dict]:
    """Updates/s of the training loop's steps (`train.loop.updates`) with the teacher's reward
    asked of its actor vs read from the store's cached labels."""
    rows = []
    for batch_size in sizes.batches:
        row = {"batch_size": batch_size}
        for source, cached in (("cached", ("reward",)), ("asked", ())):
            learner = Learner(_student(sizes), cfg.losses(), cfg.optim)
            teacher = TeacherTargets(cfg, cached)
            steps = updates(
                learner, store, teacher, batch_size, cfg.horizon, torch.Generator().manual_seed(0)
            )
            row[f"{source}_updates_per_s"] = round(
                _rate(lambda s=steps: next(s), sizes.updates, sizes.device), 2
            )
            row[f"{source}_teacher_wait_s_per_update"] = round(
                teacher.wait_s / (sizes.updates + 3), 5
            )
        row["teacher_overhead"] = round(
            1 - row["asked_updates_per_s"] / row["cached_updates_per_s"], 3
        )
        rows.append(row)
    return rows


def measure_teacher(sizes: Sizes, cfg: TrainConfig) -> list[dict]:
    """Rows/s of one teacher actor answering `teacher_rows`-row reward queries, per precision,
    with its memory."""
    import ray

    from tdmpc_ray.train.teacher import teacher_pool

    gen = torch.Generator().manual_seed(0)
    n = sizes.teacher_rows
    obs, action = torch.randn(n, 24, generator=gen), torch.rand(n, 6, generator=gen) * 2 - 1
    task = torch.randint(0, 30, (n,), generator=gen)
    rows = []
    for precision in ("fp32", "bf16"):
        pool = teacher_pool(
            cfg.teacher, cfg.teacher_sha256, cfg.task_set, cfg.teacher_gpus, 1, precision
        )
        query = lambda pool=pool: ray.get(pool.outputs(obs, action, task, ("reward",)))  # noqa: E731
        seconds = median_seconds(query, repeats=5, warmup=2)
        rows.append({"precision": precision, "rows_per_s": round(n / seconds), "rows_per_query": n,
                     **{k: v for k, v in pool.info()[0].items() if k.startswith("max_")}})  # fmt: skip
    return rows


def measure_planning(sizes: Sizes, model: WorldModel) -> list[dict]:
    """MPPI actions/s (environments x plans per second) per number of environments."""
    rows = []
    tasks = len(get_task_set("mt30").tasks)
    for envs in sizes.envs:
        planner = Planner(model, sizes.planner, num_envs=envs, seed=0)
        obs = torch.randn(envs, 24, device=sizes.device)
        task = torch.arange(envs, device=sizes.device) % tasks
        plans = _rate(
            lambda p=planner, o=obs, t=task: p.act(o, t), max(3, sizes.updates // 10), sizes.device
        )
        rows.append(
            {
                "envs": envs,
                "actions_per_s": round(plans * envs, 1),
                "ms_per_plan": round(1000 / plans, 2),
            }
        )
    return rows


def measure_train_run(sizes: Sizes, cfg: TrainConfig, data: Path, out: Path) -> dict:
    """A Ray Train run of `train_steps` steps asking the teacher actor, which shares the
    worker's GPU (0.5 GPU each) on a GPU machine."""
    from tdmpc_ray.train.trainer import train

    gpu = sizes.device == "cuda"
    run = build_config(TrainConfig, None, {
        "data": str(data), "teacher": cfg.teacher, "teacher_sha256": cfg.teacher_sha256,
        "model_size": 1, **sizes.student, "steps": sizes.train_steps, "batch_size": sizes.batches[0],
        "use_gpu": gpu, "gpus_per_worker": 0.5, "teacher_gpus": 0.5 if gpu else 0.0,
        "compile": True, "cpus_per_worker": 1.0 if gpu else 0.5,
        "log_every": max(1, sizes.train_steps // 4), "checkpoint_every": sizes.train_steps,
        "out": str(out), "name": "device-check",
    })  # fmt: skip
    start = time.perf_counter()
    summary = train(run, progress=False)
    metrics = summary["metrics"]
    return {"steps": metrics.get("step"), "wall_s": round(time.perf_counter() - start, 1),
            "updates_per_s_last_window": round(metrics.get("updates_per_s", 0.0), 2),
            "teacher_wait_s_per_update": metrics.get("teacher_wait_s"),
            "gpus": {"worker": run.gpus_per_worker if gpu else 0, "teacher": run.teacher_gpus}}  # fmt: skip


def measure_mt30_eval(sizes: Sizes, checkpoint: Path) -> dict:
    """The paper's MT30 evaluation (30 tasks x 10 episodes, full MPPI; a 1M student of random
    weights: episodes run their full length whatever the weights) on the GPU and all CPUs but
    one; the dry run plays 2 tasks x 1 episode of a few steps."""
    from eval import mt30_eval

    if sizes.device == "cuda":
        result = mt30_eval(checkpoint, episodes=10, envs_per_actor=10)
    else:
        result = mt30_eval(checkpoint, episodes=1, envs_per_actor=1, max_steps=3,
                           tasks="cartpole-balance,cup-catch")  # fmt: skip
    episodes = sum(len(row["returns"]) for row in result["tasks"].values())
    return {"wall_s": result["wall_s"], "episodes": episodes, "layout": result["layout"]}


def write_episodes(directory: Path, sizes: Sizes, labels: bool) -> Path:
    """Random MT30-shaped episodes (with random reward labels when `labels`) as one part file:
    speed does not depend on the values."""
    tasks = get_task_set("mt30")
    E, T = sizes.episodes, sizes.episode_length
    rng = np.random.default_rng(0)
    meta = EpisodeMeta("mt30", tasks.tasks, 24, 6, T, "device_check",
                       teacher_checkpoint="random" if labels else None)  # fmt: skip
    action = rng.uniform(-1, 1, (E, T, 6)).astype(np.float32)
    reward = rng.uniform(0, 1, (E, T)).astype(np.float32)
    action[:, 0], reward[:, 0] = np.nan, np.nan
    table = episodes_to_table(
        meta, np.arange(E), np.arange(E) % len(tasks.tasks),
        rng.standard_normal((E, T, 24), dtype=np.float32), action, reward,
        {"reward": reward.copy()} if labels else None,
    )  # fmt: skip
    directory.mkdir(parents=True, exist_ok=True)
    write_part(directory / part_name(0), table, meta)
    return directory


def result_path(dry: bool, out: Path | None, scratch: Path) -> Path:
    """Where results go: `out`, else the committed `bench/results/gpu.json`, or for a dry run a
    file in the run's scratch folder."""
    return out or (scratch / "gpu.json" if dry else RESULTS / "gpu.json")


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dry", action="store_true", help="tiny sizes on CPU (CI)")
    parser.add_argument(
        "--out", type=Path, help="result file (default: bench/results/gpu.json; --dry: a temp file)"
    )
    args = parser.parse_args(argv)
    sizes = DRY if args.dry else FULL
    if sizes.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --dry to check the code paths on CPU")
    scratch = Path(tempfile.mkdtemp(prefix="device-check-"))
    out = result_path(args.dry, args.out, scratch)
    results = Results(out, sizes)
    labelled = EpisodeStore.load(
        write_episodes(scratch / "labelled", sizes, labels=True), device=sizes.device
    )
    results.add("update", measure_updates(sizes, labelled))

    import ray

    if not ray.is_initialized():
        ray.init(logging_level=logging.WARNING)
    teacher = write_random_checkpoint(
        scratch / f"teacher-{sizes.teacher_size}M.pt", sizes.teacher_size
    )
    cfg = build_config(TrainConfig, None, {
        "data": str(scratch / "labelled"), "teacher": str(teacher), "teacher_sha256": checkpoint_hash(teacher),
        **sizes.student, "compile": True, "teacher_gpus": 0.5 if sizes.device == "cuda" else 0.0,
    })  # fmt: skip
    results.add("teacher", measure_teacher(sizes, cfg))
    results.add("loop", measure_loop(sizes, cfg, labelled))
    labelled.close()
    planner_model = load_world_model(
        write_random_checkpoint(scratch / "student-1M.pt", 1), device=sizes.device
    )
    results.add("planning", measure_planning(sizes, planner_model))
    data = write_episodes(scratch / "episodes", sizes, labels=False)
    results.add("train_run", measure_train_run(sizes, cfg, data, scratch / "runs"))
    results.add("mt30_eval", measure_mt30_eval(sizes, scratch / "student-1M.pt"))
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    main()
