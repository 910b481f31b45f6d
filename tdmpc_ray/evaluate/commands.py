"""`tdmpc-ray eval`: score a checkpoint on MT30 tasks with parallel rollout actors.

Planner options are generated from `PlannerConfig`'s fields, so every planner setting can be
overridden (`--iterations 2`, `--num-samples 64`, `--no-mpc`, ...).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import os
import typing
from pathlib import Path

from tdmpc_ray.evaluate.config import EvalConfig
from tdmpc_ray.planning import PlannerConfig

_CLI_DEFAULTS = {"compile": True}
"""Where the verb's default differs from PlannerConfig's: compiling pays off over whole runs."""
_FLAG_HELP = {
    "mpc": "plan with MPPI (default); --no-mpc acts with the policy prior",
    "compile": "fuse kernels with torch.compile (default; a few seconds per actor to compile)",
}


def _planner_options(parser: argparse.ArgumentParser) -> None:
    """One option per PlannerConfig field: --name/--no-name for flags, a value otherwise."""
    group = parser.add_argument_group("planner", "MPPI settings (defaults are TD-MPC2's)")
    hints = typing.get_type_hints(PlannerConfig)
    for f in dataclasses.fields(PlannerConfig):
        default = _CLI_DEFAULTS.get(f.name, f.default)
        flag = "--" + f.name.replace("_", "-")
        if hints[f.name] is bool:
            group.add_argument(
                flag,
                action=argparse.BooleanOptionalAction,
                default=default,
                help=_FLAG_HELP.get(f.name),
            )
        else:
            kind = float if hints[f.name] is float else int
            group.add_argument(flag, type=kind, default=default, help="default %(default)s")


def _eval(args: argparse.Namespace) -> int:
    os.environ.setdefault("MUJOCO_GL", "egl" if args.video else "disable")
    from tdmpc_ray.evaluate.report import format_summary, write_results
    from tdmpc_ray.evaluate.score import evaluate

    planner = PlannerConfig(
        **{f.name: getattr(args, f.name) for f in dataclasses.fields(PlannerConfig)}
    )
    cfg = EvalConfig(
        planner=planner,
        eval_mode=args.eval_mode,
        seed=args.seed,
        envs_per_actor=args.envs_per_actor,
        cpus_per_actor=args.cpus_per_actor,
        gpus_per_actor=args.gpus_per_actor,
        max_steps=args.max_steps,
        video_dir=args.video,
    )
    out = args.out or _default_out(args.checkpoint)
    result = evaluate(
        args.checkpoint, args.tasks, args.episodes, args.num_actors, cfg, progress=True
    )
    print(format_summary(result, write_results(result, out)))
    return 0


def _default_out(checkpoint: str) -> Path:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("eval") / f"{Path(checkpoint).stem}-{stamp}"


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `eval` verb to the `tdmpc-ray` parser."""
    p = subparsers.add_parser(
        "eval",
        help="score a checkpoint on MT30 tasks with parallel rollout actors",
        description="Run episodes of each task on Ray rollout actors (each steps several "
        "environments in lockstep with one batched plan per step) and write per-task returns "
        "and the normalized score to eval.json and eval.csv.",
    )
    p.add_argument(
        "--checkpoint",
        required=True,
        metavar="PATH",
        help="world-model checkpoint: a path, or a published name (mt30-1M-fp16, ...)",
    )
    p.add_argument("--tasks", default="mt30", help="mt30, or comma-separated task names")
    p.add_argument("--episodes", type=int, default=10, help="per task (default %(default)s)")
    p.add_argument("--num-actors", type=int, default=1, help="rollout actors (default 1)")
    p.add_argument(
        "--envs-per-actor",
        type=int,
        default=EvalConfig.envs_per_actor,
        help="episodes one actor steps together as a job; fixes the planner noise (default: 2 "
        "for MPPI on CPU, 10 on GPU or with --no-mpc)",
    )
    p.add_argument("--cpus-per-actor", type=float, default=EvalConfig.cpus_per_actor)
    p.add_argument(
        "--gpus-per-actor",
        type=float,
        default=EvalConfig.gpus_per_actor,
        help="GPU share per actor, e.g. 0.125 for 8 actors on one GPU; each actor then plans "
        "its environments in one pass on it (default %(default)s: CPU)",
    )
    p.add_argument("--seed", type=int, default=EvalConfig.seed, help="run seed (default 0)")
    p.add_argument(
        "--eval-mode",
        action=argparse.BooleanOptionalAction,
        default=EvalConfig.eval_mode,
        help="act with the plan's action as is (training-time evaluation); the default, "
        "--no-eval-mode, adds the planner's std as noise like TD-MPC2's evaluate.py",
    )
    p.add_argument(
        "--max-steps",
        type=int,
        default=None,
        help="testing: cut episodes after N agent steps (scores are then not comparable)",
    )
    p.add_argument("--out", metavar="DIR", help="output folder (default eval/<ckpt>-<time>)")
    p.add_argument("--video", metavar="DIR", help="write an mp4 of each task's first episode")
    _planner_options(p)
    p.set_defaults(handler=_eval)
