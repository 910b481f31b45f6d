"""`tdmpc-ray data <sub-verb>`: build and look at Parquet episode data sets.

Each sub-verb is one `_add_*` function in `_SUBVERBS`; `generate` (dm_control rollouts) and
`label` (teacher rewards) join the tuple when their parts exist.
"""

from __future__ import annotations

import argparse

from tdmpc_ray.data.layout import EPISODES_PER_FILE


def _convert(args: argparse.Namespace) -> int:
    from tdmpc_ray.data.convert import convert

    summary = convert(args.sources, args.dst, args.episodes_per_file, args.task_set)
    print(summary.format())
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from tdmpc_ray.data.dataset_info import dataset_info, format_inspect

    print(format_inspect(dataset_info(args.path)))
    return 0


def _add_convert(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert",
        help="convert TD-MPC2 chunk_N.pt files into Parquet episode parts (resumable)",
        description="Convert TD-MPC2's public chunk_N.pt files into Parquet episode parts in "
        "parallel on Ray. Rerunning the same command resumes an interrupted conversion.",
    )
    p.add_argument(
        "sources", nargs="+", metavar="SRC", help="chunk_N.pt files, in episode-id order"
    )
    p.add_argument("dst", metavar="DST", help="output directory of part-NNNNN.parquet files")
    p.add_argument(
        "--episodes-per-file",
        type=int,
        default=EPISODES_PER_FILE,
        help="episodes per part file (default %(default)s)",
    )
    p.add_argument("--task-set", choices=("mt30", "mt80"), default="mt30")
    p.set_defaults(handler=_convert)


def _add_inspect(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "inspect",
        help="per-task episodes, transitions, returns, size, schema and metadata of a data set",
    )
    p.add_argument("path", metavar="PATH", help="data set directory or one part file")
    p.set_defaults(handler=_inspect)


_SUBVERBS = (_add_convert, _add_inspect)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `data` verb and its sub-verbs to the `tdmpc-ray` parser."""
    parser = subparsers.add_parser("data", help="convert, inspect and load episode data sets")
    sub = parser.add_subparsers(dest="data_verb", metavar="<data-verb>", required=True)
    for add in _SUBVERBS:
        add(sub)
