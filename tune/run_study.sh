#!/usr/bin/env bash
# The distillation study of docs/results/distill_study.md: about an hour on a 2-core CPU.
#   bash tune/run_study.sh [key=value ...]     (overrides go to the sweep, e.g. steps=200)
# Makes the data (teacher's policy prior + noise on six MT30 tasks), labels it with the teacher,
# scores the teacher's own policy prior, runs tune/study.yaml, and copies the summary, the
# learning curves and a static dashboard to docs/results/distill_study/.
set -euo pipefail
cd "$(dirname "$0")/.."
export MUJOCO_GL=egl PYTHONUNBUFFERED=1
TEACHER=../shared/checkpoints/mt30_1M_steps_045dist_fp16.pt
TASKS=walker-stand,walker-walk,cartpole-swingup,cup-catch,finger-spin,reacher-easy
DATA=runs/study-data
OUT=docs/results/distill_study
mkdir -p "$OUT"

if [ ! -d "$DATA" ]; then
  tdmpc-ray data generate --tasks "$TASKS" --episodes-per-task 8 --policy "$TEACHER" \
    --noise 0.3 --num-actors 2 --seed 0 "$DATA"
  tdmpc-ray data label --teacher "$TEACHER" "$DATA"
fi
tdmpc-ray eval --checkpoint "$TEACHER" --tasks "$TASKS" --episodes 4 --no-mpc --eval-mode \
  --num-actors 2 --seed 1 --out "$OUT/teacher_eval"
# Two trials at once need 2 x 0.75 logical CPUs plus 1 for Ray Data's file listing: a local
# Ray with 4 logical CPUs on the 2 cores (every trial is one thread).
python - "$@" <<'PY'
import sys

import ray

from tdmpc_ray.cli import main

ray.init(num_cpus=4, logging_level="WARNING")
sys.exit(main(["sweep", "tune/study.yaml", *sys.argv[1:]]))
PY
cp sweeps/study/summary.json sweeps/study/curves.csv "$OUT/"
tdmpc-ray dashboard sweeps/study --export "$OUT/dashboard.html"
