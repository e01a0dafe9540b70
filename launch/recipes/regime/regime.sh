#!/usr/bin/env bash
# A teacher's step curve in one regime (corpus, tokenizer, length, model size, training time):
#   bash launch/recipes/regime/regime.sh NAME [--set key=value ...]
# prepares launch/recipes/regime/NAME_prepare.yaml, pre-trains NAME_pretrain.yaml (overrides apply there) on
# RANKS ranks, converts the teacher and judges it with the plain sampler at every step count of
# teacher_steps.yaml. Writes runs/regimes/NAME/, and the table and plot to launch/results/regimes/NAME_STEPSsteps.*
# Rerunning reuses finished work and resumes training: `--set train.max_steps=N` trains the same teacher longer.
source "$(dirname "$0")/../../setup_env.sh"
NAME="${1:?usage: bash launch/recipes/regime/regime.sh NAME [--set key=value ...]}"
shift
CONFIGS=launch/recipes/regime
[ -f "$CONFIGS/${NAME}_prepare.yaml" ] && [ -f "$CONFIGS/${NAME}_pretrain.yaml" ] \
  || { echo "error: no regime '$NAME' ($CONFIGS/${NAME}_prepare.yaml and _pretrain.yaml)" >&2; exit 2; }
OUT="${OUT:-runs/regimes/$NAME}"
RANKS="${RANKS:-2}"
if ! python -c 'import torch, sys; sys.exit(not torch.cuda.is_available())'; then
  export DS_ACCELERATOR=cpu
fi
python -m data_prep prepare --config "$CONFIGS/${NAME}_prepare.yaml" --out "$OUT/data" --workers 2
deepspeed --num_gpus "$RANKS" --master_port "$MASTER_PORT" launch/train.py --config "$CONFIGS/${NAME}_pretrain.yaml" \
  --set data.path="$OUT/data" --set run.out_dir="$OUT/pretrain" --set tracking.uri="sqlite:///$OUT/mlflow.db" "$@"
rm -rf "$OUT/bundles/teacher"  # the teacher of the latest checkpoint
python -m pipeline convert --checkpoint "$OUT/pretrain" --out "$OUT/bundles/teacher"
judge_packages
python -m pipeline evaluate --config "$CONFIGS/teacher_steps.yaml" --set teacher="$OUT/bundles/teacher" \
  --set data="$OUT/data" --set out="$OUT/evaluate" --set tracking.uri="sqlite:///$OUT/mlflow.db"
python - "$NAME" "$OUT" "$RANKS" <<'PY'
import json, sys
from pathlib import Path
import yaml
from pipeline.measure.plots import read_metrics
name, out, ranks = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
manifest = json.loads((out / "data" / "manifest.json").read_text())
config = yaml.safe_load((out / "pretrain" / "config.yaml").read_text())
metrics = read_metrics(out / "pretrain" / "metrics.jsonl")
tokens_per_step = manifest["seq_len"] * config["data"]["batch_size"] * ranks
seconds, previous = 0.0, 0
for step, row in metrics.items():
    if "train/tokens_per_s" in row:
        seconds, previous = seconds + (step - previous) * tokens_per_step / row["train/tokens_per_s"], step
step, last = max((s, r) for s, r in metrics.items() if "val/nelbo_nats" in r)
rows = json.loads((out / "evaluate" / "results.json").read_text())["rows"]
ppl = {r["steps"]: r["gen_ppl"] for r in rows if r["model"] == "teacher"}
ratio = ppl[min(ppl)] / ppl[max(ppl)]
summary = (f"Regime `{name}`: tokenizer {manifest['tokenizer']['kind']} (V = {manifest['vocab_size']}), "
           f"L = {manifest['seq_len']}, model `{config['model']['size']}`, {step} steps "
           f"({seconds / 60:.1f} min of training on {ranks} ranks), validation NELBO "
           f"{last['val/nelbo_nats']:.3f} nats/token. Teacher Gen-PPL at {min(ppl)} steps / at {max(ppl)} steps: "
           f"{ratio:.2f}.\n\n")
results = Path("launch/results/regimes")
results.mkdir(parents=True, exist_ok=True)
(results / f"{name}_{step}steps.png").write_bytes((out / "evaluate" / "genppl_vs_nfe.png").read_bytes())
(results / f"{name}_{step}steps.md").write_text(summary + (out / "evaluate" / "results.md").read_text())
(results / f"{name}_{step}steps.json").write_text(json.dumps({"regime": name, "train_seconds": seconds, "val_nelbo_nats":
    last["val/nelbo_nats"], "steps_ratio": ratio, **json.loads((out / "evaluate" / "results.json").read_text())}, indent=1))
print(summary)
PY
