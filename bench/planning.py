"""Planning speed on one CPU core: ms per action of full MPPI (TD-MPC2's defaults) for the public
TD-MPC2 reference against ours, eager and compiled, for 1 and 30 environments, timed in the
same run.

The reference plans one environment per call (its agent acts for one), so its time per action
is its time per plan; ours plans a batch of environments per call, so ours is the time per call
over the number of environments. Every measurement is a subprocess pinned to one core
(`taskset -c CORE`, 1 torch thread), the settings take turns in `--rounds` alternating rounds,
and each time is the median over all rounds' calls. Ours plans with the published 1M student
(cast to fp32); the reference with its fresh 1M model (the cost does not depend on the weights).

    python bench/planning.py --reference ~/tdmpc2 --reference-python REFVENV/bin/python
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
from train import _commit, _run  # noqa: E402

from tdmpc_ray.model.published import resolve_checkpoint  # noqa: E402

SETTINGS = {
    "reference": (1, False),
    "eager_1": (1, False),
    "compiled_1": (1, True),
    "eager_30": (30, False),
    "compiled_30": (30, True),
}
"""Setting -> (environments per call, compiled)."""


def worker(checkpoint: Path, envs: int, calls: int, compile: bool) -> dict:
    """Times of `calls` plans for `envs` environments (after warm-up) on one thread."""
    import torch
    from reference import call_times

    from tdmpc_ray.model import load_world_model
    from tdmpc_ray.planning import Planner, PlannerConfig

    torch.set_num_threads(1)
    model = load_world_model(checkpoint)
    planner = Planner(model, PlannerConfig(compile=compile), num_envs=envs, seed=0)
    gen = torch.Generator().manual_seed(0)
    obs, task = torch.randn(envs, model.cfg.obs_dim, generator=gen), torch.arange(envs) % 30
    return {"seconds": call_times(lambda: planner.act(obs, task), calls, warmup=2)}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--reference", type=Path, help="checkout of nicklashansen/tdmpc2 (required)"
    )
    parser.add_argument(
        "--reference-python", default=sys.executable, help="python of the reference's venv"
    )
    parser.add_argument("--checkpoint", type=resolve_checkpoint, default="mt30-1M-fp16")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=5, help="timed plans per setting and round")
    parser.add_argument("--core", type=int, default=1)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--envs", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--compile", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.checkpoint, args.envs, args.calls, args.compile)))
        return
    if args.reference is None:
        parser.error("--reference <checkout of nicklashansen/tdmpc2> is required")
    from common import write_result
    from reference import cpu_copy

    copy = cpu_copy(args.reference, Path(tempfile.mkdtemp(prefix="tdmpc2-cpu-")))
    ours = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        "--calls",
        str(args.calls),
        "--checkpoint",
        str(args.checkpoint),
    ]
    reference = [
        args.reference_python,
        str(BENCH / "reference.py"),
        "plan",
        "--copy",
        str(copy),
        "--calls",
        str(args.calls),
    ]
    seconds = {name: [] for name in SETTINGS}
    for round_index in range(args.rounds):
        for name, (envs, compiled) in SETTINGS.items():
            cmd = (
                reference
                if name == "reference"
                else [*ours, "--envs", str(envs), *(["--compile"] * compiled)]
            )
            seconds[name] += [s / envs for s in _run(cmd, args.core)["seconds"]]
            print(
                f"round {round_index} {name}: {1000 * statistics.median(seconds[name]):.0f} ms/action",
                flush=True,
            )
    ms = {name: 1000 * statistics.median(values) for name, values in seconds.items()}
    rows = [
        {
            "setting": name,
            "envs": envs,
            "compile": compiled,
            "ms_per_action": round(ms[name], 1),
            "ratio_to_reference": round(ms[name] / ms["reference"], 3),
        }
        for name, (envs, compiled) in SETTINGS.items()
    ]
    for row in rows:
        print(row)
    write_result(
        "planning",
        {
            "what": "ms per action of full MPPI (TD-MPC2 defaults), 1 core, 1 thread: the public reference "
            "(eager, one env per plan) vs ours (published 1M student, batched envs), alternating rounds in one run",
            "command": "python bench/planning.py --reference <tdmpc2 checkout> --reference-python <its venv>",
            "reference_commit": _commit(args.reference),
            "checkpoint": args.checkpoint.name,
            "rounds": args.rounds,
            "calls_per_round": args.calls,
            "rows": rows,
            "goals": {"compiled_30": "<= 0.5x the reference per action"},
        },
    )


if __name__ == "__main__":
    main()
