#!/usr/bin/env bash
# One arm of the ablation on the synthetic benchmark (after launch/oracle.sh, whose corpus, data and teacher it
# reuses): the paper's cumulative ablation, then from the paper's method to this benchmark's settings one key at
# a time:
#   bash launch/oracle_ablation.sh ARM
#   ARM: baseline | intermediate | coupled | omega | paper | rollout8 | tau_row | positions_all_2steps |
#        iterations1200
# (launch/oracle_tables.py lists each arm's keys). Distils with them, converts the student, evaluates it and the
# teacher at 8 and 32 steps under the exact judge, and rewrites launch/results/oracle/ablation.md from the main
# run and every arm finished so far.
source "$(dirname "$0")/setup_env.sh"
ARM="${1:?usage: bash launch/oracle_ablation.sh ARM (see the header)}"
OUT="${OUT:-runs/oracle}"
RESULTS="${RESULTS:-launch/results/oracle}"
RANKS="${RANKS:-2}"
[ -d "$OUT/bundles/teacher" ] || { echo "error: $OUT/bundles/teacher missing: run bash launch/oracle.sh first" >&2; exit 2; }
SWITCHES="$(python launch/oracle_tables.py switches "$ARM")"
read -r -a SETS <<< "$SWITCHES"
ARM_OUT="$OUT/ablation/$ARM"
if ! python -c 'import torch, sys; sys.exit(not torch.cuda.is_available())'; then
  export DS_ACCELERATOR=cpu
fi
deepspeed --num_gpus "$RANKS" --master_port "$MASTER_PORT" launch/train.py --config launch/configs/markov/distill.yaml \
  --set data.path="$OUT/data" --set distill.teacher="$OUT/bundles/teacher" --set run.out_dir="$ARM_OUT/distill" \
  --set train.exact_judge="markov:$OUT/corpus" --set run.name="oracle-ablation-$ARM" \
  --set tracking.uri="sqlite:///$OUT/mlflow.db" --set tracking.experiment=oracle "${SETS[@]}"
rm -rf "$ARM_OUT/bundles/student"
python -m pipeline convert --checkpoint "$ARM_OUT/distill" --out "$ARM_OUT/bundles/student"
OMP_NUM_THREADS="$(nproc)" python -m pipeline evaluate --config launch/configs/markov/ablation_evaluate.yaml \
  --set teacher="$OUT/bundles/teacher" --set student="$ARM_OUT/bundles/student" --set data="$OUT/data" \
  --set out="$ARM_OUT/evaluate" --set judge="markov:$OUT/corpus" --set tracking.uri="sqlite:///$OUT/mlflow.db"
python launch/oracle_tables.py ablation "$OUT" --results "$RESULTS"
