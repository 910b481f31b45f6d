"""`tdmpc-ray export CHECKPOINT --out DIR`: a standalone controller folder for a robot."""

from __future__ import annotations

import argparse
import dataclasses
import time

from tdmpc_ray.planning import PlannerConfig

_PLANNER_FIELDS = (
    "iterations",
    "num_samples",
    "num_elites",
    "num_pi_trajs",
    "horizon",
    "min_std",
    "max_std",
    "temperature",
)
_PRECISIONS = ("fp32", "bf16", "int8")
_DIFF_NOTE = """\
max |diff|: the largest gap of any output from the fp32 module's on one random input (actions
  lie in [-1, 1]). MPPI ranks sampled plans: rounding, like a 0.001 change of the observation,
  can swap an elite and move the action far. Judge a quantized MPPI step by its episode scores
  (docs/results/deploy.md); the prior's gap is its rounding error."""


def _export(args: argparse.Namespace) -> int:
    from tdmpc_ray.deploy.exporter import ExportConfig, export_controller

    precisions = tuple(p.strip() for p in args.precision.split(",") if p.strip())
    planner = PlannerConfig(**{f: getattr(args, f) for f in _PLANNER_FIELDS})
    cfg = ExportConfig(planner, args.num_envs, precisions, args.onnx, args.prior)
    start = time.perf_counter()
    kinds = ", ".join(f"{p} ({'ONNX' if p == 'int8' else 'torch.export'})" for p in precisions)
    print(f"exporting {args.checkpoint}: {kinds}")
    manifest, pin = export_controller(args.checkpoint, args.out, cfg)
    print(f"{'program':<20} {'MiB':>6}  max |diff| vs fp32 module")
    for name, entry in manifest["programs"].items():
        print(f"{name:<20} {entry['bytes'] / 2**20:6.2f}  {entry['max_abs_diff_vs_fp32']:.2g}")
    if any(entry["precision"] != "fp32" for entry in manifest["programs"].values()):
        print(_DIFF_NOTE)
    print(
        f"done in {time.perf_counter() - start:.0f} s; wrote {args.out}/ (manifest.json, README.md)"
    )
    print(f"pin it: sha256 of manifest.json {pin} (load_controller(folder, sha256=...))")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `export` verb."""
    p = subparsers.add_parser(
        "export",
        help="export a checkpoint as a standalone controller (torch.export / ONNX) for a robot",
        description="Write a folder a robot runs with torch alone (or ONNX Runtime): one MPPI "
        "step and the policy prior as programs whose warm start and noise are explicit inputs, "
        "a manifest.json and a README with the control loop.",
    )
    p.add_argument(
        "checkpoint",
        metavar="CHECKPOINT",
        help="checkpoint file (any layout) or a published name, e.g. mt30-1M-fp16",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="folder to write (new or empty)")
    p.add_argument(
        "--precision",
        default="fp32",
        help=f"comma-separated, of {', '.join(_PRECISIONS)} (default %(default)s); int8 is ONNX "
        "Runtime's and needs pip install 'tdmpc-ray[deploy]'; bf16 pays only on CPUs with native "
        "bf16",
    )
    p.add_argument("--num-envs", type=int, default=1, help="environments per call (default 1)")
    p.add_argument(
        "--onnx",
        action="store_true",
        help="also write the fp32 programs as .onnx (needs the deploy extra)",
    )
    p.add_argument(
        "--prior",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also export the policy prior (default on)",
    )
    group = p.add_argument_group("MPPI", "baked into the program; defaults are TD-MPC2's")
    defaults = PlannerConfig()
    for f in dataclasses.fields(PlannerConfig):
        if f.name in _PLANNER_FIELDS:
            kind = float if isinstance(getattr(defaults, f.name), float) else int
            group.add_argument(
                "--" + f.name.replace("_", "-"),
                type=kind,
                default=getattr(defaults, f.name),
                help="default %(default)s",
            )
    p.set_defaults(handler=_export)
