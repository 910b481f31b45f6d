"""`tdmpc-ray train [CONFIG.yaml] [key=value ...]`."""

from __future__ import annotations

import argparse

from tdmpc_ray.config import build_config, config_keys


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
    from tdmpc_ray.train.config import TrainConfig

    keys = ", ".join(config_keys(TrainConfig))
    parser = subparsers.add_parser(
        "train",
        help="train or distil a student with Ray Train",
        description=f"Train a TD-MPC2 student. Keys: {keys}.",
    )
    parser.add_argument("config", nargs="?", help="YAML config file (optional)")
    parser.add_argument(
        "overrides", nargs="*", help="key=value overrides, e.g. teacher=ckpt.pt d_coef=0.4"
    )
    parser.set_defaults(handler=_train)
