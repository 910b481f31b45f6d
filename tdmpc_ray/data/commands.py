"""`tdmpc-ray data <sub-verb>`: build and look at Parquet episode data sets.

Each sub-verb is one `_add_*` function in `_SUBVERBS`. Handlers import their module when run, so
`tdmpc-ray --help` imports neither Ray nor dm_control.
"""

from __future__ import annotations

import argparse
import os

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


def _generate(args: argparse.Namespace) -> int:
    os.environ.setdefault("MUJOCO_GL", "disable")
    from tdmpc_ray.config import build_config
    from tdmpc_ray.data.generate import GenerateConfig, generate
    from tdmpc_ray.planning import PlannerConfig

    if args.planner and not args.mpc:
        raise ValueError("--planner settings need --mpc")
    cfg = GenerateConfig(
        tasks=args.tasks,
        episodes_per_task=args.episodes_per_task,
        policy=args.policy,
        noise=args.noise,
        mpc=args.mpc,
        planner=build_config(PlannerConfig, overrides=args.planner or []),
        seed=args.seed,
        num_actors=args.num_actors,
        envs_per_actor=args.envs_per_actor,
        max_steps=args.max_steps,
        episodes_per_file=args.episodes_per_file,
    )
    print(generate(cfg, args.dst).format())
    return 0


def _label(args: argparse.Namespace) -> int:
    from tdmpc_ray.config import build_config
    from tdmpc_ray.data.label import label
    from tdmpc_ray.planning import PlannerConfig

    if (args.planner or args.seed is not None) and not args.mpc:
        raise ValueError("--planner and --seed set the planner labels: they need --mpc")
    planner = build_config(PlannerConfig, overrides=args.planner or []) if args.mpc else None
    summary = label(
        args.data,
        args.teacher,
        args.out,
        args.batch_episodes,
        args.num_actors,
        planner=planner,
        seed=args.seed or 0,
    )
    print(summary.format())
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
    p.add_argument(
        "--task-set",
        choices=("mt30", "mt80"),
        default="mt30",
        help="task set of the chunks: task ids index it (default %(default)s)",
    )
    p.set_defaults(handler=_convert)


def _add_inspect(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "inspect",
        help="per-task episodes, transitions, returns, size, schema and metadata of a data set",
    )
    p.add_argument("path", metavar="PATH", help="data set directory or one part file")
    p.set_defaults(handler=_inspect)


def _add_generate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "generate",
        help="roll out a random or checkpoint policy in MT30 tasks on Ray into Parquet parts",
        description="Roll out a policy in MT30 dm_control tasks on Ray actors and write the "
        "episodes in the Parquet episode layout (as the public MT30 data: obs[0] is the reset "
        "observation, action[0]/reward[0] are NaN). The same seed gives the same episodes.",
    )
    p.add_argument("dst", metavar="DST", help="output directory (must hold no part files)")
    p.add_argument("--tasks", default="mt30", help="mt30, or comma-separated task names")
    p.add_argument("--episodes-per-task", type=int, required=True, metavar="N")
    p.add_argument(
        "--policy",
        default="random",
        metavar="random|CHECKPOINT",
        help="uniform random actions, or a world-model checkpoint's policy prior (a path or a "
        "published name, e.g. mt30-1M-fp16; default random)",
    )
    p.add_argument(
        "--noise",
        type=float,
        metavar="SIGMA",
        help="std of Gaussian noise on a checkpoint policy's actions (default 0.1)",
    )
    p.add_argument("--mpc", action="store_true", help="act with the checkpoint's MPPI planner")
    p.add_argument(
        "--planner",
        action="append",
        metavar="KEY=VALUE",
        help="PlannerConfig override with --mpc, e.g. --planner iterations=2 (repeatable)",
    )
    p.add_argument("--num-actors", type=int, default=1, metavar="K", help="rollout actors")
    p.add_argument(
        "--envs-per-actor",
        type=int,
        default=10,
        help="episodes one actor steps together (default %(default)s)",
    )
    p.add_argument("--seed", type=int, default=0, help="run seed (default 0)")
    p.add_argument(
        "--max-steps",
        type=int,
        metavar="M",
        help="testing: cut episodes after M agent steps (T = M + 1 rows)",
    )
    p.add_argument(
        "--episodes-per-file",
        type=int,
        default=EPISODES_PER_FILE,
        help="episodes per part file (default %(default)s)",
    )
    p.set_defaults(handler=_generate)


def _add_label(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "label",
        help="add a teacher's reward, value and policy labels (Ray Data, GPU if present)",
        description="Compute the teacher's reward, mean Q value and policy mean action for "
        "every (obs[s-1], action[s]) pair of a data set on a pool of Ray Data actors, each of "
        "which writes whole labelled parts, and store them as the teacher_reward, teacher_value "
        "and teacher_policy columns, with the teacher's checkpoint hash in each part's footer "
        "(training uses the labels only with that teacher; next-state latents are never "
        "cached). With --mpc, also the mean and std of the teacher's MPPI distribution at "
        "obs[s-1] (teacher_planner), its settings and seed in the footer. Labelling with "
        "another teacher replaces them; rerunning the same command skips the parts already "
        "labelled, so an interrupted run resumes.",
    )
    p.add_argument("data", metavar="DATA", help="data set directory or one part file")
    p.add_argument(
        "--teacher",
        required=True,
        metavar="CKPT",
        help="teacher checkpoint (a path or a published name, e.g. mt30-1M-fp16)",
    )
    p.add_argument("--out", metavar="DST", help="write labelled parts here (default: in place)")
    p.add_argument(
        "--batch-episodes",
        type=int,
        default=64,
        metavar="N",
        help="episodes per teacher forward pass (default %(default)s)",
    )
    p.add_argument(
        "--num-actors", type=int, default=1, metavar="K", help="teacher replicas (a CPU each)"
    )
    p.add_argument(
        "--mpc",
        action="store_true",
        help="also label the teacher's MPPI distribution (mean and std of the first action, "
        "cold-started at each state) as teacher_planner, for planner_d_coef; expensive: "
        "about a full MPPI step per transition",
    )
    p.add_argument(
        "--planner",
        action="append",
        metavar="KEY=VALUE",
        help="PlannerConfig override with --mpc, e.g. --planner iterations=2 (repeatable; "
        "default TD-MPC2's MPPI)",
    )
    p.add_argument(
        "--seed", type=int, metavar="N", help="seed of the planner labels with --mpc (default 0)"
    )
    p.set_defaults(handler=_label)


_SUBVERBS = (_add_convert, _add_generate, _add_label, _add_inspect)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `data` verb and its sub-verbs to the `tdmpc-ray` parser."""
    parser = subparsers.add_parser("data", help="convert, inspect and load episode data sets")
    sub = parser.add_subparsers(dest="data_verb", metavar="<data-verb>", required=True)
    for add in _SUBVERBS:
        add(sub)
