#!/usr/bin/env bash
# Which tokens a step reveals, on the synthetic benchmark's two families (about 50 / 75 minutes on 2 CPU cores):
#   [FAMILY=markov|regime] bash launch/recipes/synthetic/orders.sh
# makes the chain (markov: a first-order Markov chain; regime: the regime-switching chain with long-range
# structure; seed SEED, default 1), prepares its corpus, pre-trains the tiny teacher (1,500 / 5,000 steps),
# distils it twice with launch/recipes/synthetic/distill.yaml (rollouts in the random order, and in
# dispersed:3), converts all three and evaluates them under the chain's exact judge: the teacher, its best
# temperature and the exact denoiser at 4 ... 64 steps and both students at 4 ... 32, in the random and the
# dispersed:3 order
# (launch/recipes/synthetic/orders_evaluate.yaml, orders_student_evaluate.yaml), and the teacher and the exact
# denoiser at 4 and 8 steps in the other orders (orders_probe_evaluate.yaml). Writes runs/orders/FAMILY/
# (OUT=...) and the tables to launch/results/orders/FAMILY/ (RESULTS=...). Rerunning reuses finished work.
source "$(dirname "$0")/../../setup_env.sh"
FAMILY="${FAMILY:-markov}"
[ "$FAMILY" = markov ] || [ "$FAMILY" = regime ] || { echo "error: FAMILY=$FAMILY: markov or regime" >&2; exit 2; }
OUT="${OUT:-runs/orders/$FAMILY}"
RESULTS="${RESULTS:-launch/results/orders/$FAMILY}"
SEED="${SEED:-1}"
TEACHER_STEPS=1500
# the regime family's long-range structure takes the teacher longer to learn (its exact NLL still falls at 1,500)
[ "$FAMILY" = markov ] || TEACHER_STEPS=5000
RANKS="${RANKS:-2}"
CONFIGS=launch/recipes/synthetic
TRACK=(--set tracking.uri="sqlite:///$OUT/mlflow.db" --set tracking.experiment="orders-$FAMILY")
if ! python -c 'import torch, sys; sys.exit(not torch.cuda.is_available())'; then
  export DS_ACCELERATOR=cpu
fi
mkdir -p "$OUT" "$RESULTS"
TIMINGS="$OUT/timings.tsv"
: > "$TIMINGS"
stage corpus python -m data_prep synthetic "$FAMILY" --out "$OUT/corpus" --seed "$SEED"
stage prepare python -m data_prep prepare --input "$OUT/corpus/chain.fasta" --tokenizer protein --seq-len 64 \
  --out "$OUT/data" --workers 2
stage teacher deepspeed --num_gpus "$RANKS" --master_port "$MASTER_PORT" launch/train.py --config "$CONFIGS/pretrain.yaml" \
  --set data.path="$OUT/data" --set run.out_dir="$OUT/pretrain" --set train.exact_judge="markov:$OUT/corpus" \
  --set train.max_steps="$TEACHER_STEPS" "${TRACK[@]}"
rm -rf "$OUT/bundles/teacher"  # the bundle of the latest checkpoint
python -m pipeline convert --checkpoint "$OUT/pretrain" --out "$OUT/bundles/teacher"
stage distill_random deepspeed --num_gpus "$RANKS" --master_port "$MASTER_PORT" launch/train.py --config "$CONFIGS/distill.yaml" \
  --set data.path="$OUT/data" --set distill.teacher="$OUT/bundles/teacher" --set run.out_dir="$OUT/distill_random" \
  --set train.exact_judge="markov:$OUT/corpus" --set distill.rollout_order=random "${TRACK[@]}"
stage distill_dispersed3 deepspeed --num_gpus "$RANKS" --master_port "$MASTER_PORT" launch/train.py --config "$CONFIGS/distill.yaml" \
  --set data.path="$OUT/data" --set distill.teacher="$OUT/bundles/teacher" --set run.out_dir="$OUT/distill_dispersed3" \
  --set train.exact_judge="markov:$OUT/corpus" --set distill.rollout_order=dispersed:3 "${TRACK[@]}"
for name in random dispersed3; do
  rm -rf "$OUT/bundles/student_$name"
  python -m pipeline convert --checkpoint "$OUT/distill_$name" --out "$OUT/bundles/student_$name"
done
EVAL=(--set teacher="$OUT/bundles/teacher" --set data="$OUT/data" --set judge="markov:$OUT/corpus" "${TRACK[@]}")
# one process samples and judges: give it every core
OMP_NUM_THREADS="$(nproc)" stage evaluate_random python -m pipeline evaluate --config "$CONFIGS/orders_evaluate.yaml" \
  --set student="$OUT/bundles/student_random" --set out="$OUT/evaluate_random" "${EVAL[@]}"
OMP_NUM_THREADS="$(nproc)" stage evaluate_dispersed3 python -m pipeline evaluate \
  --config "$CONFIGS/orders_student_evaluate.yaml" --set student="$OUT/bundles/student_dispersed3" \
  --set out="$OUT/evaluate_dispersed3" "${EVAL[@]}"
OMP_NUM_THREADS="$(nproc)" stage evaluate_probe python -m pipeline evaluate \
  --config "$CONFIGS/orders_probe_evaluate.yaml" --set out="$OUT/evaluate_probe" "${EVAL[@]}"
python launch/recipes/synthetic/orders_tables.py "$OUT" --results "$RESULTS"
cp "$OUT/timings.tsv" "$RESULTS/"
cp "$OUT/evaluate_random"/*_vs_nfe.png "$RESULTS/"
