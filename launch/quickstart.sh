#!/usr/bin/env bash
# The pipeline end to end on the embedded Shakespeare corpus (data preparation), on CPU.
# Outputs go to runs/quickstart/ (override with OUT=...). Safe to rerun: finished work is reused.
source "$(dirname "$0")/setup_env.sh"
OUT="${OUT:-runs/quickstart}"
python -m data_prep prepare --config launch/configs/prepare_shakespeare.yaml --out "$OUT/data" --workers 2
python -m data_prep verify "$OUT/data"
echo "quickstart: prepared data in $OUT/data (manifest: $OUT/data/manifest.json)"
