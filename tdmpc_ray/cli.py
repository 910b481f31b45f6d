"""`tdmpc-ray <verb>`: the command-line entry point.

Each part of the package owns its verbs: a module with `register(subparsers)` that adds its
parser and sets `handler`. This file only collects them, so `--help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from tdmpc_ray import __version__

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
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="verb", metavar="<verb>", required=True)
    for name in _VERB_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


class _TokenAuthNotice(logging.Filter):
    """Drops Ray's notice that it turned token authentication on for a new local cluster (the
    notice, not the authentication: Ray keeps it on). Every other Ray warning passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Token authentication is enabled")


def hide_token_auth_notice() -> None:
    """Keep Ray's token authentication on without its notice on every verb that starts Ray
    (Ray turns it on by default for a new local cluster: the notice asks nothing of a user)."""
    logger = logging.getLogger("ray._private.authentication.authentication_token_setup")
    if not any(isinstance(f, _TokenAuthNotice) for f in logger.filters):
        logger.addFilter(_TokenAuthNotice())


def main(argv: list[str] | None = None) -> int:
    """Parse `argv`, run the verb, and turn user errors into one clear line and exit code 2."""
    args = build_parser().parse_args(argv)
    hide_token_auth_notice()
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
