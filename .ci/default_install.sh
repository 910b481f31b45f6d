#!/usr/bin/env bash
# The README's user-facing verbs on the default install, without extras: a second virtualenv
# with `pip install torch==2.13.0 -e .` runs --version, `data convert` and `data inspect` on two
# small chunks in TD-MPC2's public layout, `export` with the README's command and a short `eval`.
# Usage: .ci/default_install.sh DEV_PYTHON (the [dev] venv's python makes the chunks with the
# tests' helper: tensordict is only in [dev]). Export and eval use the published student in
# ../shared/checkpoints beside the clone; without it they are skipped, saying so.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
dev_python=$1
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# step NAME CMD...: run CMD and print NAME with its wall time.
step() {
  local name=$1 start=$SECONDS
  shift
  "$@"
  echo "default install: $name ok ($((SECONDS - start)) s)"
}

python3 -m venv "$work/venv"
step "pip install torch==2.13.0 -e ." \
  "$work/venv/bin/python" -m pip install -q --no-compile "torch==2.13.0" -e "$repo"
export PATH="$work/venv/bin:$PATH"
# Say so if the default install gains an extra's package this check means to do without.
"$work/venv/bin/python" - <<'EOF'
import importlib.util
extra = [m for m in ("tensordict", "onnxruntime", "onnx", "imageio") if importlib.util.find_spec(m)]
if extra:
    raise SystemExit(f"default install: holds {', '.join(extra)}, which only extras should bring")
EOF

"$dev_python" - "$work" <<'EOF'
import sys
from pathlib import Path

sys.path.insert(0, "tests")
from conftest import save_chunk, tdmpc2_episodes

work = Path(sys.argv[1])
save_chunk(work / "chunk_0.pt", tdmpc2_episodes(4), legacy=True)  # as the public files pickle
save_chunk(work / "chunk_1.pt", tdmpc2_episodes(4, first=4))  # as current tensordict pickles
EOF

cd "$work"
step "--version" tdmpc-ray --version
step "data convert" tdmpc-ray data convert chunk_0.pt chunk_1.pt mt30
step "data inspect" tdmpc-ray data inspect mt30
checkpoints=$repo/../shared/checkpoints
if [[ ! -f $checkpoints/mt30_1M_steps_045dist_fp16.pt ]]; then
  echo "default install: export and eval skipped: no published student in ../shared/checkpoints"
  exit 0
fi
export TDMPC_RAY_CHECKPOINTS_DIR=$checkpoints
step "export (the README's command)" tdmpc-ray export mt30-1M-fp16 --out controller
test -f controller/mppi-fp32.pt2 -a -f controller/prior-fp32.pt2
step "eval (1 task, 1 episode, 20 steps)" tdmpc-ray eval --checkpoint mt30-1M-fp16 \
  --tasks walker-walk --episodes 1 --max-steps 20 --out eval
test -s eval/eval.json
