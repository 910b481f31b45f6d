"""Every GPU measurement in one command, for a session that is lent a GPU.

Each section runs alone, in its own process, under its own time budget, and its result is
written to the result file as soon as it ends. A section that fails, crashes the process (a CUDA
error poisons it) or runs past its budget is recorded with its error and the others still run,
so a cut-short session keeps everything it finished. Sections run in this order; the estimates
are for one H100 with 16 CPUs, process start and compiles included (the default plan: ~8 min,
and `--total-s`, 480 by default, stops starting sections after 8 minutes):

| section          | measures                                                       | est.  | budget |
|------------------|----------------------------------------------------------------|-------|--------|
| `update_256`     | updates/s of the 1M student at batch 256: eager fp32, compiled  | 100 s | 180 s  |
|                  | fp32 (CUDA graphs), compiled bf16; a static-shape graph each   |       |        |
| `update_1024`    | the same at batch 1024, in its own process and graphs           | 100 s | 180 s  |
| `teacher`        | rows/s of a 317M teacher actor, fp32 (TF32) and bf16 (writes    | 45 s  | 120 s  |
|                  | the random 317M checkpoint the next sections share)            |       |        |
| `planning`       | MPPI actions/s for 1, 30 and 300 environments (compiled)       | 30 s  | 90 s   |
| `loop`           | the training loop's steps at batch 256 (store -> teacher ->    | 60 s  | 150 s  |
|                  | compiled update), teacher outputs cached vs asked of the actor |       |        |
| `train_run`      | a 200-step Ray Train run whose teacher actor shares the         | 90 s  | 180 s  |
|                  | worker's GPU (0.5 GPU each)                                    |       |        |
| `environment`    | torch, CUDA and Ray versions, the GPU, its memory, TF32 and    | 10 s  | 60 s   |
|                  | bf16 support: the context of every number above                |       |        |
| `planner_labels` | states/s that `data label --mpc` labels: the 1M student and    | 60 s  | 150 s  |
|                  | the 317M teacher, full MPPI and the studies' reduced planner   |       |        |
| `mt30_eval`      | not in the default plan (`--sections mt30_eval`): the paper's  | 180 s | 300 s  |
|                  | MT30 evaluation, 30 tasks x 10 episodes, full MPPI, rollout    |       |        |
|                  | actors on every CPU but one sharing the GPU: its wall time     |       |        |

    python bench/device_check.py                       # on a GPU: bench/results/gpu.json
    python bench/device_check.py --sections teacher,loop
    python bench/device_check.py --dry                 # the same code paths, tiny, on CPU (CI)

`--dry` writes to a temporary file (printed) unless `--out` is given, never to the committed
results. docs/decisions.md ("The GPU path") says what each number should roughly be.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, median_seconds, stamped, write_random_checkpoint  # noqa: E402

from tdmpc_ray.atomic import atomic_path, write_json  # noqa: E402
from tdmpc_ray.config import build_config  # noqa: E402
from tdmpc_ray.data.episode_store import EpisodeStore  # noqa: E402
from tdmpc_ray.data.label import planner_labels  # noqa: E402
from tdmpc_ray.data.layout import (  # noqa: E402
    EpisodeMeta,
    episodes_to_table,
    part_name,
    write_part,
)
from tdmpc_ray.model import WorldModel, checkpoint_hash, load_world_model, model_config  # noqa: E402
from tdmpc_ray.planning import Planner, PlannerConfig  # noqa: E402
from tdmpc_ray.tasks import get_task_set  # noqa: E402
from tdmpc_ray.train.config import TrainConfig  # noqa: E402
from tdmpc_ray.train.loop import TeacherTargets, updates  # noqa: E402
from tdmpc_ray.train.losses import LossConfig  # noqa: E402
from tdmpc_ray.train.update import Learner, OptimConfig, read_metrics, use_tf32  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Sizes:
    """How big each measurement is: the real ones on a GPU, tiny ones for `--dry`."""

    device: str
    student: dict
    """`model_config` overrides of the 1M student (none: the preset)."""
    teacher_size: int
    batches: dict[str, int]
    """Batch size of each `update_*` section (the first is also the loop's and the run's)."""
    updates: int
    """Timed updates per setting (after warm-up/compilation)."""
    episodes: int
    episode_length: int
    teacher_rows: int
    envs: tuple[int, ...]
    planner: PlannerConfig
    label_states: int
    """States per planner-label batch (one episode's, as `data label --mpc` batches them)."""
    train_steps: int
    budgets: dict[str, float]
    """Seconds each section may run (its process is killed then)."""
    total_s: float
    """Default for `--total-s`: no section starts after this many seconds."""


BUDGETS = {
    "update_256": 180,
    "update_1024": 180,
    "teacher": 120,
    "planning": 90,
    "loop": 150,
    "train_run": 180,
    "environment": 60,
    "planner_labels": 150,
    "mt30_eval": 300,
}
"""Seconds per section on a GPU (about twice the estimates in the module docstring)."""
FULL = Sizes(
    device="cuda",
    student={},
    teacher_size=317,
    batches={"update_256": 256, "update_1024": 1024},
    updates=100,
    episodes=256,
    episode_length=501,
    teacher_rows=16384,
    envs=(1, 30, 300),
    planner=PlannerConfig(compile=True),
    label_states=128,
    train_steps=200,
    budgets=BUDGETS,
    total_s=480,
)
DRY = Sizes(
    device="cpu",
    student={"enc_dim": 64, "mlp_dim": 64, "latent_dim": 32},
    teacher_size=1,
    batches={"update_256": 32, "update_1024": 64},
    updates=2,
    episodes=8,
    episode_length=51,
    teacher_rows=256,
    envs=(1, 3),
    planner=PlannerConfig(compile=True, iterations=2, num_samples=64, num_elites=8, num_pi_trajs=4),
    label_states=4,
    train_steps=6,
    budgets={name: 600 for name in BUDGETS},
    total_s=3600,
)
REDUCED_PLANNER = PlannerConfig(iterations=2, num_samples=128, num_elites=16, num_pi_trajs=6)
"""The distillation studies' planner (tune/study2.yaml's eval_planner, its planner labels)."""
DEFAULT_PLAN = (
    "update_256",
    "update_1024",
    "teacher",
    "planning",
    "loop",
    "train_run",
    "environment",
    "planner_labels",
)
"""The sections run without `--sections` (`mt30_eval` only when asked for)."""


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _student(sizes: Sizes) -> WorldModel:
    torch.manual_seed(0)
    return WorldModel(model_config(1, "mt30", **sizes.student)).to(sizes.device)


def _rate(step: Callable[[], object], count: int, device: str, warmup: int = 3) -> float:
    """Calls of `step()` per second over `count` calls after `warmup` (compiles happen there)."""
    for _ in range(warmup):
        step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(count):
        step()
    _sync(device)
    return count / (time.perf_counter() - start)


def measure_updates(sizes: Sizes, store: EpisodeStore, batch_size: int) -> dict:
    """Updates/s of the student at `batch_size` per setting, on windows from `store` (its cached
    reward labels as the teacher's). Each compiled setting has its own static-shape graph."""
    settings = {
        "eager": OptimConfig(),
        "compiled": OptimConfig(compile=True),
        "compiled_bf16": OptimConfig(compile=True, precision="bf16"),
    }
    batch = store.sample(batch_size, 3, torch.Generator().manual_seed(0))
    row = {"batch_size": batch_size}
    for name, optim in settings.items():
        learner = Learner(_student(sizes), LossConfig(d_coef=0.45), optim)
        metrics = {}

        def step(learner=learner, metrics=metrics):
            metrics.update(learner.update(batch))

        row[f"{name}_updates_per_s"] = round(_rate(step, sizes.updates, sizes.device), 2)
        row[f"{name}_total_loss"] = round(read_metrics(metrics)["total_loss"], 4)
    row["compiled_speedup"] = round(row["compiled_updates_per_s"] / row["eager_updates_per_s"], 2)
    return row


def measure_loop(sizes: Sizes, cfg: TrainConfig, store: EpisodeStore) -> dict:
    """Updates/s of the training loop's steps (`train.loop.updates`) at the first batch size,
    with the teacher's reward asked of its actor vs read from the store's cached labels."""
    batch_size = next(iter(sizes.batches.values()))
    row = {"batch_size": batch_size}
    for source, cached in (("cached", ("reward",)), ("asked", ())):
        learner = Learner(_student(sizes), cfg.losses(), cfg.optim)
        teacher = TeacherTargets(cfg, cached, cfg.teacher_spec())
        steps = updates(
            learner, store, teacher, batch_size, cfg.horizon, torch.Generator().manual_seed(0)
        )
        row[f"{source}_updates_per_s"] = round(
            _rate(lambda s=steps: next(s), sizes.updates, sizes.device), 2
        )
        row[f"{source}_teacher_wait_s_per_update"] = round(teacher.wait_s / (sizes.updates + 3), 5)
    row["teacher_overhead"] = round(1 - row["asked_updates_per_s"] / row["cached_updates_per_s"], 3)
    return row


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
        rows.append(
            {
                "precision": precision,
                "rows_per_s": round(n / seconds),
                "rows_per_query": n,
                **{k: v for k, v in pool.info()[0].items() if k.startswith("max_")},
            }
        )
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
    run = build_config(
        TrainConfig,
        None,
        {
            "data": str(data),
            "teacher": cfg.teacher,
            "teacher_sha256": cfg.teacher_sha256,
            "model_size": 1,
            **sizes.student,
            "steps": sizes.train_steps,
            "batch_size": next(iter(sizes.batches.values())),
            "use_gpu": gpu,
            "gpus_per_worker": 0.5,
            "teacher_gpus": 0.5 if gpu else 0.0,
            "compile": True,
            "cpus_per_worker": 1.0 if gpu else 0.5,
            "log_every": max(1, sizes.train_steps // 4),
            "checkpoint_every": sizes.train_steps,
            "out": str(out),
            "name": "device-check",
        },
    )
    start = time.perf_counter()
    summary = train(run, progress=False)
    metrics = summary["metrics"]
    return {
        "steps": metrics.get("step"),
        "wall_s": round(time.perf_counter() - start, 1),
        "updates_per_s_last_window": round(metrics.get("updates_per_s", 0.0), 2),
        "teacher_wait_s_per_update": metrics.get("teacher_wait_s"),
        "gpus": {"worker": run.gpus_per_worker if gpu else 0, "teacher": run.teacher_gpus},
    }


def measure_mt30_eval(sizes: Sizes, checkpoint: Path) -> dict:
    """The paper's MT30 evaluation (30 tasks x 10 episodes, full MPPI; a 1M student of random
    weights: episodes run their full length whatever the weights) on the GPU and all CPUs but
    one; the dry run plays 2 tasks x 1 episode of a few steps."""
    from eval import mt30_eval

    if sizes.device == "cuda":
        result = mt30_eval(checkpoint, episodes=10, envs_per_actor=10)
    else:
        result = mt30_eval(
            checkpoint,
            episodes=1,
            envs_per_actor=1,
            max_steps=3,
            tasks="cartpole-balance,cup-catch",
        )
    episodes = sum(len(row["returns"]) for row in result["tasks"].values())
    return {"wall_s": result["wall_s"], "episodes": episodes, "layout": result["layout"]}


def describe_environment(sizes: Sizes) -> dict:
    """Versions and the device's facts that every number depends on."""
    import ray

    info = {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "ray": ray.__version__,
        "cpus": os.cpu_count(),
        "matmul_fp32_precision": torch.backends.cuda.matmul.fp32_precision,
    }
    if sizes.device == "cuda":
        props = torch.cuda.get_device_properties(0)
        info.update(
            gpu=props.name,
            capability=f"{props.major}.{props.minor}",
            memory_gib=round(props.total_memory / 2**30, 1),
            bf16=torch.cuda.is_bf16_supported(),
        )
    return info


def write_episodes(directory: Path, sizes: Sizes, labels: bool) -> Path:
    """Random MT30-shaped episodes (with random reward labels when `labels`) as one part file:
    speed does not depend on the values. Kept when a section before wrote them."""
    if (directory / part_name(0)).is_file():
        return directory
    tasks = get_task_set("mt30")
    E, T = sizes.episodes, sizes.episode_length
    rng = np.random.default_rng(0)
    meta = EpisodeMeta(
        "mt30",
        tasks.tasks,
        24,
        6,
        T,
        "device_check",
        teacher_checkpoint="random" if labels else None,
    )
    action = rng.uniform(-1, 1, (E, T, 6)).astype(np.float32)
    reward = rng.uniform(0, 1, (E, T)).astype(np.float32)
    action[:, 0], reward[:, 0] = np.nan, np.nan
    table = episodes_to_table(
        meta,
        np.arange(E),
        np.arange(E) % len(tasks.tasks),
        rng.standard_normal((E, T, 24), dtype=np.float32),
        action,
        reward,
        {"reward": reward.copy()} if labels else None,
    )
    directory.mkdir(parents=True, exist_ok=True)
    write_part(directory / part_name(0), table, meta)
    return directory


def random_checkpoint(scratch: Path, size: int) -> Path:
    """A random `size`M MT30 world model in the scratch folder, written whole once (the 317M
    teacher is 1.3 GB) and shared by the sections that follow."""
    path = scratch / f"model-{size}M.pt"
    if not path.is_file():
        with atomic_path(path) as tmp:
            write_random_checkpoint(tmp, size)
    return path


def _teacher_config(sizes: Sizes, scratch: Path) -> TrainConfig:
    """A run config naming the scratch folder's random teacher (half the GPU on a GPU)."""
    teacher = random_checkpoint(scratch, sizes.teacher_size)
    return build_config(
        TrainConfig,
        None,
        {
            "data": str(write_episodes(scratch / "labelled", sizes, labels=True)),
            "teacher": str(teacher),
            "teacher_sha256": checkpoint_hash(teacher),
            **sizes.student,
            "compile": True,
            "teacher_gpus": 0.5 if sizes.device == "cuda" else 0.0,
        },
    )


def _start_ray() -> None:
    import ray

    if not ray.is_initialized():
        ray.init(logging_level=logging.WARNING)


def measure_planner_labels(sizes: Sizes, scratch: Path) -> list[dict]:
    """States/s of `data label --mpc` (`planner_labels`, one batch of `label_states` cold-started
    states per call) per labelling model (the 1M student, the teacher) and planner: TD-MPC2's
    full MPPI and the studies' reduced one (tune/study2.yaml)."""
    rows = []
    obs = np.random.default_rng(0).standard_normal((1, sizes.label_states + 1, 24))
    obs = obs.astype(np.float32)
    planners = {"full": PlannerConfig(), "i2-s128": REDUCED_PLANNER}
    for size in dict.fromkeys((1, sizes.teacher_size)):
        model = load_world_model(random_checkpoint(scratch, size), device=sizes.device)
        for name, planner in planners.items():
            calls = _rate(
                lambda m=model, p=planner: planner_labels(m, p, 0, obs, np.zeros(1), np.zeros(1)),
                2,
                sizes.device,
                warmup=1,
            )
            rows.append(
                {
                    "model_size_M": size,
                    "planner": name,
                    "states_per_call": sizes.label_states,
                    "states_per_s": round(calls * sizes.label_states, 1),
                }
            )
        del model
    return rows


def _labelled_store(sizes: Sizes, scratch: Path) -> EpisodeStore:
    return EpisodeStore.load(
        write_episodes(scratch / "labelled", sizes, labels=True), device=sizes.device
    )


def run_section(name: str, sizes: Sizes, scratch: Path):
    """Measure section `name` (in this process) with inputs from `scratch`; returns its
    result."""
    if name in sizes.batches:
        return measure_updates(sizes, _labelled_store(sizes, scratch), sizes.batches[name])
    if name == "planning":
        model = load_world_model(random_checkpoint(scratch, 1), device=sizes.device)
        return measure_planning(sizes, model)
    if name == "mt30_eval":
        return measure_mt30_eval(sizes, random_checkpoint(scratch, 1))
    if name == "environment":
        return describe_environment(sizes)
    if name == "planner_labels":
        return measure_planner_labels(sizes, scratch)
    cfg = _teacher_config(sizes, scratch)
    _start_ray()
    if name == "teacher":
        return measure_teacher(sizes, cfg)
    if name == "loop":
        return measure_loop(sizes, cfg, _labelled_store(sizes, scratch))
    if name == "train_run":
        data = write_episodes(scratch / "episodes", sizes, labels=False)
        return measure_train_run(sizes, cfg, data, scratch / "runs")
    raise ValueError(f"unknown section {name!r}")


def _last_line(log: Path) -> str:
    """The last non-empty line of a section's log (a Python error's one-line summary)."""
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


def run_isolated(name: str, dry: bool, scratch: Path, budget_s: float, fail: str | None) -> dict:
    """Run section `name` in its own process, killed (with whatever it started) after
    `budget_s`; returns its result, or `{"error": one line}` when it failed, crashed or ran
    out of time. The process's output goes to `scratch/<name>.log`."""
    part, log = scratch / f"{name}.json", scratch / f"{name}.log"
    argv = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--run-section",
        name,
        "--scratch",
        str(scratch),
        *(["--dry"] if dry else []),
        *(["--fail", fail] if fail else []),
    ]
    with log.open("w") as out:
        process = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            process.wait(timeout=budget_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):  # it ended meanwhile
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            return {"error": f"ran past its budget of {budget_s:g} s (log: {log})"}
    if process.returncode == 0 and part.is_file():
        return json.loads(part.read_text())
    return {"error": f"exit code {process.returncode}: {_last_line(log)} (log: {log})"}


def _section_main(name: str, sizes: Sizes, scratch: Path, fail: str | None) -> None:
    """The child process of `run_isolated`: measure, write the result to `scratch/<name>.json`."""
    use_tf32(sizes.device)
    if name == fail:
        raise RuntimeError(f"failure injected into section {name}")
    write_json(scratch / f"{name}.json", run_section(name, sizes, scratch))


def result_path(dry: bool, out: Path | None, scratch: Path) -> Path:
    """Where results go: `out`, else the committed `bench/results/gpu.json`, or for a dry run a
    file in the run's scratch folder."""
    return out or (scratch / "gpu.json" if dry else RESULTS / "gpu.json")


def _sections(chosen: str | None) -> list[str]:
    """The sections to run, in plan order: `chosen` (comma-separated) or the default plan."""
    if chosen is None:
        return list(DEFAULT_PLAN)
    names = [name.strip() for name in chosen.split(",") if name.strip()]
    unknown = sorted(set(names) - set(BUDGETS))
    if unknown:
        raise SystemExit(
            f"unknown section(s) {', '.join(unknown)}: choose from {', '.join(BUDGETS)}"
        )
    return [name for name in BUDGETS if name in names]


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dry", action="store_true", help="tiny sizes on CPU (CI)")
    parser.add_argument(
        "--out", type=Path, help="result file (default: bench/results/gpu.json; --dry: a temp file)"
    )
    parser.add_argument("--sections", help=f"comma-separated, from {', '.join(BUDGETS)}")
    parser.add_argument("--total-s", type=float, help="start no section after this many seconds")
    parser.add_argument("--fail", help="make this section fail (tests the isolation)")
    parser.add_argument("--run-section", help=argparse.SUPPRESS)
    parser.add_argument("--scratch", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    sizes = DRY if args.dry else FULL
    if args.run_section:
        _section_main(args.run_section, sizes, args.scratch, args.fail)
        return args.scratch / f"{args.run_section}.json"
    if sizes.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --dry to check the code paths on CPU")
    sections = _sections(args.sections)
    scratch = Path(tempfile.mkdtemp(prefix="device-check-"))
    out = result_path(args.dry, args.out, scratch)
    data = stamped(
        {
            "what": "GPU measurements of tdmpc_ray (bench/device_check.py)",
            "sizes": {**dataclasses.asdict(sizes), "planner": dataclasses.asdict(sizes.planner)},
            "device": torch.cuda.get_device_name() if sizes.device == "cuda" else "cpu",
            "seconds": {},
        }
    )
    total_s = args.total_s or sizes.total_s
    start = time.perf_counter()
    for name in sections:
        left = total_s - (time.perf_counter() - start)
        if left < 1:
            data[name] = {"error": f"not started: the run's {total_s:g} s were spent"}
        else:
            began = time.perf_counter()
            data[name] = run_isolated(
                name, args.dry, scratch, min(sizes.budgets[name], left), args.fail
            )
            data["seconds"][name] = round(time.perf_counter() - began, 1)
        write_json(out, data)
        print(f"{name}: {data[name]}", flush=True)
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    main()
