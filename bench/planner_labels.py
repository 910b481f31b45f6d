"""Planner-label throughput on CPU: states per second that one labelling actor (one core, one
torch thread) labels with the teacher's cold-started MPPI distribution (`data label --mpc`,
`tdmpc_ray.data.label.planner_labels`), for the study's reduced planner (i2-s128, eager and
compiled) and TD-MPC2's full MPPI. Teacher: the published 1M student. Each setting labels
episodes of `--states` states (one planner batch each); the time is the median over
`--repeats` episodes after one warm-up episode (which also compiles).

    python bench/planner_labels.py [--states 32] [--repeats 3] [--note "..."]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import median_seconds, write_result  # noqa: E402

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


def states_per_second(model, cfg: PlannerConfig, states: int, repeats: int) -> dict:
    """Median time to label one episode of `states` states with `cfg`, and states/s."""
    gen = np.random.default_rng(0)
    obs = gen.standard_normal((1, states + 1, model.cfg.obs_dim), dtype=np.float32)
    episode = iter(range(repeats + 1))

    def label_one() -> None:
        e = next(episode)
        planner_labels(model, cfg, 0, obs, np.array([e % 30]), np.array([e]))

    seconds = median_seconds(label_one, repeats)
    return {"states": states, "seconds_per_episode": round(seconds, 3),
            "states_per_s": round(states / seconds, 2)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", type=resolve_checkpoint, default="mt30-1M-fp16")
    parser.add_argument("--states", type=int, default=32, help="states per episode")
    parser.add_argument("--full-states", type=int, default=8, help="states per episode, full MPPI")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--note", default="", help="what else ran on the machine")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = load_world_model(args.checkpoint).requires_grad_(False)
    rows = []
    for name, cfg in SETTINGS.items():
        states = args.full_states if name == "full-mppi" else args.states
        rows.append({"setting": name, "planner": dataclasses.asdict(cfg),
                     **states_per_second(model, cfg, states, args.repeats)})  # fmt: skip
        print(rows[-1]["setting"], rows[-1]["states_per_s"], "states/s")
    write_result("planner_labels", {
        "what": "planner labels (cold-started MPPI mean and std per state) per second, one "
                "labelling actor: 1 core, 1 torch thread, CPU",
        "command": "python bench/planner_labels.py " + " ".join(sys.argv[1:]),
        "checkpoint": Path(args.checkpoint).name,
        "repeats": args.repeats,
        "note": args.note,
        "rows": rows,
    })  # fmt: skip


if __name__ == "__main__":
    main()
