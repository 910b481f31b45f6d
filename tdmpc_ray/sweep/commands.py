"""`tdmpc-ray sweep SPEC [key=value ...] [--resume]`."""

from __future__ import annotations

import argparse
import os
import sys


def _sweep(args: argparse.Namespace) -> int:
    os.environ.setdefault("MUJOCO_GL", "disable")  # before dm_control loads, here and in workers
    from tdmpc_ray.config import parse_overrides
    from tdmpc_ray.sweep.runner import run_sweep
    from tdmpc_ray.sweep.spec import load_spec
    from tdmpc_ray.sweep.tables import format_groups, format_pairs, format_table

    spec = load_spec(args.spec, parse_overrides(args.overrides))
    summary = run_sweep(spec, resume=args.resume)
    print(f"\nsweep {spec.name}: {len(summary['trials'])} trials -> {summary['experiment']}\n")
    print(format_table(summary))
    if summary["groups"]:
        print(f"\nover seeds:\n{format_groups(summary)}")
    if summary.get("pairs"):
        print(f"\ngroups against each other, pooled over seeds:\n{format_pairs(summary)}")
    best = summary["best"]
    if best:
        score = best["normalized_score"]
        print(f"\nbest student: {best['student']} (normalized score {score:.2f})")
    elif not summary["errors"]:
        print("\nno trial has an evaluation score (set eval_freq to evaluate)")
    print(f"dashboard:    tdmpc-ray dashboard {summary['experiment']}")
    for trial, error in summary["errors"].items():
        print(f"tdmpc-ray sweep: trial {trial} failed: {error}", file=sys.stderr)
    if summary["unfinished"]:
        print(
            f"tdmpc-ray sweep: interrupted, trials unfinished: {summary['unfinished']}; "
            f"continue with: tdmpc-ray sweep {' '.join([args.spec, *args.overrides])} --resume",
            file=sys.stderr,
        )
        return 130
    return 1 if summary["errors"] else 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `sweep` verb; its help lists every spec key and training setting."""
    from tdmpc_ray.config import format_fields
    from tdmpc_ray.sweep.spec import SweepSpec
    from tdmpc_ray.train.config import TrainConfig

    parser = subparsers.add_parser(
        "sweep",
        help="sweep the distillation recipe with Ray Tune (specs in tune/)",
        description="Run a sweep spec (tune/*.yaml). key=value sets a spec key (any below but "
        "base and space) or a training setting of every trial (e.g. data=DIR steps=1000).",
        epilog=f"spec keys:\n{format_fields(SweepSpec)}\n\n"
        f"training settings (under base:, recipes: or space:, or key=value):\n"
        f"{format_fields(TrainConfig)}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("spec", help="sweep spec YAML, e.g. tune/quick.yaml")
    parser.add_argument("overrides", nargs="*", help="key=value overrides")
    parser.add_argument(
        "--resume", action="store_true", help="continue an interrupted sweep of the same name"
    )
    parser.set_defaults(handler=_sweep)
