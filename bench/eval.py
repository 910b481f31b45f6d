"""Evaluation throughput: env steps per second of the whole EvalPool, written to
bench/results/eval.json.

For 1 and 2 rollout actors (one CPU each, local Ray with 2 CPUs), with full MPPI (TD-MPC2's
defaults, compiled) and with the policy prior, it times `evaluate` on warm actors two ways:
lockstep (each actor steps all its episodes together, one batched plan per step) and the
baseline measured in the same run, one environment per job (plan for one env, step it, repeat:
how the public TD-MPC2 reference evaluates, ~391 ms per action on one core of this machine kind,
../shared/REFERENCE-NOTES.md). Episodes are cut at a few steps (`max_steps`) to keep it short;
the speed-up is lockstep env-steps/s over baseline env-steps/s.

    python bench/eval.py [--mpc-steps 16] [--prior-steps 200] [--repeats 2] [--checkpoint NAME|PATH]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

import ray

os.environ.setdefault("MUJOCO_GL", "disable")  # before dm_control is imported: no renderer needed
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_result  # noqa: E402

from tdmpc_ray.evaluate.config import EvalConfig  # noqa: E402
from tdmpc_ray.evaluate.pool import EvalPool  # noqa: E402
from tdmpc_ray.evaluate.score import evaluate  # noqa: E402
from tdmpc_ray.model import WorldModel, load_world_model  # noqa: E402
from tdmpc_ray.model.published import resolve_checkpoint  # noqa: E402
from tdmpc_ray.planning import PlannerConfig  # noqa: E402

TASKS = ["walker-walk", "cheetah-run", "cartpole-swingup", "finger-spin"]
EPISODES = 2
REFERENCE_MS_PER_ACTION = 391.0
POLICIES = {
    "mppi": PlannerConfig(compile=True),
    "policy_prior": PlannerConfig(mpc=False, compile=True),
}


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mpc-steps", type=int, default=16, help="agent steps per MPPI episode")
    parser.add_argument("--prior-steps", type=int, default=200, help="per policy-prior episode")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs of each setting")
    parser.add_argument(
        "--checkpoint", type=resolve_checkpoint, default="mt30-1M-fp16"
    )
    args = parser.parse_args()
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    model = load_world_model(args.checkpoint)
    steps = {"mppi": args.mpc_steps, "policy_prior": args.prior_steps}
    load_before = os.getloadavg()[0]
    rows = measure(model, 1, steps, args.repeats) + measure(model, 2, steps, args.repeats)
    write_result(
        "eval",
        {
            "what": "env steps/s of the EvalPool: lockstep batching vs one env per job "
            "(the public reference's way), same run, warm actors",
            "checkpoint": args.checkpoint.name,
            "tasks": TASKS,
            "episodes_per_task": EPISODES,
            "cpus_per_actor": 1,
            "repeats": args.repeats,
            "load_average_1m_before": load_before,
            "eval_mode": EvalConfig.eval_mode,
            "planners": {name: dataclasses.asdict(cfg) for name, cfg in POLICIES.items()},
            "reference_ms_per_action_one_core": REFERENCE_MS_PER_ACTION,
            "rows": rows,
        },
    )


if __name__ == "__main__":
    main()
