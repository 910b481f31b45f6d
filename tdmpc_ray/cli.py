"""`tdmpc-ray <verb>`: the command-line entry point.

Each part of the package owns its verbs: a module with `register(subparsers)` that adds its
parser and sets `handler`. This file only collects them, so `--help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

_VERB_MODULES = (
    "tdmpc_ray.quickstart",
    "tdmpc_ray.model.commands",
    "tdmpc_ray.evaluate.commands",
    "tdmpc_ray.data.commands",
    "tdmpc_ray.train.commands",
    "tdmpc_ray.quantize.commands",
    "tdmpc_ray.deploy.commands",
    "tdmpc_ray.sweep.commands",
    "tdmpc_ray.dashboard.commands",
)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser with every verb."""
    parser = argparse.ArgumentParser(
        prog="tdmpc-ray",
        description="Train, distil, evaluate and quantize TD-MPC2 world models on Ray.",
    )
    subparsers = parser.add_subparsers(dest="verb", metavar="<verb>", required=True)
    for name in _VERB_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse `argv`, run the verb, and turn user errors into one clear line and exit code 2."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except (ValueError, FileNotFoundError, NotImplementedError) as err:
        print(f"tdmpc-ray {args.verb}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"tdmpc-ray {args.verb}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
