#!/usr/bin/env bash
# One arm of a recipe's ablation, after the recipe itself (whose data, teacher and judge it reuses):
#   bash launch/recipes/ablation.sh RECIPE ARM
#   RECIPE: reproduce (text) | synthetic | protein | latent; ARM: one of launch/recipes/RECIPE/ablation.yaml's arms
# The three main recipes have the paper's cumulative ablation, one technique switched on per arm: none,
# intermediate_state, coupled_time, omega_weight, paper (all four); each ablation.yaml adds its own arms, each a few
# config overrides (latent: the latent-conditioned student's arms, on the synthetic benchmark's orders runs). Distils with the arm's overrides on the recipe's distillation config, converts the student,
# evaluates it at 8 and 32 steps like the main run and rewrites the recipe's tables in launch/results/RECIPE/
# from every arm finished so far (and the main run). OUT=... (default runs/RECIPE), RESULTS=..., RANKS=...
source "$(dirname "$0")/../setup_env.sh"
RECIPE="${1:?usage: bash launch/recipes/ablation.sh RECIPE ARM (see the header)}"
ARM="${2:?usage: bash launch/recipes/ablation.sh RECIPE ARM (see the header)}"
OUT="${OUT:-runs/$RECIPE}"
RESULTS="${RESULTS:-launch/results/$RECIPE}"
RANKS="${RANKS:-2}"
python launch/recipes/ablation.py run "$RECIPE" "$ARM" --out "$OUT" --results "$RESULTS" --ranks "$RANKS"
