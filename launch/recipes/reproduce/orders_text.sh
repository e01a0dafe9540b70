#!/usr/bin/env bash
# Which tokens a step reveals, on text (about 45 minutes on 2 CPU cores, after reproduce.sh):
#   bash launch/recipes/reproduce/orders_text.sh
# samples the reproduction's teacher and student (OUT, default runs/reproduce), without retraining, at 8 and
# 16 steps in the random order, dispersed:1 (the deterministic count per step, no exclusion), dispersed:2, 3 and 5
# and confidence, judged by both judges beside the entropy and the entropy-matched teacher
# (launch/recipes/reproduce/orders_evaluate.yaml). Writes OUT/evaluate_orders/ and the tables to
# launch/results/orders/text/.
source "$(dirname "$0")/../../setup_env.sh"
OUT="${OUT:-runs/reproduce}"
for bundle in teacher student judge; do
  [ -d "$OUT/bundles/$bundle" ] || { echo "error: $OUT/bundles/$bundle missing: run bash launch/recipes/reproduce/reproduce.sh first" >&2
                                     exit 2; }
done
judge_packages
# one process samples and judges: give it every core
OMP_NUM_THREADS="$(nproc)" python -m pipeline evaluate --config launch/recipes/reproduce/orders_evaluate.yaml \
  --set teacher="$OUT/bundles/teacher" --set student="$OUT/bundles/student" --set in_domain_judge="$OUT/bundles/judge" \
  --set data="$OUT/data" --set out="$OUT/evaluate_orders" --set tracking.uri="sqlite:///$OUT/mlflow.db"
python launch/recipes/reproduce/tables.py orders "$OUT"
