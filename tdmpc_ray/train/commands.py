"""`tdmpc-ray train [CONFIG.yaml] [key=value ...]`."""

from __future__ import annotations

import argparse

from tdmpc_ray.config import build_config, format_fields


def _train(args: argparse.Namespace) -> int:
    from tdmpc_ray.train.config import TrainConfig
    from tdmpc_ray.train.trainer import train

    yaml_path = args.config if args.config and "=" not in args.config else None
    overrides = ([args.config] if args.config and yaml_path is None else []) + args.overrides
    cfg = build_config(TrainConfig, yaml_path, overrides)
    summary = train(cfg)
    print(f"\nrun {summary['run']} finished")
    for key in ("step", "total_loss", "distill_loss", "updates_per_s", "normalized_score"):
        if key in summary["metrics"]:
            print(f"  {key:<18} {summary['metrics'][key]:.4g}")
    print(f"  checkpoint         {summary['checkpoint']}")
    if "student" in summary:
        print(f"  student            {summary['student']}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `train` verb; its help lists every config key with type, default and meaning."""
    from tdmpc_ray.train.config import TrainConfig

    parser = subparsers.add_parser(
        "train",
        help="train or distil a student with Ray Train",
        description="Train a TD-MPC2 student with Ray Train, distilling from `teacher` when one "
        "is set (a checkpoint path or a published name such as mt30-1M-fp16). Settings come from "
        "an optional YAML file, then key=value overrides.",
        epilog=f"keys (YAML or key=value):\n{format_fields(TrainConfig)}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("config", nargs="?", help="YAML config file (optional)")
    parser.add_argument(
        "overrides", nargs="*", help="key=value overrides, e.g. teacher=mt30-1M-fp16 d_coef=0.4"
    )
    parser.set_defaults(handler=_train)
