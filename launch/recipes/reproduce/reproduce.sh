#!/usr/bin/env bash
# The paper's claim at small scale, main arm (about 90 minutes on 2 CPU cores):
#   bash launch/recipes/reproduce/reproduce.sh
# prepares Macbeth with a 1k BPE (regime macbeth1k), pre-trains the tiny MDLM teacher for 2,500 steps and
# an in-domain autoregressive judge on the training split, distils the teacher with every DiDi-Instruct
# technique on, converts the three to bundles and evaluates teacher and student side by side (both judges,
# 256 samples a cell, entropy-matched controls). Writes runs/reproduce/ (override with OUT=...) and the
# tables and plots to launch/results/reproduce/. The ablation arms follow with
# bash launch/recipes/ablation.sh reproduce ARM.
# Rerunning reuses finished work and resumes training.
source "$(dirname "$0")/../../setup_env.sh"
OUT="${OUT:-runs/reproduce}"
RANKS="${RANKS:-2}"
CONFIGS=launch/recipes/reproduce
TRACK=(--set tracking.uri="sqlite:///$OUT/mlflow.db")
if ! python -c 'import torch, sys; sys.exit(not torch.cuda.is_available())'; then
  export DS_ACCELERATOR=cpu
fi
mkdir -p "$OUT"
TIMINGS="$OUT/timings.tsv"
: > "$TIMINGS"
stage prepare python -m data_prep prepare --config launch/recipes/regime/macbeth1k_prepare.yaml --out "$OUT/data" \
  --workers 2
stage teacher deepspeed --num_gpus "$RANKS" --master_port "$MASTER_PORT" launch/train.py --config launch/recipes/regime/macbeth1k_pretrain.yaml \
  --set data.path="$OUT/data" --set run.out_dir="$OUT/pretrain" --set train.max_steps=2500 \
  --set run.name=reproduce-teacher --set tracking.experiment=reproduce "${TRACK[@]}"
stage judge deepspeed --num_gpus "$RANKS" --master_port "$MASTER_PORT" launch/train.py --config "$CONFIGS/judge.yaml" \
  --set data.path="$OUT/data" --set run.out_dir="$OUT/judge" "${TRACK[@]}"
stage distill deepspeed --num_gpus "$RANKS" --master_port "$MASTER_PORT" launch/train.py --config "$CONFIGS/distill.yaml" \
  --set data.path="$OUT/data" --set distill.teacher="$OUT/pretrain" --set run.out_dir="$OUT/distill" "${TRACK[@]}"
for model in teacher:pretrain judge:judge student:distill; do
  rm -rf "$OUT/bundles/${model%%:*}"  # the bundle of the latest checkpoint
  python -m pipeline convert --checkpoint "$OUT/${model#*:}" --out "$OUT/bundles/${model%%:*}"
done
judge_packages
# one process samples and judges: give it every core
OMP_NUM_THREADS="$(nproc)" stage evaluate python -m pipeline evaluate --config "$CONFIGS/evaluate.yaml" \
  --set teacher="$OUT/bundles/teacher" --set student="$OUT/bundles/student" --set in_domain_judge="$OUT/bundles/judge" \
  --set data="$OUT/data" --set out="$OUT/evaluate" "${TRACK[@]}"
python launch/recipes/reproduce/tables.py main "$OUT"
