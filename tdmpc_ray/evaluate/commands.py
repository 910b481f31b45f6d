"""`tdmpc-ray eval`: score a checkpoint on MT30 tasks with parallel rollout actors; `tdmpc-ray
compare`: two agents on the same environment seeds.

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

RECORD_FILE = "episodes.jsonl"
"""Every finished episode of an `eval` run, beside its eval.json (`record.EpisodeRecord`)."""
_CLI_DEFAULTS = {"compile": True}
"""Where the verb's default differs from PlannerConfig's: compiling pays off over whole runs."""
_FLAG_HELP = {
    "mpc": "plan with MPPI (default); --no-mpc acts with the policy prior",
    "compile": "fuse kernels with torch.compile (default; a few seconds per actor to compile)",
    "env_block": "environments planned together in one block of matmuls (default: 2 on CPU, "
    "all of a job's on GPU)",
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
            help_text = _FLAG_HELP.get(f.name, "default %(default)s")
            group.add_argument(
                flag, type=kind, default=default, metavar=kind.__name__.upper(), help=help_text
            )


def eval_config(args: argparse.Namespace, video_dir: str | None = None) -> EvalConfig:
    """The EvalConfig of the options `eval_options` added."""
    planner = PlannerConfig(
        **{f.name: getattr(args, f.name) for f in dataclasses.fields(PlannerConfig)}
    )
    return EvalConfig(
        planner=planner,
        eval_mode=args.eval_mode,
        seed=args.seed,
        envs_per_actor=args.envs_per_actor,
        cpus_per_actor=args.cpus_per_actor,
        gpus_per_actor=args.gpus_per_actor,
        max_steps=args.max_steps,
        video_dir=video_dir,
    )


def _eval(args: argparse.Namespace) -> int:
    os.environ.setdefault("MUJOCO_GL", "egl" if args.video else "disable")
    from tdmpc_ray.evaluate.report import format_summary, write_results
    from tdmpc_ray.evaluate.score import evaluate

    if args.resume and not args.out:
        raise ValueError("--resume continues the run in --out DIR: name the folder")
    out = Path(args.out or _default_out(Path(args.checkpoint).stem))
    record = out / RECORD_FILE
    if record.is_file() and not args.resume:
        raise ValueError(
            f"{record}: {out} holds episodes of an earlier run; --resume continues or extends it "
            "(same settings), or choose another --out"
        )
    result = evaluate(
        args.checkpoint,
        args.tasks,
        args.episodes,
        args.num_actors,
        eval_config(args, args.video),
        progress=True,
        record=record,
    )
    print(format_summary(result, write_results(result, out)))
    return 0


def _compare(args: argparse.Namespace) -> int:
    os.environ.setdefault("MUJOCO_GL", "disable")
    from tdmpc_ray.atomic import write_json
    from tdmpc_ray.evaluate.compare import (
        compare_results,
        evaluate_checkpoints,
        format_comparison,
        is_result,
        load_result,
        sources,
    )
    from tdmpc_ray.evaluate.report import write_results
    from tdmpc_ray.provenance import provenance

    inputs = {"a": args.a, "b": args.b}
    names = tuple(_name(path) for path in inputs.values())
    names = names if names[0] != names[1] else ("A", "B")
    results = {side: load_result(path) for side, path in inputs.items() if is_result(path)}
    out = Path(args.out or _default_out(f"{names[0]}-vs-{names[1]}", "compare"))
    todo = [side for side in inputs if side not in results]
    evaluated = evaluate_checkpoints(
        [inputs[side] for side in todo],
        args.tasks,
        args.episodes,
        args.num_actors,
        eval_config(args),
        progress=True,
        labels=[f"{side.upper()} = {names['ab'.index(side)]}" for side in todo],
    )
    paths = []
    for side, result in zip(todo, evaluated, strict=True):
        results[side] = result
        paths += write_results(result, out / side)
    report = compare_results([(results["a"], results["b"])], names)
    report.update(
        inputs=inputs, sources=sources(results["a"], results["b"]), provenance=provenance()
    )
    paths.append(write_json(out / "compare.json", report))
    print(format_comparison(report))
    print("\n".join(f"wrote             {path}" for path in paths))
    return 0


def _name(path: str) -> str:
    """A short name for an input: an eval.json's folder name, another file's stem, a folder's name."""
    path = Path(path)
    return path.parent.name if path.name == "eval.json" else path.stem if path.suffix else path.name


def _default_out(name: str, parent: str = "eval") -> Path:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path(parent) / f"{name}-{stamp}"


def eval_options(p: argparse.ArgumentParser) -> None:
    """The options of an evaluation run (tasks, episodes, actors, seed, acting, planner), shared
    by every verb that evaluates checkpoints."""
    p.add_argument(
        "--tasks",
        default="mt30",
        metavar="NAMES",
        help="a task set (mt30) or comma-separated task names (default %(default)s)",
    )
    p.add_argument(
        "--episodes", type=int, default=10, metavar="INT", help="per task (default %(default)s)"
    )
    p.add_argument(
        "--num-actors",
        type=int,
        default=None,
        metavar="INT",
        help="rollout actors (default: as many as the CPUs allow at --cpus-per-actor each, at "
        "most one per job; the run says how many work)",
    )
    p.add_argument(
        "--envs-per-actor",
        type=int,
        default=EvalConfig.envs_per_actor,
        metavar="INT",
        help="episodes one actor steps together as a job; fixes the planner noise (default: 2 "
        "for MPPI on CPU, 10 on GPU or with --no-mpc)",
    )
    p.add_argument(
        "--cpus-per-actor",
        type=float,
        default=EvalConfig.cpus_per_actor,
        metavar="FLOAT",
        help="CPUs Ray reserves for each actor; it plans with that many torch threads "
        "(default %(default)s)",
    )
    p.add_argument(
        "--gpus-per-actor",
        type=float,
        default=EvalConfig.gpus_per_actor,
        metavar="FLOAT",
        help="GPU share per actor, e.g. 0.125 for 8 actors on one GPU; each actor then plans "
        "its environments in one pass on it (default %(default)s: CPU)",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=EvalConfig.seed,
        metavar="INT",
        help="run seed (default %(default)s)",
    )
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
        metavar="INT",
        help="testing: cut episodes after N agent steps (scores are then not comparable)",
    )
    _planner_options(p)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `eval` and `compare` verbs to the `tdmpc-ray` parser."""
    p = subparsers.add_parser(
        "eval",
        help="score a checkpoint on MT30 tasks with parallel rollout actors",
        description="Run episodes of each task on Ray rollout actors (each steps several "
        "environments in lockstep with one batched plan per step) and write per-task returns, "
        'env seeds and the normalized score and IQM with their 95% intervals (or "too few '
        'episodes for an interval") to eval.json and eval.csv.',
    )
    p.add_argument(
        "--checkpoint",
        required=True,
        metavar="PATH",
        help="world-model checkpoint: a path, or a published name (mt30-1M-fp16, ...)",
    )
    p.add_argument("--out", metavar="DIR", help="output folder (default eval/<ckpt>-<time>)")
    p.add_argument(
        "--resume",
        action="store_true",
        help=f"continue the run in --out from its {RECORD_FILE} (finished episodes are kept as "
        "they arrive): after a stop, or with more --episodes or --tasks to extend it",
    )
    p.add_argument("--video", metavar="DIR", help="write an mp4 of each task's first episode")
    eval_options(p)
    p.set_defaults(handler=_eval)

    p = subparsers.add_parser(
        "compare",
        help="paired comparison of two agents on the same env seeds (score difference, P(A > B))",
        description="Compare A with B, each an evaluation result (eval.json or its folder) or "
        "a checkpoint; checkpoints are evaluated with the options below (the same for both, so "
        "every episode runs on the same env seed). Refuses results that do not share tasks, "
        "episodes and env seeds. Reports A - B with a paired 95% interval, P(A > B), "
        "a per-task table and the verdict, and writes compare.json (with the evaluations of "
        "checkpoints in a/ and b/).",
    )
    p.add_argument("a", metavar="A", help="eval.json, its folder, or a checkpoint")
    p.add_argument("b", metavar="B", help="eval.json, its folder, or a checkpoint")
    p.add_argument("--out", metavar="DIR", help="output folder (default compare/<A>-vs-<B>-<time>)")
    eval_options(p)
    p.set_defaults(handler=_compare)
