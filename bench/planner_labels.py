"""Planner-label throughput on CPU: states per second that one labelling actor (one core, one
torch thread) labels with the teacher's cold-started MPPI distribution (`data label --mpc`,
`tdmpc_ray.data.label.planner_labels`), for the study's reduced planner (i2-s128, eager and
compiled) and TD-MPC2's full MPPI. Teacher: the published 1M student. Each setting labels
episodes of `--states` states (one planner batch each), after one warm-up episode (which also
compiles); the settings take turns in `--rounds` rounds of `--repeats` episodes, so a machine
whose load changes weighs on all of them alike, and each time is the median over all rounds.

    python bench/planner_labels.py [--states 32] [--rounds 3] [--repeats 3] [--note "..."]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_result  # noqa: E402

from tdmpc_ray.data.label import planner_labels  # noqa: E402
from tdmpc_ray.model import load_world_model  # noqa: E402
from tdmpc_ray.model.published import resolve_checkpoint  # noqa: E402
from tdmpc_ray.planning import PlannerConfig  # noqa: E402

STUDY = PlannerConfig(iterations=2, num_samples=128, num_elites=16, num_pi_trajs=6)
"""The study's reduced planner (tune/study.yaml's eval_planner)."""
SETTINGS = {
    "i2-s128": STUDY,
    "i2-s128-compiled": dataclasses.replace(STUDY, compile=True),
    "full-mppi": PlannerConfig(),
}


def episode_seconds(model, cfg: PlannerConfig, states: int, episodes: range) -> list[float]:
    """Wall time of labelling each of `episodes` (one of `states` random states, its task the
    episode id mod 30) with `cfg`."""
    obs = np.random.default_rng(0).standard_normal((1, states + 1, model.cfg.obs_dim))
    times = []
    for e in episodes:
        start = time.perf_counter()
        planner_labels(model, cfg, 0, obs.astype(np.float32), np.array([e % 30]), np.array([e]))
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", type=resolve_checkpoint, default="mt30-1M-fp16")
    parser.add_argument("--states", type=int, default=32, help="states per episode")
    parser.add_argument("--full-states", type=int, default=8, help="states per episode, full MPPI")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3, help="episodes per setting and round")
    parser.add_argument("--note", default="", help="what else ran on the machine")
    args = parser.parse_args()
    torch.set_num_threads(1)
    load_at_start = os.getloadavg()[0]
    model = load_world_model(args.checkpoint).requires_grad_(False)
    states = {name: args.full_states if name == "full-mppi" else args.states for name in SETTINGS}
    times: dict[str, list[float]] = {name: [] for name in SETTINGS}
    for name, cfg in SETTINGS.items():  # warm-up (and compile)
        episode_seconds(model, cfg, states[name], range(1))
    for r in range(args.rounds):
        for name, cfg in SETTINGS.items():
            episodes = range(1 + r * args.repeats, 1 + (r + 1) * args.repeats)
            times[name] += episode_seconds(model, cfg, states[name], episodes)
    rows = []
    for name, cfg in SETTINGS.items():
        seconds = statistics.median(times[name])
        rows.append(
            {
                "setting": name,
                "planner": dataclasses.asdict(cfg),
                "states": states[name],
                "episodes": len(times[name]),
                "seconds_per_episode": round(seconds, 3),
                "states_per_s": round(states[name] / seconds, 2),
            }
        )
        print(name, rows[-1]["states_per_s"], "states/s")
    write_result(
        "planner_labels",
        {
            "what": "planner labels (cold-started MPPI mean and std per state) per second, one "
            "labelling actor: 1 core, 1 torch thread, CPU",
            "command": shlex.join(["python", "bench/planner_labels.py", *sys.argv[1:]]),
            "checkpoint": Path(args.checkpoint).name,
            "rounds": args.rounds,
            "repeats": args.repeats,
            "load_average_1m_at_start": load_at_start,
            "note": args.note,
            "rows": rows,
        },
    )


if __name__ == "__main__":
    main()
