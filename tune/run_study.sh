#!/usr/bin/env bash
# The CPU distillation studies of docs/results/distill_study.md:
#   bash tune/run_study.sh [study|study2] [key=value ...]   (overrides go to the sweep)
# study (about 4.5 h on a 2-core CPU): scratch vs reward vs reward + latent, tune/study.yaml.
# study2 (about 6 h): scratch vs reward vs value + policy vs planner imitation (alone and with
# value), tune/study2.yaml; its data also carry the teacher's planner labels.
# Makes the data (the teacher's policy prior + noise on six MT30 tasks), labels it with the
# teacher, runs the sweep (10 seeds a recipe; every final student scored with reduced MPPI,
# 4 episodes per task, on the env seeds of its training seed), scores the teacher the same way,
# and writes the sweep's summary (every recipe's score pooled over seeds, each seed one run, and
# every two recipes compared: `groups` and `pairs`), learning curves and a static dashboard to
# docs/results/<study>/. study2 also scores every student's policy prior and the teacher's
# (MPPI and prior) on every seed's env seeds, and compares them (tune/study_scores.py).
# Every step resumes: an interrupted run continues where it stopped when run again.
set -euo pipefail
cd "$(dirname "$0")/.."
export MUJOCO_GL=egl PYTHONUNBUFFERED=1
STUDY=study
if [ $# -gt 0 ] && [[ "$1" != *=* ]]; then STUDY=$1; shift; fi
[ -f "tune/$STUDY.yaml" ] || { echo "tune/$STUDY.yaml: no such study" >&2; exit 2; }
TEACHER=mt30-1M-fp16   # the published student (tdmpc-ray download; fetched on first use)
TASKS=walker-stand,walker-walk,cartpole-swingup,cup-catch,finger-spin,reacher-easy
PLANNER=(iterations=2 num_samples=128 num_elites=16 num_pi_trajs=6)  # as tune/$STUDY.yaml
FLAGS=(--iterations 2 --num-samples 128 --num-elites 16 --num-pi-trajs 6)
DATA=runs/$STUDY-data
OUT=docs/results/distill_$STUDY
[ "$STUDY" = study ] && OUT=docs/results/distill_study
mkdir -p "$OUT"
EVAL=(--tasks "$TASKS" --episodes 4 --num-actors 2 --no-eval-mode)

if [ ! -d "$DATA" ]; then
  tdmpc-ray data generate --tasks "$TASKS" --episodes-per-task 8 --policy "$TEACHER" \
    --noise 0.3 --num-actors 2 --seed 0 "$DATA"
fi
if [ "$STUDY" = study ]; then
  tdmpc-ray data label --teacher "$TEACHER" "$DATA"
else
  tdmpc-ray data label --teacher "$TEACHER" --num-actors 2 --mpc "${PLANNER[@]/#/--planner=}" "$DATA"
fi
# Two trials at once need 2 x 1.25 logical CPUs (trial function, worker, reads, eval actor): a
# local Ray with 4 logical CPUs on the 2 cores (every trial is one thread).
RESUME=()
[ -d "sweeps/$STUDY" ] && RESUME=(--resume)
python - "tune/$STUDY.yaml" "${RESUME[@]}" "$@" <<'PY'
import sys

import ray

from tdmpc_ray.cli import main

ray.init(num_cpus=4, logging_level="WARNING")
sys.exit(main(["sweep", *sys.argv[1:]]))
PY
cp "sweeps/$STUDY/summary.json" "sweeps/$STUDY/curves.csv" "$OUT/"
tdmpc-ray dashboard "sweeps/$STUDY" --export "$OUT/dashboard.html"
if [ "$STUDY" = study ]; then
  tdmpc-ray eval --checkpoint "$TEACHER" "${EVAL[@]}" --seed 1 "${FLAGS[@]}" \
    --out runs/study-teacher-eval --resume
  mkdir -p "$OUT/teacher_eval"
  cp runs/study-teacher-eval/eval.json runs/study-teacher-eval/eval.csv "$OUT/teacher_eval/"
  exit 0
fi
# study2: every student's prior (its mean action, as the exported prior acts) and the teacher,
# on the env seeds of each training seed.
python - "sweeps/$STUDY/summary.json" <<'PY' > "runs/$STUDY-priors.txt"
import json
import sys

for t in json.load(open(sys.argv[1]))["trials"]:
    if t["status"] == "TERMINATED" and t["student"]:
        print(t["trial"], t["seed"], t["student"])
PY
while read -r trial seed student; do
  tdmpc-ray eval --checkpoint "$student" "${EVAL[@]/--no-eval-mode/--eval-mode}" --seed "$seed" \
    --no-mpc --out "runs/$STUDY-priors/$trial" --resume
done < "runs/$STUDY-priors.txt"
for seed in 1 2 3 4 5 6 7 8 9 10; do
  tdmpc-ray eval --checkpoint "$TEACHER" "${EVAL[@]}" --seed "$seed" "${FLAGS[@]}" \
    --out "runs/$STUDY-teacher/mppi-seed$seed" --resume
  tdmpc-ray eval --checkpoint "$TEACHER" "${EVAL[@]/--no-eval-mode/--eval-mode}" --seed "$seed" \
    --no-mpc --out "runs/$STUDY-teacher/prior-seed$seed" --resume
done
python tune/study_scores.py "sweeps/$STUDY" "runs/$STUDY-priors" "runs/$STUDY-teacher" \
  "$OUT/scores.json" | tee "$OUT/scores.md"
mkdir -p "$OUT/priors" "$OUT/teacher_eval"
while read -r trial _ _; do cp "runs/$STUDY-priors/$trial/eval.json" "$OUT/priors/$trial.json"; done \
  < "runs/$STUDY-priors.txt"
for run in runs/$STUDY-teacher/*; do cp "$run/eval.json" "$OUT/teacher_eval/$(basename "$run").json"; done
