"""`tdmpc-ray quickstart`: the whole pipeline end to end on built-in defaults, on one machine.

Generate a small multi-task data set with dm_control rollouts, train a small teacher on it, label
the data with the teacher, sweep two students (from scratch and distilled) with Ray Tune, score
them and the teacher with rollout actors, quantize the best student to int8, export the sweep's
dashboard, and print one screen of results. Everything goes under one folder.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from tdmpc_ray.atomic import write_json

STUDENT_DIMS = {"enc_dim": 128, "mlp_dim": 160, "latent_dim": 64}
"""Students a quarter of the 1M preset (0.35M parameters)."""


@dataclass(frozen=True)
class QuickstartConfig:
    """Sizes of every stage; the defaults finish in about 10 minutes on 2 CPU cores."""

    out: str = "quickstart"
    tasks: str = "cartpole-balance,cup-catch,reacher-easy"
    episodes_per_task: int = 6
    max_steps: int = 200
    """Agent steps per generated and evaluated episode (500 in MT30: scores here are not MT30's)."""
    teacher_steps: int = 600
    student_steps: int = 400
    batch_size: int = 128
    d_coef: float = 0.45
    eval_episodes: int = 2
    seed: int = 1


TINY = QuickstartConfig(episodes_per_task=2, max_steps=40, teacher_steps=30, student_steps=20,
                        batch_size=32, eval_episodes=1)  # fmt: skip
"""The CI-sized run: every stage, minimal sizes."""

FULL_PATH = """\
The real MT30 path (the paper's setting; a GPU cluster for the 317M teacher, see docs/cluster.md):

  1. Data: the public MT30 chunks (345M transitions) -> Parquet, bounded memory, resumable
       tdmpc-ray data convert chunk_0.pt chunk_1.pt chunk_2.pt chunk_3.pt data/mt30
  2. Teacher: TD-MPC2's released 317M MT30 checkpoint (mt30-317M.pt, from the TD-MPC2 release);
     optionally cache its labels so trials never wait for it:
       tdmpc-ray data label --teacher checkpoints/mt30-317M.pt data/mt30
  3. Students: the paper's sweeps (Table 1: d_coef; Table 2: batch x steps; Table 3: teacher size)
       tdmpc-ray sweep tune/dcoef.yaml data=$PWD/data/mt30 teacher=$PWD/checkpoints/mt30-317M.pt
       tdmpc-ray dashboard sweeps/dcoef
  4. Score the best student on all 30 tasks (10 episodes each, full MPPI)
       tdmpc-ray eval --checkpoint BEST/student.pt --tasks mt30 --episodes 10 --num-actors 8
  5. Quantize it for deployment (per-channel int8, ~2 MiB)
       tdmpc-ray quantize BEST/student.pt student-int8.pt --mode int8
On a cluster, submit any step as a job:
  ray job submit --working-dir . --runtime-env cluster/runtime_env.yaml -- tdmpc-ray sweep ...
"""


def _stage(index: int, total: int, text: str, started: float) -> None:
    print(f"\n[{index}/{total}] {text}  (+{time.perf_counter() - started:.0f} s)", flush=True)


def run(cfg: QuickstartConfig) -> dict:
    """Run every stage and return the summary (also written to `<out>/summary.json`)."""
    import ray

    from tdmpc_ray.dashboard.server import export_html
    from tdmpc_ray.data.generate import GenerateConfig, generate
    from tdmpc_ray.data.label import label
    from tdmpc_ray.evaluate import EvalConfig, evaluate
    from tdmpc_ray.planning import PlannerConfig
    from tdmpc_ray.quantize.export import quantize_checkpoint
    from tdmpc_ray.sweep.runner import format_table, run_sweep
    from tdmpc_ray.sweep.spec import SweepSpec
    from tdmpc_ray.train.config import TrainConfig, parameter_count
    from tdmpc_ray.train.trainer import train

    out = Path(cfg.out).resolve()
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out}: already holds files; pass another --out or remove it")
    started, stages = time.perf_counter(), 7
    if not ray.is_initialized():
        ray.init(logging_level=logging.WARNING)
    data = out / "data"
    _stage(
        1, stages, f"generate rollouts: {cfg.tasks}, {cfg.episodes_per_task} episodes each", started
    )
    generate(GenerateConfig(tasks=cfg.tasks, episodes_per_task=cfg.episodes_per_task,
                            max_steps=cfg.max_steps, seed=cfg.seed, num_actors=2), data)  # fmt: skip

    _stage(2, stages, f"train a 1M teacher from scratch ({cfg.teacher_steps} steps)", started)
    common = {"data": str(data), "batch_size": cfg.batch_size, "seed": cfg.seed,
              "log_every": 50, "out": str(out / "runs")}  # fmt: skip
    teacher = train(TrainConfig(**common, steps=cfg.teacher_steps, name="teacher",
                                checkpoint_every=cfg.teacher_steps))["student"]  # fmt: skip

    _stage(3, stages, "label the data with the teacher (reward, value, policy)", started)
    label(data, teacher)

    _stage(
        4,
        stages,
        f"Ray Tune: 0.35M students from scratch and distilled ({cfg.student_steps} steps)",
        started,
    )
    eval_settings = {"eval_tasks": cfg.tasks, "eval_episodes": cfg.eval_episodes,
                     "eval_max_steps": cfg.max_steps, "eval_mpc": False, "eval_cpus": 0.25}  # fmt: skip
    spec = SweepSpec(
        name="students",
        base={
            **common,
            **STUDENT_DIMS,
            **eval_settings,
            "teacher": teacher,
            "steps": cfg.student_steps,
            "checkpoint_every": cfg.student_steps,
            "eval_freq": cfg.student_steps,
            "cpus_per_worker": 0.5,
        },  # fmt: skip
        recipes={"scratch": {"d_coef": 0.0}, "distilled": {"d_coef": cfg.d_coef}},
        trial_cpus=0.25,
        storage_path=str(out / "sweeps"),
    )
    sweep = run_sweep(spec)
    print(format_table(sweep))
    best = sweep["best"]
    if best is None:
        raise RuntimeError(f"{sweep['experiment']}: no student was scored; see its error.txt files")

    _stage(5, stages, "score the teacher on the same episodes (rollout actors)", started)
    eval_cfg = EvalConfig(planner=PlannerConfig(mpc=False), eval_mode=True, seed=cfg.seed,
                          max_steps=cfg.max_steps, cpus_per_actor=0.5)  # fmt: skip
    teacher_score = evaluate(teacher, cfg.tasks, cfg.eval_episodes, 2, eval_cfg, progress=True)

    _stage(6, stages, f"quantize the best student ({best['recipe']}) to int8", started)
    quantized = quantize_checkpoint(best["student"], out / "student-int8.pt", "int8")
    print(quantized.format())

    _stage(7, stages, "export the dashboard", started)
    dashboard = out / "dashboard.html"
    export_html(sweep["experiment"], dashboard)

    student_params = parameter_count(TrainConfig(data="-", **STUDENT_DIMS).model())
    summary = {
        "config": dataclasses.asdict(cfg),
        "scores": {
            **{t["recipe"]: t["normalized_score"] for t in sweep["trials"]},
            "teacher": teacher_score["normalized_score"],
        },
        "best": best["recipe"],
        "parameters": {
            "teacher": parameter_count(TrainConfig(data="-").model()),
            "student": student_params,
        },  # fmt: skip
        "student_mib": {
            "fp32": round(Path(best["student"]).stat().st_size / 2**20, 3),
            "int8": round(quantized.file_mib, 3),
        },  # fmt: skip
        "paths": {
            "data": str(data),
            "teacher": teacher,
            "sweep": sweep["experiment"],
            "best_student": best["student"],
            "int8_student": quantized.out,
            "dashboard": str(dashboard),
        },  # fmt: skip
        "seconds": round(time.perf_counter() - started, 1),
    }
    write_json(out / "summary.json", summary)
    return summary


def format_summary(summary: dict) -> str:
    """One screen: scores, sizes, where everything is, what to run next."""
    cfg, scores, paths = summary["config"], summary["scores"], summary["paths"]
    episodes = (
        f"{cfg['eval_episodes']} episode(s) x {cfg['max_steps']} steps per task, policy prior"
    )
    lines = [
        f"quickstart finished in {summary['seconds']:.0f} s",
        f"normalized score on {cfg['tasks']} ({episodes}):",
        *(
            f"  {name:<10} {score:7.2f}" if score is not None else f"  {name:<10}       -"
            for name, score in scores.items()
        ),  # fmt: skip
        f"best student: {summary['best']} ({summary['parameters']['student']:,} parameters; "
        f"teacher {summary['parameters']['teacher']:,})",
        f"size: {summary['student_mib']['fp32']:.2f} MiB fp32 -> "
        f"{summary['student_mib']['int8']:.2f} MiB int8",
        "paths:",
        *(f"  {name:<13} {path}" for name, path in paths.items()),
        f"next: tdmpc-ray dashboard {paths['sweep']}    (live page)",
        "      tdmpc-ray quickstart --full            (the real MT30 path)",
    ]
    return "\n".join(lines)


def _quickstart(args: argparse.Namespace) -> int:
    if args.full:
        print(FULL_PATH)
        return 0
    cfg = dataclasses.replace(TINY if args.tiny else QuickstartConfig(), out=args.out)
    print(format_summary(run(cfg)))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "quickstart",
        help="the whole pipeline on built-in defaults: data, teacher, sweep, eval, int8, dashboard",
        description=__doc__.split("\n\n", 1)[1].strip(),
    )
    parser.add_argument(
        "--out", default=QuickstartConfig.out, help="output folder (default %(default)s)"
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument(
        "--tiny", action="store_true", help="minimal sizes (CI): every stage in a few minutes"
    )
    size.add_argument(
        "--full",
        action="store_true",
        help="print the real MT30 path (public data, 317M teacher, the paper's sweeps) and exit",
    )
    parser.set_defaults(handler=_quickstart)
