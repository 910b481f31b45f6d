#!/usr/bin/env bash
# The distillation study of docs/results/distill_study.md: about 3 hours on a 2-core CPU.
#   bash tune/run_study.sh [key=value ...]     (overrides go to the sweep, e.g. steps=200)
# Makes the data (the teacher's policy prior + noise on six MT30 tasks), labels it with the
# teacher, runs tune/study.yaml (3 recipes x 10 seeds; every final student scored with reduced
# MPPI, 4 episodes per task, on the env seeds of its training seed), scores the teacher the same
# way on seed 1, and writes the sweep's summary (every recipe's score pooled over seeds, each
# seed one run, and every two recipes compared: `groups` and `pairs`), learning curves and a
# static dashboard to docs/results/distill_study/.
# An interrupted sweep continues with `tdmpc-ray sweep tune/study.yaml --resume`.
set -euo pipefail
cd "$(dirname "$0")/.."
export MUJOCO_GL=egl PYTHONUNBUFFERED=1
TEACHER=mt30-1M-fp16   # the published student (tdmpc-ray download; fetched on first use)
TASKS=walker-stand,walker-walk,cartpole-swingup,cup-catch,finger-spin,reacher-easy
PLANNER=(--iterations 2 --num-samples 128 --num-elites 16 --num-pi-trajs 6)  # as tune/study.yaml
DATA=runs/study-data
OUT=docs/results/distill_study
mkdir -p "$OUT"

if [ ! -d "$DATA" ]; then
  tdmpc-ray data generate --tasks "$TASKS" --episodes-per-task 8 --policy "$TEACHER" \
    --noise 0.3 --num-actors 2 --seed 0 "$DATA"
  tdmpc-ray data label --teacher "$TEACHER" "$DATA"
fi
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
tdmpc-ray eval --checkpoint "$TEACHER" --tasks "$TASKS" --episodes 4 --seed 1 --num-actors 2 \
  "${PLANNER[@]}" --out runs/study-teacher-eval --resume
mkdir -p "$OUT/teacher_eval"
cp runs/study-teacher-eval/eval.json runs/study-teacher-eval/eval.csv "$OUT/teacher_eval/"
