"""`tdmpc-ray quickstart`: the whole pipeline end to end on built-in defaults, on one machine.

Take the paper's published 1M MT30 student as the teacher (downloaded on first use, with a short
timeout; offline, train a small teacher and say plainly when it is no better than the students),
generate a small multi-task data set with dm_control rollouts, label it with the teacher, sweep
two students (from scratch and distilled) with Ray Tune, score both and the teacher on the same
environment seeds, compare the students with a paired interval, quantize the distilled student
to int8, export the sweep's dashboard (every score with its interval, the paired difference, loss
curves), and print one screen of results. Everything goes under one folder.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from tdmpc_ray.atomic import write_json
from tdmpc_ray.model.published import DownloadError, download, find_published

STUDENT_DIMS = {"enc_dim": 128, "mlp_dim": 160, "latent_dim": 64}
"""Students a quarter of the 1M preset (0.35M parameters)."""
PUBLISHED_TEACHER = "mt30-1M-fp16"
"""The paper's published 1M MT30 student (fp16), the teacher: found on this machine (download
cache or local mirror) or downloaded."""
PUBLISHED_SOURCE = "published 1M MT30 student"
"""The summary's `teacher` when the published student teaches."""
DOWNLOAD_TIMEOUT_S = 10.0
"""Seconds a silent server may keep the quickstart waiting for the teacher before it goes on
offline."""
ACTORS = 2
"""Rollout actors of the data generation and evaluation stages (1 CPU each)."""
RAY_DATA_LOGGING = "ray_data_logging.yaml"


@dataclass(frozen=True)
class QuickstartConfig:
    """Sizes of every stage; the defaults finish in about 10 minutes on 2 CPU cores."""

    out: str = "quickstart"
    tasks: str = "cartpole-balance,cup-catch,reacher-easy"
    episodes_per_task: int = 6
    max_steps: int = 200
    """Agent steps per generated and evaluated episode (500 in MT30: scores here are not MT30's)."""
    teacher_steps: int = 600
    """Steps of the teacher trained when the published student is not on this machine."""
    student_steps: int = 400
    batch_size: int = 128
    d_coef: float = 0.45
    eval_episodes: int = 10
    """Episodes per task for every agent, on the same environment seeds (an interval needs 2)."""
    seed: int = 1
    log_every: int = 50
    """Training steps between reports (each a point of the dashboard's loss curves)."""


TINY = QuickstartConfig(
    episodes_per_task=2,
    max_steps=40,
    teacher_steps=30,
    student_steps=20,
    batch_size=32,
    eval_episodes=6,
    log_every=5,
)
"""The CI-sized run: every stage, minimal sizes."""

FULL_PATH = """\
The real MT30 path (the paper's setting; a GPU cluster for the 317M teacher, see docs/cluster.md):

  1. Data: the public MT30 chunks (345M transitions) -> Parquet, bounded memory, resumable
       tdmpc-ray data convert chunk_0.pt chunk_1.pt chunk_2.pt chunk_3.pt data/mt30
  2. Teacher: TD-MPC2's released 317M MT30 checkpoint (mt30-317M.pt, from the TD-MPC2 release);
     optionally cache its labels so trials never wait for it:
       tdmpc-ray data label --teacher checkpoints/mt30-317M.pt data/mt30
  3. Students: the paper's sweeps (Table 1: d_coef; Table 2: batch x steps; Table 3: teacher size)
       tdmpc-ray sweep tune/dcoef.yaml data=data/mt30 teacher=checkpoints/mt30-317M.pt
       tdmpc-ray dashboard sweeps/dcoef
  4. Score the best student on all 30 tasks (10 episodes each, full MPPI)
       tdmpc-ray eval --checkpoint BEST/student.pt --tasks mt30 --episodes 10 --num-actors 8
  5. Quantize it for deployment (per-channel int8, ~2 MiB)
       tdmpc-ray quantize BEST/student.pt --mode int8 --out student-int8.pt
On a cluster, submit any step as a job (absolute paths: the job runs in a copy of the checkout):
  ray job submit --working-dir . --runtime-env cluster/runtime_env.yaml -- tdmpc-ray sweep tune/dcoef.yaml data=/shared/mt30 teacher=/shared/mt30-317M.pt
"""


def start_ray() -> None:
    """Join the cluster at RAY_ADDRESS, or start a local Ray (inheriting this process's
    environment) whose processes reach its state API by its address rather than by looking for
    "the" local Ray instance: Ray Train's placement-group cleaner asks it, and fails with a
    traceback when other Ray instances run on the machine.

    Worker output stays in Ray's log files: a failure still reaches this process as an exception,
    while Ray's shutdown chatter (a trial actor's SIGTERM traceback, worker-pool warnings) does
    not reach the demo's console."""
    import ray

    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init(logging_level=logging.ERROR, log_to_driver=False)
        return
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    os.environ["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{port}"
    ray.init(
        address="local",
        include_dashboard=True,
        dashboard_port=port,
        logging_level=logging.ERROR,
        log_to_driver=False,
    )


def _stage(index: int, total: int, text: str, started: float) -> None:
    print(f"\n[{index}/{total}] {text}  (+{time.perf_counter() - started:.0f} s)", flush=True)


def _common(cfg: QuickstartConfig, out: Path) -> dict:
    """Training settings shared by the teacher and both students."""
    return {
        "data": str(out / "data"),
        "batch_size": cfg.batch_size,
        "seed": cfg.seed,
        "log_every": cfg.log_every,
        "out": str(out / "runs"),
    }


def _students(cfg: QuickstartConfig, out: Path, teacher: str):
    """The sweep of the two students: one from scratch, one distilled (reward term)."""
    from tdmpc_ray.sweep.spec import SweepSpec

    return SweepSpec(
        name="students",
        base={
            **_common(cfg, out),
            **STUDENT_DIMS,
            "teacher": teacher,
            "steps": cfg.student_steps,
            "checkpoint_every": cfg.student_steps,
            "cpus_per_worker": 0.5,
        },
        recipes={"scratch": {"d_coef": 0.0}, "distilled": {"d_coef": cfg.d_coef}},
        trial_cpus=0.25,
        storage_path=str(out / "sweeps"),
    )


def _teacher_run(cfg: QuickstartConfig, out: Path):
    from tdmpc_ray.train.config import TrainConfig

    return TrainConfig(
        **_common(cfg, out),
        steps=cfg.teacher_steps,
        name="teacher",
        checkpoint_every=cfg.teacher_steps,
    )


def check_resources(cfg: QuickstartConfig, out: Path, published: Path | None) -> None:
    """Fail in seconds, before any stage, when one of the stages cannot fit the cluster."""
    from tdmpc_ray import resources as res

    cap = res.capacity()
    rollouts = res.Demand((res.Part("rollout actor", 1.0, count=ACTORS),))
    res.check(rollouts, cap, "data generation", {"CPU": "start Ray with 2 CPUs", "GPU": ""})
    labelling = res.Demand(
        (res.Part("labelling actor", 1.0, count=1), res.Part("file listing", 1.0))
    )
    res.check(labelling, cap, "labelling", {"CPU": "start Ray with 2 CPUs", "GPU": ""})
    if published is None:
        res.check_training(_teacher_run(cfg, out), cap)
    spec = _students(cfg, out, str(published or out / "teacher.pt"))
    res.plan_sweep(spec.trial_configs(), spec.trial_cpus, spec.max_concurrent_trials, cap)
    res.check_evaluation(ACTORS, 1.0, cap)


def published_teacher() -> tuple[Path | None, str]:
    """The published teacher: on this machine, else downloaded (a server silent for
    DOWNLOAD_TIMEOUT_S is given up), with where it came from; None and why when offline."""
    local = find_published(PUBLISHED_TEACHER)
    if local is not None:
        return local, "found on this machine"
    try:
        return download([PUBLISHED_TEACHER], timeout_s=DOWNLOAD_TIMEOUT_S)[0], "downloaded"
    except (DownloadError, OSError) as err:
        return None, str(err)


def record_scores(sweep: dict, results: dict[str, dict], teacher: str) -> None:
    """Write each student's final evaluation into its trial's run folder as the sweep's own
    evaluations are written (`<run_dir>/evals/step_N.json`), and the teacher's into the
    experiment's `evals/teacher.json`, so the sweep's dashboard shows every score the
    quickstart prints, with its interval, and the students' paired difference."""
    from tdmpc_ray.evaluate.report import EVALS_DIR, step_file

    experiment = Path(sweep["experiment"])
    for trial in sweep["trials"]:
        step = int(trial["step"])
        record = {"step": step, "checkpoint": trial["student"], **results[trial["recipe"]]}
        write_json(experiment / step_file(f"{trial['run_dir']}/{EVALS_DIR}", step), record)
    write_json(
        experiment / EVALS_DIR / "teacher.json", {"checkpoint": teacher, **results["teacher"]}
    )


def _score(result: dict) -> dict:
    """An agent's normalized score with its interval, and the evaluation's size, as `evaluate`
    reported them."""
    from tdmpc_ray.evaluate.report import interval

    return {
        "normalized_score": interval(result, "normalized_score").to_dict(),
        "episodes_per_task": result["episodes_per_task"],
    }


def run(cfg: QuickstartConfig) -> dict:
    """Run every stage and return the summary (also written to `<out>/summary.json`)."""
    from tdmpc_ray.dashboard.server import export_html
    from tdmpc_ray.data.generate import GenerateConfig, generate
    from tdmpc_ray.data.label import label
    from tdmpc_ray.evaluate import EvalConfig, EvalPool, evaluate
    from tdmpc_ray.evaluate.stats import Interval, compare, verdict
    from tdmpc_ray.planning import PlannerConfig
    from tdmpc_ray.quantize.export import quantize_checkpoint
    from tdmpc_ray.sweep.runner import run_sweep
    from tdmpc_ray.train.config import TrainConfig, parameter_count
    from tdmpc_ray.train.trainer import train

    out = Path(cfg.out).resolve()
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out}: already holds files; pass another --out or remove it")
    published, found = published_teacher()
    start_ray()
    check_resources(cfg, out, published)
    started, stages = time.perf_counter(), 7
    data = out / "data"
    policy = "the published student's policy prior + noise" if published else "random actions"
    _stage(
        1,
        stages,
        f"generate rollouts ({policy}): {cfg.tasks}, {cfg.episodes_per_task} episodes each",
        started,
    )
    generate(
        GenerateConfig(
            tasks=cfg.tasks,
            episodes_per_task=cfg.episodes_per_task,
            policy=str(published or "random"),
            noise=0.3 if published else None,
            max_steps=cfg.max_steps,
            seed=cfg.seed,
            num_actors=ACTORS,
        ),
        data,
    )

    if published is not None:
        _stage(2, stages, f"teacher: the published 1M MT30 student, {found} ({published})", started)
        teacher, teacher_source = str(published), PUBLISHED_SOURCE
    else:
        _stage(
            2,
            stages,
            f"teacher: {PUBLISHED_TEACHER} is not on this machine and could not "
            f"be downloaded; train a 1M teacher from scratch ({cfg.teacher_steps} steps)",
            started,
        )
        print(f"  ({found})", flush=True)
        teacher = train(_teacher_run(cfg, out))["student"]
        teacher_source = f"1M teacher trained here ({cfg.teacher_steps} steps)"

    _stage(3, stages, "label the data with the teacher (reward, value, policy)", started)
    label(data, teacher)

    _stage(
        4,
        stages,
        f"Ray Tune: 0.35M students from scratch and distilled ({cfg.student_steps} steps)",
        started,
    )
    sweep = run_sweep(_students(cfg, out, teacher), verbose=0)
    if sweep["errors"]:
        trial, error = next(iter(sweep["errors"].items()))
        raise RuntimeError(f"{sweep['experiment']}: trial {trial} failed: {error}")
    students = {t["recipe"]: t["student"] for t in sweep["trials"]}

    _stage(
        5,
        stages,
        f"score the teacher and both students on the same {cfg.eval_episodes} "
        "episodes per task (rollout actors)",
        started,
    )
    eval_cfg = EvalConfig(
        planner=PlannerConfig(mpc=False), eval_mode=True, seed=cfg.seed, max_steps=cfg.max_steps
    )
    agents = {"teacher": teacher, **students}
    with EvalPool(ACTORS, eval_cfg.cpus_per_actor, env_vars={"MUJOCO_GL": "disable"}) as pool:
        results = {
            name: evaluate(path, cfg.tasks, cfg.eval_episodes, ACTORS, eval_cfg, pool=pool)
            for name, path in agents.items()
        }
    returns = {
        name: {task: row["returns"] for task, row in result["tasks"].items()}
        for name, result in results.items()
    }
    comparison = compare(returns["distilled"], returns["scratch"])
    comparison["verdict"] = verdict(Interval(**comparison["difference"]), "distilled", "scratch")
    teacher_gap = {
        name: compare(returns["teacher"], returns[name])["difference"] for name in students
    }
    record_scores(sweep, results, teacher)

    _stage(6, stages, "quantize the distilled student to int8", started)
    quantized = quantize_checkpoint(students["distilled"], out / "student-int8.pt", "int8")

    _stage(7, stages, "export the dashboard", started)
    dashboard = out / "dashboard.html"
    export_html(sweep["experiment"], dashboard)

    summary = {
        "config": dataclasses.asdict(cfg),
        "teacher": teacher_source,
        "scores": {name: _score(result) for name, result in results.items()},
        "distilled_vs_scratch": comparison,
        "teacher_vs_students": teacher_gap,
        "parameters": {
            "teacher": parameter_count(TrainConfig(data="-").model()),
            "student": parameter_count(TrainConfig(data="-", **STUDENT_DIMS).model()),
        },
        "student_mib": {
            "fp32": round(Path(students["distilled"]).stat().st_size / 2**20, 3),
            "int8": round(quantized.file_mib, 3),
        },
        "paths": {
            "data": str(data),
            "teacher": teacher,
            "sweep": sweep["experiment"],
            **{f"{name}_student": path for name, path in students.items()},
            "int8_student": quantized.out,
            "dashboard": str(dashboard),
        },
        "seconds": round(time.perf_counter() - started, 1),
    }
    write_json(out / "summary.json", summary)
    return summary


def format_summary(summary: dict) -> str:
    """One screen: every score with its interval and episode count, the paired comparison of
    the students, sizes, where everything is, what to run next."""
    from tdmpc_ray.evaluate.stats import Interval

    cfg, scores, paths = summary["config"], summary["scores"], summary["paths"]
    versus = summary["distilled_vs_scratch"]
    about = {
        "teacher": f"{summary['teacher']}, {summary['parameters']['teacher']:,} parameters",
        "distilled": f"{summary['parameters']['student']:,} parameters, "
        f"{cfg['student_steps']} steps, d_coef {cfg['d_coef']}",
        "scratch": f"{summary['parameters']['student']:,} parameters, "
        f"{cfg['student_steps']} steps, no teacher",
    }
    lines = [
        f"quickstart finished in {summary['seconds']:.0f} s",
        f"normalized score [95% interval] on {cfg['tasks']}: policy prior, "
        f"{cfg['eval_episodes']} episodes x {cfg['max_steps']} steps per task, the same env "
        "seeds for every agent (not MT30 scores: episodes are cut short)",
        *(
            f"  {name:<10} {Interval(**s['normalized_score']).format():<24} {about[name]}"
            for name, s in scores.items()
        ),
        f"distilled - scratch: {Interval(**versus['difference']).format(3)}: {versus['verdict']}",
        f"  (one student per recipe, training seed {cfg['seed']}: it compares these two students "
        "on these episodes, not the recipes)",
        *teacher_lines(summary["teacher_vs_students"], summary["teacher"] == PUBLISHED_SOURCE),
        f"size of the distilled student: {summary['student_mib']['fp32']:.2f} MiB fp32 -> "
        f"{summary['student_mib']['int8']:.2f} MiB int8",
        "paths:",
        *(f"  {name:<17} {path}" for name, path in paths.items()),
        f"next: tdmpc-ray dashboard {paths['sweep']}    (live page)",
        "      tdmpc-ray quickstart --full            (the real MT30 path)",
    ]
    return "\n".join(lines)


def teacher_lines(gaps: dict[str, dict], published: bool) -> list[str]:
    """Whether the teacher has anything to teach: its paired difference from each student, and
    plainly when it is not clearly better than both (then the run cannot show distillation;
    a teacher trained here says how to get the `published` one)."""
    from tdmpc_ray.evaluate.stats import Interval

    gap = {name: Interval(**d) for name, d in gaps.items()}
    text = "teacher - students: " + ", ".join(f"{d.format(3)} vs {n}" for n, d in gap.items())
    if all(d.low is not None and d.low > 0 for d in gap.values()):
        return [f"{text}: the teacher is better than both"]
    advice = (
        "" if published else f" (get the published one: tdmpc-ray download {PUBLISHED_TEACHER})"
    )
    return [
        f"{text}:",
        f"  the teacher is not clearly better than the students, so this run cannot show "
        f"distillation{advice}",
    ]


def _quickstart(args: argparse.Namespace) -> int:
    if args.full:
        print(FULL_PATH)
        return 0
    # Before dm_control and Ray Data are imported, for this process and the local Ray's workers.
    os.environ.setdefault("MUJOCO_GL", "disable")
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault(
        "RAY_DATA_LOGGING_CONFIG", str(Path(__file__).with_name(RAY_DATA_LOGGING))
    )
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
