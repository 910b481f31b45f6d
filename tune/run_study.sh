#!/usr/bin/env bash
# The distillation study of docs/results/distill_study.md: about 1.5 hours on a 2-core CPU.
#   bash tune/run_study.sh [key=value ...]     (overrides go to the sweep, e.g. steps=200)
# Makes the data (teacher's policy prior + noise on six MT30 tasks), labels it with the teacher,
# scores the teacher's own policy prior, runs tune/study.yaml (students scored by their policy
# prior every 1000 steps), scores every final student and the teacher with full MPPI, and writes
# the summary, the learning curves, the MPPI scores and a static dashboard to
# docs/results/distill_study/.
set -euo pipefail
cd "$(dirname "$0")/.."
export MUJOCO_GL=egl PYTHONUNBUFFERED=1
TEACHER=mt30-1M-fp16   # the published student (tdmpc-ray download; fetched on first use)
TASKS=walker-stand,walker-walk,cartpole-swingup,cup-catch,finger-spin,reacher-easy
DATA=runs/study-data
OUT=docs/results/distill_study
export TEACHER TASKS OUT
mkdir -p "$OUT"

if [ ! -d "$DATA" ]; then
  tdmpc-ray data generate --tasks "$TASKS" --episodes-per-task 8 --policy "$TEACHER" \
    --noise 0.3 --num-actors 2 --seed 0 "$DATA"
  tdmpc-ray data label --teacher "$TEACHER" "$DATA"
fi
tdmpc-ray eval --checkpoint "$TEACHER" --tasks "$TASKS" --episodes 4 --no-mpc --eval-mode \
  --num-actors 2 --seed 1 --out "$OUT/teacher_eval"
# Two trials at once need 2 x 1.25 logical CPUs (trial function, worker, reads, eval actor): a
# local Ray with 4 logical CPUs on the 2 cores (every trial is one thread).
python - "$@" <<'PY'
import sys

import ray

from tdmpc_ray.cli import main

ray.init(num_cpus=4, logging_level="WARNING")
sys.exit(main(["sweep", "tune/study.yaml", *sys.argv[1:]]))
PY
cp sweeps/study/summary.json sweeps/study/curves.csv "$OUT/"
tdmpc-ray dashboard sweeps/study --export "$OUT/dashboard.html"

# Every final student and the teacher with full MPPI (compiled), 1 episode per task, the same
# environment seeds for all, TD-MPC2's evaluation setting (eval_mode=False).
python - <<'PY'
import json
import os

import ray

from tdmpc_ray.atomic import write_json
from tdmpc_ray.evaluate import EvalConfig, evaluate
from tdmpc_ray.planning import PlannerConfig

ray.init(num_cpus=2, logging_level="WARNING")
summary = json.load(open("sweeps/study/summary.json"))
cfg = EvalConfig(planner=PlannerConfig(compile=True), seed=1, envs_per_actor=3)
runs = [("teacher", None, None, os.environ["TEACHER"])]
runs += [(t["trial"], t["recipe"], t["seed"], t["student"]) for t in summary["trials"]]
scores = []
for trial, recipe, seed, path in runs:
    result = evaluate(path, os.environ["TASKS"], 1, 2, cfg, progress=True)
    tasks = {name: row["mean"] for name, row in result["tasks"].items()}
    scores.append({"trial": trial, "recipe": recipe, "seed": seed, "checkpoint": path,
                   "normalized_score": result["normalized_score"], "tasks": tasks,
                   "wall_time_s": result["wall_time_s"]})
    print(f"{trial} {recipe} {seed}: {result['normalized_score']:.2f}", flush=True)
write_json(os.path.join(os.environ["OUT"], "mppi_scores.json"),
           {"config": result["config"], "scores": scores})
PY
