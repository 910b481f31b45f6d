"""Training speed on one CPU core: the public TD-MPC2 reference's update against ours, eager and
compiled, at batch 256 and 1024, timed in the same run.

Every measurement is a subprocess pinned to one core (`taskset -c CORE`, 1 torch thread) that
times `--calls` updates after warm-up (compilation happens there); the settings take turns in
`--rounds` alternating rounds, and each reported time is the median over all rounds' calls, so
load drifts hit every setting alike. Ours is the paper's recipe (reward distillation, d_coef
0.45, labels in the batch); the reference trains from scratch (it has no distillation term).
A profile of one eager and one compiled update (top ops by self time) says where time goes.

    python bench/train.py --reference ~/tdmpc2 --reference-python REFVENV/bin/python

(the reference's venv: see bench/reference.py).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

BENCH = Path(__file__).resolve().parent
SETTINGS = ("reference", "eager", "compiled")


def worker(batch_size: int, calls: int, compile: bool, profile: bool) -> dict:
    """Times of `calls` updates of our 1M student (after warm-up) on one thread; with `profile`,
    the top ops of one more update instead."""
    import torch

    from tdmpc_ray.data.episode_store import Batch
    from tdmpc_ray.model import WorldModel, model_config
    from tdmpc_ray.train.losses import LossConfig
    from tdmpc_ray.train.update import Learner, OptimConfig, read_metrics

    sys.path.insert(0, str(BENCH))
    from reference import call_times

    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    task = torch.randint(0, 30, (batch_size,), generator=gen)
    torch.manual_seed(0)
    model = WorldModel(model_config(1))
    batch = Batch(
        obs=torch.randn(4, batch_size, 24, generator=gen),
        action=(torch.rand(3, batch_size, 6, generator=gen) * 2 - 1) * model.action_masks[task],
        reward=torch.rand(3, batch_size, 1, generator=gen),
        task=task,
        teacher={"reward": torch.rand(3, batch_size, 1, generator=gen)},
    )
    learner = Learner(model, LossConfig(d_coef=0.45), OptimConfig(compile=compile))
    step = lambda: read_metrics(learner.update(batch))  # noqa: E731
    if not profile:
        return {"seconds": call_times(step, calls, warmup=3)}
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    call_times(step, 1, warmup=3)
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    return {
        "top_ops": [
            {
                "op": e.key,
                "self_ms": round(e.self_cpu_time_total / 1000, 1),
                "share": round(e.self_cpu_time_total / total, 3),
                "calls": e.count,
            }
            for e in events[:12]
        ]
    }


def _run(cmd: list[str], core: int) -> dict:
    """Run a measurement subprocess pinned to `core` with 1 thread; its JSON output."""
    env = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        ["taskset", "-c", str(core), *cmd],
        capture_output=True,
        text=True,
        env={**env, **_passthrough()},
        check=False,
    )
    if done.returncode:
        raise RuntimeError(f"{' '.join(cmd[:3])} failed: {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _passthrough() -> dict:
    import os

    return {
        k: v for k, v in os.environ.items() if k in ("HOME", "TMPDIR", "TORCHINDUCTOR_CACHE_DIR")
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--reference", type=Path, help="checkout of nicklashansen/tdmpc2 (required)"
    )
    parser.add_argument(
        "--reference-python", default=sys.executable, help="python of the reference's venv"
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=8, help="timed updates per setting and round")
    parser.add_argument("--core", type=int, default=1)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=256, help=argparse.SUPPRESS)
    parser.add_argument("--compile", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--profile", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.batch, args.calls, args.compile, args.profile)))
        return
    if args.reference is None:
        parser.error("--reference <checkout of nicklashansen/tdmpc2> is required")
    sys.path.insert(0, str(BENCH))
    from common import write_result
    from reference import cpu_copy

    copy = cpu_copy(args.reference, Path(tempfile.mkdtemp(prefix="tdmpc2-cpu-")))
    ours = [sys.executable, str(Path(__file__).resolve()), "--worker", "--calls", str(args.calls)]
    commands = {
        "reference": lambda b: [
            args.reference_python,
            str(BENCH / "reference.py"),
            "update",
            "--copy",
            str(copy),
            "--batch",
            str(b),
            "--calls",
            str(args.calls),
        ],
        "eager": lambda b: [*ours, "--batch", str(b)],
        "compiled": lambda b: [*ours, "--batch", str(b), "--compile"],
    }
    rows = []
    for batch_size in (256, 1024):
        seconds = {name: [] for name in SETTINGS}
        for round_index in range(args.rounds):
            for name in SETTINGS:
                seconds[name] += _run(commands[name](batch_size), args.core)["seconds"]
                print(
                    f"b{batch_size} round {round_index} {name}: "
                    f"{1000 * statistics.median(seconds[name]):.0f} ms",
                    flush=True,
                )
        ms = {name: 1000 * statistics.median(values) for name, values in seconds.items()}
        best = min(ms["eager"], ms["compiled"])
        rows.append(
            {
                "batch_size": batch_size,
                "threads": 1,
                "rounds": args.rounds,
                "calls_per_round": args.calls,
                **{f"{name}_ms_per_update": round(value, 1) for name, value in ms.items()},
                "speedup_eager_vs_reference": round(ms["reference"] / ms["eager"], 2),
                "speedup_compiled_vs_reference": round(ms["reference"] / ms["compiled"], 2),
                "speedup_compiled_vs_eager": round(ms["eager"] / ms["compiled"], 2),
                "speedup_best_vs_reference": round(ms["reference"] / best, 2),
            }
        )
        print(rows[-1], flush=True)
    profile = {
        name: _run(
            [*ours, "--batch", "256", "--profile", *(["--compile"] if name == "compiled" else [])],
            args.core,
        )["top_ops"]
        for name in ("eager", "compiled")
    }
    write_result(
        "train",
        {
            "what": "ms per update of TD-MPC2's update, 1M MT30 student, 1 core, 1 thread: the public "
            "reference (eager, from scratch) vs ours (d_coef 0.45), eager and compiled, alternating rounds in one run",
            "command": "python bench/train.py --reference <tdmpc2 checkout> --reference-python <its venv>",
            "reference_commit": _commit(args.reference),
            "rows": rows,
            "profile_batch_256": profile,
            "goals": {"best_vs_reference": ">= 1.5 at 256 and 1024", "compiled_vs_eager": ">= 1.3"},
        },
    )


def _commit(checkout: Path) -> str | None:
    done = subprocess.run(
        ["git", "-C", str(checkout), "rev-parse", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    )
    return done.stdout.strip() or None


if __name__ == "__main__":
    main()
