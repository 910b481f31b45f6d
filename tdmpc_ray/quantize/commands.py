"""`tdmpc-ray quantize CKPT --mode MODE --out PATH`: write a quantized copy of a checkpoint."""

from __future__ import annotations

import argparse

from tdmpc_ray.quantize import MODES


def _quantize(args: argparse.Namespace) -> int:
    from tdmpc_ray.quantize.export import quantize_checkpoint

    report = quantize_checkpoint(args.checkpoint, args.out, args.mode, args.task_set)
    print(report.format())
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `quantize` verb."""
    p = subparsers.add_parser(
        "quantize",
        help="write a quantized copy of a checkpoint (fp16, per-channel int8, the paper's modes)",
        description="Quantize a world-model checkpoint (any layout tdmpc-ray reads) and write it "
        "in tdmpc-ray's format; print its size and its output errors against the source. "
        "Modes: fp16; int8 (per-output-channel int8 weights, rest fp16); and, to compare with the "
        "paper's files, mixed (Q ensembles as qint8 with scale 1.0, rest fp16) and int8-paper "
        "(everything qint8 with scale 1.0).",
    )
    p.add_argument(
        "checkpoint",
        metavar="CKPT",
        help="source checkpoint (a path or a published name, e.g. mt30-1M-fp16)",
    )
    p.add_argument("--mode", choices=MODES, required=True)
    p.add_argument("--out", required=True, metavar="PATH", help="quantized checkpoint to write")
    p.add_argument(
        "--task-set",
        default="mt30",
        help="task set of the checkpoint (default %(default)s; a task name for single-task)",
    )
    p.set_defaults(handler=_quantize)
