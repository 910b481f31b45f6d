"""Evaluation throughput and scaling, written to bench/results/eval.json.

Four measurements on a local Ray with 2 CPUs, the published 1M student, full MPPI (TD-MPC2's
defaults, compiled as `tdmpc-ray eval` does), episodes cut at a few steps (`max_steps`):

- `scaling`: the EvalPool with 1 and then 2 actors (one CPU each) in the same run, alternating,
  on the same 2 jobs (so 1 actor runs them one after the other, 2 actors side by side). Besides
  env steps/s it accounts for every CPU second of the run, read from /proc: each actor's (and its
  busy threads), the driver's, Ray's own processes' and the rest of the machine's. An actor's CPU
  share (CPU s / wall s) says whether it had its core; its CPU ms per env step whether it did
  more work than a lone actor (thread oversubscription would show there).
- `bare`: the same planner without Ray in 1 process, then 2 concurrent processes (free, then
  pinned to separate cores): the most a second core can give on this machine.
- `costs`: what a shared-planner design would add per step (a Ray actor call round trip with a
  10-environment observation), against one plan for 10 environments and one env step.
- `lockstep`: lockstep batching (each actor steps all its episodes together) against the
  baseline of one environment per job (how the public reference evaluates, ~391 ms per action
  on one core of this machine kind, measured once by hand; bench/planning.py times the
  reference beside ours in one run), for 1 and 2 actors.

    python bench/eval.py [--mpc-steps 16] [--prior-steps 200] [--repeats 2] [--checkpoint NAME|PATH]

`--mt30-gpu` instead runs the full MT30 evaluation (30 tasks x 10 episodes x 500 steps, the
paper's protocol) on the machine's GPUs (`mt30_eval`, also called by bench/device_check.py) and
writes bench/results/eval_mt30_gpu.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import multiprocessing
import os
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import ray
import torch

os.environ.setdefault("MUJOCO_GL", "disable")  # before dm_control is imported: no renderer needed
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import median_seconds, write_result  # noqa: E402

from tdmpc_ray.evaluate.config import EvalConfig  # noqa: E402
from tdmpc_ray.evaluate.pool import EvalPool  # noqa: E402
from tdmpc_ray.evaluate.score import evaluate  # noqa: E402
from tdmpc_ray.model import WorldModel, load_world_model  # noqa: E402
from tdmpc_ray.model.published import resolve_checkpoint  # noqa: E402
from tdmpc_ray.planning import Planner, PlannerConfig  # noqa: E402
from tdmpc_ray.tasks.dmcontrol import make_env  # noqa: E402

TASKS = ["walker-walk", "cheetah-run", "cartpole-swingup", "finger-spin"]
EPISODES = 2
REFERENCE_MS_PER_ACTION = 391.0
POLICIES = {
    "mppi": PlannerConfig(compile=True),
    "policy_prior": PlannerConfig(mpc=False, compile=True),
}
CHECKPOINT = "mt30-1M-fp16"
TICK = os.sysconf("SC_CLK_TCK")


def steps_per_second(
    model: WorldModel, pool: EvalPool, planner: PlannerConfig, envs_per_actor: int, steps: int
) -> float:
    """Env steps per second of one `evaluate` of TASKS on the warm `pool`."""
    cfg = EvalConfig(planner=planner, envs_per_actor=envs_per_actor, max_steps=steps)
    return evaluate(model, TASKS, EPISODES, cfg=cfg, pool=pool)["env_steps_per_s"]


def measure(model: WorldModel, num_actors: int, steps: dict[str, int], repeats: int) -> list[dict]:
    """Lockstep vs one-env-at-a-time rows for both policies on a pool of `num_actors`.

    Baseline and lockstep runs alternate `repeats` times after an untimed warm-up of each
    (torch.compile per actor and batch shape); the best of each is kept, the least disturbed
    by other processes on this shared machine, and every sample is recorded.
    """
    lockstep = len(TASKS) * EPISODES // num_actors
    rows = []
    with EvalPool(num_actors) as pool:
        for name, planner in POLICIES.items():
            samples: dict[int, list[float]] = {1: [], lockstep: []}
            for envs in samples:
                steps_per_second(model, pool, planner, envs, 2)
            for _ in range(repeats):
                for envs, runs in samples.items():
                    runs.append(round(steps_per_second(model, pool, planner, envs, steps[name]), 2))
            batched, baseline = max(samples[lockstep]), max(samples[1])
            row = {
                "policy": name,
                "actors": num_actors,
                "envs_per_actor": lockstep,
                "max_steps": steps[name],
                "env_steps_per_s": batched,
                "baseline_env_steps_per_s": baseline,
                "lockstep_speedup": round(batched / baseline, 2),
                "ms_per_action_per_actor": round(1000 * num_actors / batched, 1),
                "samples": samples[lockstep],
                "baseline_samples": samples[1],
            }
            if name == "mppi":
                row["speedup_per_core_vs_reference"] = round(
                    REFERENCE_MS_PER_ACTION / row["ms_per_action_per_actor"], 2
                )
            print(row, flush=True)
            rows.append(row)
    return rows


def _process_ticks(pid: int) -> int:
    """utime + stime of a process, in clock ticks (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])


def _thread_ticks(pid: int) -> dict[str, int]:
    """Ticks of each thread of a process, by thread id."""
    ticks = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks[tid] = int(stat[11]) + int(stat[12])
    return ticks


def _descendants(pid: int) -> list[int]:
    """Every live process below `pid` (Ray's raylet, GCS, agents and workers of this driver)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, stack = [], [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def _machine_busy_ticks() -> int:
    """Non-idle ticks of all CPUs since boot (user, nice, system, irq, softirq, steal)."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return sum(values) - values[3] - values[4]


def _driver_ticks() -> int:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return round((usage.ru_utime + usage.ru_stime) * TICK)


class CpuAccount:
    """Where the CPU time of one run went: the actors (and their busy threads), the driver,
    Ray's other processes started by this driver, and everything else on the machine."""

    def __init__(self, actor_pids: list[int]) -> None:
        self.actor_pids = actor_pids
        self.ray_pids = [p for p in _descendants(os.getpid()) if p not in actor_pids]
        self.start = self._read()

    def _read(self) -> dict:
        return {
            "time": time.perf_counter(),
            "actors": {p: _process_ticks(p) for p in self.actor_pids},
            "threads": {p: _thread_ticks(p) for p in self.actor_pids},
            "driver": _driver_ticks(),
            "ray": sum(_process_ticks(p) for p in self.ray_pids),
            "machine": _machine_busy_ticks(),
        }

    def stop(self, env_steps: int) -> dict:
        """CPU seconds of each part over the run, per-actor shares and busy threads."""
        end, start = self._read(), self.start
        wall = end["time"] - start["time"]
        actor_s = [(end["actors"][p] - start["actors"][p]) / TICK for p in self.actor_pids]
        busy_threads = [
            sum(
                1
                for tid, ticks in end["threads"][p].items()
                if ticks - start["threads"][p].get(tid, 0) > 0.05 * wall * TICK
            )
            for p in self.actor_pids
        ]
        driver_s = (end["driver"] - start["driver"]) / TICK
        ray_s = (end["ray"] - start["ray"]) / TICK
        machine_s = (end["machine"] - start["machine"]) / TICK
        return {
            "wall_s": round(wall, 2),
            "env_steps_per_s": round(env_steps / wall, 3),
            "actor_cpu_s": [round(s, 2) for s in actor_s],
            "actor_cpu_share": [round(s / wall, 3) for s in actor_s],
            "actor_cpu_ms_per_env_step": round(1000 * sum(actor_s) / env_steps, 1),
            "actor_busy_threads": busy_threads,
            "driver_cpu_s": round(driver_s, 2),
            "ray_processes_cpu_s": round(ray_s, 2),
            "rest_of_machine_cpu_s": round(machine_s - sum(actor_s) - driver_s - ray_s, 2),
            "machine_cores_busy": round(machine_s / wall, 2),
        }


def _actor_pids(pool: EvalPool) -> list[int]:
    return ray.get([a.__ray_call__.remote(lambda self: os.getpid()) for a in pool.actors])


def scaling(model: WorldModel, steps: int, repeats: int) -> dict:
    """1 vs 2 actors on the same two jobs of 4 episodes, alternating, warm pools. Both pools
    live side by side, so each actor asks Ray for half a CPU (it still plans on one thread);
    the pool that is not measured idles."""
    cfg = EvalConfig(planner=POLICIES["mppi"], envs_per_actor=4, max_steps=steps)
    warm = dataclasses.replace(cfg, max_steps=2)
    runs: dict[int, list[dict]] = {1: [], 2: []}
    pools = {n: EvalPool(n, cpus_per_actor=0.5) for n in runs}
    try:
        for pool in pools.values():
            evaluate(model, TASKS, EPISODES, cfg=warm, pool=pool)
        for _ in range(repeats):
            for n, pool in pools.items():
                account = CpuAccount(_actor_pids(pool))
                result = evaluate(model, TASKS, EPISODES, cfg=cfg, pool=pool)
                runs[n].append(account.stop(result["env_steps"]))
                print(f"{n} actor(s):", runs[n][-1], flush=True)
    finally:
        for pool in pools.values():
            pool.shutdown()
    best = {n: max(r["env_steps_per_s"] for r in rows) for n, rows in runs.items()}
    return {
        "jobs": 2,
        "envs_per_job": 4,
        "max_steps": steps,
        "env_steps_per_s_1_actor": best[1],
        "env_steps_per_s_2_actors": best[2],
        "speedup_2_actors": round(best[2] / best[1], 2),
        "runs": {f"{n}_actors": rows for n, rows in runs.items()},
    }


def _bare_worker(core: int | None, acts: int, barrier, queue) -> None:
    """One process planning for 4 environments `acts` times with one torch thread."""
    torch.set_num_threads(1)
    if core is not None:
        os.sched_setaffinity(0, {core})
    planner = Planner(load_world_model(CHECKPOINT), POLICIES["mppi"], num_envs=4, seed=0)
    obs, task = torch.randn(4, 24), torch.tensor([0, 1, 2, 3])
    for _ in range(3):
        planner.act(obs, task)
    barrier.wait()
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(acts):
        planner.act(obs, task)
    wall = time.perf_counter() - start
    queue.put({"ms_per_act": 1000 * wall / acts, "cpu_share": (time.process_time() - cpu) / wall})


def bare(acts: int, repeats: int) -> dict:
    """ms per plan of 4 environments in 1 process, 2 free processes and 2 pinned ones."""
    ctx = multiprocessing.get_context("spawn")
    layouts = {"1_process": [None], "2_processes": [None, None], "2_pinned": [0, 1]}
    runs: dict[str, list[list[dict]]] = {name: [] for name in layouts}
    for _ in range(repeats):
        for name, cores in layouts.items():
            barrier, queue = ctx.Barrier(len(cores)), ctx.Queue()
            procs = [
                ctx.Process(target=_bare_worker, args=(core, acts, barrier, queue))
                for core in cores
            ]
            for proc in procs:
                proc.start()
            rows = [queue.get() for _ in procs]
            for proc in procs:
                proc.join()
            runs[name].append([{k: round(v, 3) for k, v in row.items()} for row in rows])
            print(name, runs[name][-1], flush=True)
    best = {
        name: min(statistics.mean(r["ms_per_act"] for r in rows) for rows in samples)
        for name, samples in runs.items()
    }
    return {
        "envs": 4,
        "acts": acts,
        "ms_per_act": {name: round(ms, 1) for name, ms in best.items()},
        "speedup_2_processes": round(2 * best["1_process"] / best["2_processes"], 2),
        "speedup_2_pinned": round(2 * best["1_process"] / best["2_pinned"], 2),
        "runs": runs,
    }


@ray.remote(num_cpus=0)
class _Echo:
    def act(self, obs: np.ndarray) -> np.ndarray:
        return np.zeros((len(obs), 6), dtype=np.float32)


def costs(model: WorldModel, repeats: int = 200) -> dict:
    """Per-step costs behind the choice of one planner per actor: a remote call to another
    actor with 10 observations, a plan for 10 environments here, an env step of each task."""
    echo = _Echo.remote()
    obs = np.zeros((10, 24), dtype=np.float32)
    call = median_seconds(lambda: ray.get(echo.act.remote(obs)), repeats, warmup=20)
    ray.kill(echo)
    torch.set_num_threads(1)
    planner = Planner(model, POLICIES["mppi"], num_envs=10, seed=0)
    task = torch.arange(10)
    plan = median_seconds(lambda: planner.act(torch.from_numpy(obs), task), 5, warmup=2)
    env_ms = {}
    rng = np.random.default_rng(0)
    for name in TASKS:
        env = make_env(name, 0)
        env.reset()
        env_ms[name] = round(
            1000 * median_seconds(lambda e=env: e.step(rng.uniform(-1, 1, e.action_dim)), 200), 3
        )
        env.close()
    return {
        "remote_call_ms_10_envs": round(1000 * call, 3),
        "plan_ms_10_envs_one_thread": round(1000 * plan, 1),
        "env_step_ms": env_ms,
    }


def mt30_eval(
    checkpoint: str | os.PathLike = CHECKPOINT,
    episodes: int = 10,
    envs_per_actor: int = 10,
    compile: bool = False,
    max_steps: int | None = None,
    tasks: str = "mt30",
) -> dict:
    """The paper's MT30 evaluation (`tasks` x `episodes`, full MPPI, eval_mode False) on this
    machine: one actor per CPU but one (left to the driver), sharing the GPUs evenly when Ray
    sees any (each plans its jobs of `envs_per_actor` environments on its GPU share), else on
    the CPU. Returns `evaluate`'s result with the layout and the wall time."""
    if not ray.is_initialized():
        ray.init(include_dashboard=False, logging_level="WARNING")
    resources = ray.cluster_resources()
    gpus, cpus = resources.get("GPU", 0.0), resources.get("CPU", 0.0)
    count = len(tasks.split(",")) if tasks != "mt30" else 30
    jobs = -(-count * episodes // envs_per_actor)
    num_actors = int(max(1, min(jobs, cpus - 1)))
    cfg = EvalConfig(
        planner=PlannerConfig(compile=compile),
        envs_per_actor=envs_per_actor,
        gpus_per_actor=gpus / num_actors,
        max_steps=max_steps,
    )
    start = time.perf_counter()
    result = evaluate(checkpoint, tasks, episodes, num_actors, cfg, progress=True)
    result["wall_s"] = round(time.perf_counter() - start, 1)
    result["layout"] = {
        "num_actors": num_actors,
        "gpus_per_actor": cfg.gpus_per_actor,
        "envs_per_actor": envs_per_actor,
        "jobs": jobs,
        "cluster": {"CPU": cpus, "GPU": gpus},
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mpc-steps", type=int, default=16, help="agent steps per MPPI episode")
    parser.add_argument("--prior-steps", type=int, default=200, help="per policy-prior episode")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs of each setting")
    parser.add_argument("--checkpoint", type=resolve_checkpoint, default="mt30-1M-fp16")
    parser.add_argument("--mt30-gpu", action="store_true", help="the full MT30 evaluation on GPU")
    args = parser.parse_args()
    if args.mt30_gpu:
        if not torch.cuda.is_available():
            raise SystemExit("--mt30-gpu needs a CUDA device")
        write_result("eval_mt30_gpu", mt30_eval(args.checkpoint))
        return
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    model = load_world_model(args.checkpoint)
    steps = {"mppi": args.mpc_steps, "policy_prior": args.prior_steps}
    load_before = os.getloadavg()[0]
    result = {
        "what": "env steps/s of the EvalPool: 1 vs 2 actors with a CPU account, the bare "
        "planner in 1 vs 2 processes, per-step costs, lockstep vs one env per job",
        "checkpoint": args.checkpoint.name,
        "tasks": TASKS,
        "episodes_per_task": EPISODES,
        "cpus_per_actor": 1,
        "repeats": args.repeats,
        "load_average_1m_before": load_before,
        "eval_mode": EvalConfig.eval_mode,
        "planners": {name: dataclasses.asdict(cfg) for name, cfg in POLICIES.items()},
        "reference_ms_per_action_one_core": REFERENCE_MS_PER_ACTION,
        "scaling": scaling(model, args.mpc_steps, args.repeats),
        "bare": bare(max(4, args.mpc_steps // 2), args.repeats),
        "costs": costs(model),
        "rows": measure(model, 1, steps, args.repeats) + measure(model, 2, steps, args.repeats),
    }
    write_result("eval", result)


if __name__ == "__main__":
    main()
