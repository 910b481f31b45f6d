"""`tdmpc-ray dashboard RESULTS_DIR`: a live web page of a Ray Tune sweep, or a static export."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _export(args: argparse.Namespace) -> int:
    from tdmpc_ray.dashboard.server import export_html, printable
    from tdmpc_ray.evaluate.stats import Interval

    payload = export_html(args.results_dir, args.export)
    best = next((t for t in payload["trials"] if t["id"] == payload["best"]), None)
    score = best and Interval(best["latest_score"], best["latest_low"], best["latest_high"])
    summary = f"best {printable(best['id'])} ({score.format()})" if best else "no evaluations yet"
    print(f"{len(payload['trials'])} trials, {summary}")
    print(f"wrote {printable(args.export)}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from tdmpc_ray.dashboard.server import make_server

    root = Path(args.results_dir)
    if root.exists() and not root.is_dir():
        raise ValueError(f"{root}: not a folder (pass the Ray Tune experiment folder)")
    server = make_server(root, args.host, args.port, args.refresh)
    with server:
        if not root.exists():
            print(f"{root} does not exist yet; the page will show the sweep once it does.")
        if not server.local_only:
            print(
                f"warning: listening on {args.host}: anyone who can reach it can read the results"
            )
        print(f"Dashboard for {root.absolute()}: {server.url}  (Ctrl-C to stop)", flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            print("stopped", file=sys.stderr)
    return 0


def _dashboard(args: argparse.Namespace) -> int:
    return _export(args) if args.export else _serve(args)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `dashboard` verb to the `tdmpc-ray` parser."""
    p = subparsers.add_parser(
        "dashboard",
        help="web page of a Ray Tune sweep's results, live or exported to one HTML file",
        description="Serve a page that follows a sweep while it runs (trials table, score vs "
        "each swept key and vs steps with 95% intervals, paired difference from the scratch "
        "trial, per-task scores, best trial), or export it as one self-contained HTML file.",
    )
    p.add_argument("results_dir", metavar="RESULTS_DIR", help="Ray Tune experiment folder")
    p.add_argument("--port", type=int, default=8050, help="default %(default)s (0: any free)")
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default %(default)s: this machine only)",
    )
    p.add_argument(
        "--refresh", type=float, default=3.0, help="seconds between page refreshes (default 3)"
    )
    p.add_argument(
        "--export", metavar="REPORT.html", help="write a static self-contained page and exit"
    )
    p.set_defaults(handler=_dashboard)
