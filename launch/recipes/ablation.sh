#!/usr/bin/env bash
# One arm of the cumulative ablation, or one variant of the student's settings (after launch/reproduce.sh, whose
# data, teacher and judge it reuses):
#   bash launch/ablation.sh ARM   ARM: none | intermediate_state | coupled_time | omega_weight | paper (the ablation)
#                                      lr2e-5 | lr1e-4 | tau_small (variants)
# Every arm and variant has the paper's 2-step rollout, one τ per row and the discriminator at the re-masked
# positions. An ablation arm distils with the techniques up to ARM on and the later ones off (each arm differs
# from the previous one in one key; paper has all four); a variant changes one key of the paper arm
# (launch/reproduction.py lists both). Then converts the student, judges it at 8 and 32 NFE like the main arm
# (the last two rows of the ablation, the benchmark's settings and + RGAS, are the main arm) and rewrites
# launch/results/reproduce/{ablation,variants}.md from every arm finished so far.
source "$(dirname "$0")/setup_env.sh"
ARM="${1:?usage: bash launch/ablation.sh ARM (an ablation arm or a settings variant, see the header)}"
OUT="${OUT:-runs/reproduce}"
RANKS="${RANKS:-2}"
[ -d "$OUT/bundles/judge" ] || { echo "error: $OUT/bundles/judge missing: run bash launch/reproduce.sh first" >&2; exit 2; }
SWITCHES="$(python launch/reproduction.py switches "$ARM")"
read -r -a SETS <<< "$SWITCHES"
ARM_OUT="$OUT/ablation/$ARM"
if ! python -c 'import torch, sys; sys.exit(not torch.cuda.is_available())'; then
  export DS_ACCELERATOR=cpu
fi
deepspeed --num_gpus "$RANKS" --master_port "$MASTER_PORT" launch/train.py --config launch/configs/reproduce/distill.yaml \
  --set data.path="$OUT/data" --set distill.teacher="$OUT/pretrain" --set run.out_dir="$ARM_OUT/distill" \
  --set run.name="ablation-$ARM" --set tracking.uri="sqlite:///$OUT/mlflow.db" "${SETS[@]}"
rm -rf "$ARM_OUT/bundles/student"
python -m pipeline convert --checkpoint "$ARM_OUT/distill" --out "$ARM_OUT/bundles/student"
OMP_NUM_THREADS="$(nproc)" python -m pipeline evaluate --config launch/configs/reproduce/ablation_evaluate.yaml \
  --set teacher="$OUT/bundles/teacher" --set student="$ARM_OUT/bundles/student" \
  --set in_domain_judge="$OUT/bundles/judge" --set data="$OUT/data" --set out="$ARM_OUT/evaluate" \
  --set tracking.uri="sqlite:///$OUT/mlflow.db"
python launch/reproduction.py ablation "$OUT"
