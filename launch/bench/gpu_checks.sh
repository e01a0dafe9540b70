#!/usr/bin/env bash
# The GPU checks and benchmarks, as one run for a GPU lent for a few minutes: bash launch/bench/gpu_checks.sh OUTDIR
# Needs torch with CUDA and the project's packages importable (on a machine without network: pure-Python wheels
# of deepspeed, webdataset and megatron-core built elsewhere, pip-installed from files). Runs, on one GPU:
#   1. the tests that need a GPU: bf16 inside every engine (tests/pipeline/runtime/test_precision.py) and the
#      memory planner against the CUDA allocator (tests/pipeline/measure/test_memory.py);
#   2. the pre-training step, ZeRO-0 and ZeRO-3 on one rank against plain PyTorch (launch/bench/bench_pretrain.py);
#   3. the distillation iteration at the paper's size, 32 rollout rows = 8 data rows x G = 4 (launch/bench/bench_distill.py).
# Every figure lands in OUTDIR (device.txt, tests.txt, bench_pretrain.{json,txt}, bench_distill.{json,txt}).
# SIZE and SEQ_LEN (default small, 1024: the paper's) shrink the models for a smoke run of the script elsewhere.
set -uo pipefail
OUTDIR="${1:?usage: bash launch/bench/gpu_checks.sh OUTDIR}"
SIZE="${SIZE:-small}"
SEQ_LEN="${SEQ_LEN:-1024}"
cd "$(dirname "$0")/../.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
mkdir -p "$OUTDIR"
status=0
run() {  # run NAME COMMAND...: the command's output also in OUTDIR/NAME.txt; a failure fails the script at the end
  local name="$1"
  shift
  "$@" 2>&1 | tee "$OUTDIR/$name.txt" || status=1
}
run device python -c 'import torch; print(torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU",
torch.__version__)'
run tests python -m pytest -q -p no:cacheprovider tests/pipeline/runtime/test_precision.py \
  tests/pipeline/measure/test_memory.py
run bench_pretrain python launch/bench/bench_pretrain.py --size "$SIZE" --seq-len "$SEQ_LEN" --batch 8 --ranks 1 \
  --stages 0 3 --steps 5 --repeats 3 --json "$OUTDIR/bench_pretrain.json"
run bench_distill python launch/bench/bench_distill.py --size "$SIZE" --seq-len "$SEQ_LEN" --rows 32 --group 4 --ranks 1 \
  --stages 0 3 --steps 3 --repeats 3 --json "$OUTDIR/bench_distill.json"
exit $status
