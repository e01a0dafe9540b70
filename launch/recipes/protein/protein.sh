#!/usr/bin/env bash
# Proteins end to end (about 90 minutes on 2 CPU cores): bash launch/recipes/protein/protein.sh
# Installs Debian's metastudent-data (UniProtKB proteins, release 2014-01, as BLAST databases; 764 MB) and
# mmseqs2 if they are missing (apt-get: root or passwordless sudo), keeps the 40,000 de-duplicated proteins of
# 20-254 residues with the smallest content hash, splits them by 30 % identity cluster (python -m data_prep
# proteins), prepares them with the protein tokenizer, pre-trains the tiny MDLM teacher and an in-domain causal
# judge on the training split, distils the teacher, converts the three to bundles and evaluates teacher and
# student at 8 … 256 steps (launch/recipes/protein/). Writes runs/protein/ (override with OUT=...) and copies the
# table and plots to launch/results/protein/ (RESULTS=...). Rerunning reuses finished work and resumes training.
#   FASTA=PATH        read these FASTA files instead of the Debian databases (nothing is installed but mmseqs2)
#   MAX_SEQUENCES=N   proteins kept (0: all), MAX_LENGTH=N (254: one protein fits a row of 256)
#   FAMILIES=K        keep only the K largest families (clusters at FAMILY_IDENTITY, 0.3), split at IDENTITY
#                     (0.3; above FAMILY_IDENTITY when FAMILIES is set, e.g. 0.7): a corpus a tiny teacher can learn
#   TEACHER_SET, JUDGE_SET, DISTILL_SET, EVALUATE_SET: extra KEY=VALUE overrides of a stage, space-separated
#   CONFIGS=DIR       the stage configs (launch/recipes/protein/gpu for the GPU sizes)
#   THREADS=N         mmseqs2's threads and the evaluation's (2)
source "$(dirname "$0")/../../setup_env.sh"
OUT="${OUT:-runs/protein}"
RESULTS="${RESULTS:-launch/results/protein}"
RANKS="${RANKS:-2}"
CONFIGS="${CONFIGS:-launch/recipes/protein}"
MAX_LENGTH="${MAX_LENGTH:-254}"
MAX_SEQUENCES="${MAX_SEQUENCES:-40000}"
THREADS="${THREADS:-2}"
FAMILIES="${FAMILIES:-0}"
FAMILY_IDENTITY="${FAMILY_IDENTITY:-0.3}"
IDENTITY="${IDENTITY:-0.3}"
DB=/usr/share/metastudent-data/dataset_201401
TRACK=(--set tracking.uri="sqlite:///$OUT/mlflow.db")
sets() { for kv in $1; do printf -- '--set\n%s\n' "$kv"; done; }
need=()
command -v mmseqs > /dev/null || need+=(mmseqs2)
[ -n "${FASTA:-}" ] || [ -f "$DB/MFO/goasp.fasta.pin" ] || need+=(metastudent-data)
if [ "${#need[@]}" -gt 0 ]; then
  echo "installing Debian's ${need[*]} (apt-get) ..."
  bash launch/apt_install.sh "${need[@]}"
fi
if ! python -c 'import torch, sys; sys.exit(not torch.cuda.is_available())'; then
  export DS_ACCELERATOR=cpu
fi
if [ -n "${FASTA:-}" ]; then
  # shellcheck disable=SC2206
  SOURCES=(--fasta $FASTA)
else
  SOURCES=(--blast-db "$DB/BPO/goasp.fasta" "$DB/CCO/goasp.fasta" "$DB/MFO/goasp.fasta")
fi
mkdir -p "$OUT"
TIMINGS="$OUT/timings.tsv"
: > "$TIMINGS"
stage split python -m data_prep proteins "${SOURCES[@]}" --out "$OUT/split" --max-length "$MAX_LENGTH" \
  --max-sequences "$MAX_SEQUENCES" --val-fraction 0.1 --threads "$THREADS" --identity "$IDENTITY" \
  --families "$FAMILIES" --family-identity "$FAMILY_IDENTITY"
stage prepare python -m data_prep prepare --config "$CONFIGS/prepare.yaml" --input "$OUT/split/train.fasta" \
  --val-input "$OUT/split/val.fasta" --out "$OUT/data" --workers 2
mapfile -t TEACHER_ARGS < <(sets "${TEACHER_SET:-}")
stage teacher deepspeed --num_gpus "$RANKS" --master_port "$MASTER_PORT" launch/train.py --config "$CONFIGS/pretrain.yaml" \
  --set data.path="$OUT/data" --set run.out_dir="$OUT/pretrain" "${TRACK[@]}" "${TEACHER_ARGS[@]}"
mapfile -t JUDGE_ARGS < <(sets "${JUDGE_SET:-}")
stage judge deepspeed --num_gpus "$RANKS" --master_port "$MASTER_PORT" launch/train.py --config "$CONFIGS/judge.yaml" \
  --set data.path="$OUT/data" --set run.out_dir="$OUT/judge" "${TRACK[@]}" "${JUDGE_ARGS[@]}"
mapfile -t DISTILL_ARGS < <(sets "${DISTILL_SET:-}")
stage distill deepspeed --num_gpus "$RANKS" --master_port "$MASTER_PORT" launch/train.py --config "$CONFIGS/distill.yaml" \
  --set data.path="$OUT/data" --set distill.teacher="$OUT/pretrain" --set run.out_dir="$OUT/distill" \
  "${TRACK[@]}" "${DISTILL_ARGS[@]}"
for model in teacher:pretrain judge:judge student:distill; do
  rm -rf "$OUT/bundles/${model%%:*}"  # the bundle of the latest checkpoint
  python -m pipeline convert --checkpoint "$OUT/${model#*:}" --out "$OUT/bundles/${model%%:*}"
done
mapfile -t EVALUATE_ARGS < <(sets "${EVALUATE_SET:-}")
# one process samples and judges: give it every core
OMP_NUM_THREADS="$THREADS" stage evaluate python -m pipeline evaluate --config "$CONFIGS/evaluate.yaml" \
  --set teacher="$OUT/bundles/teacher" --set student="$OUT/bundles/student" --set judge="$OUT/bundles/judge" \
  --set data="$OUT/data" --set out="$OUT/evaluate" --set protein_threads="$THREADS" "${TRACK[@]}" "${EVALUATE_ARGS[@]}"
mkdir -p "$RESULTS"
cp "$OUT/evaluate/results.md" "$OUT/evaluate/results.json" "$OUT/evaluate/"*_vs_nfe.png "$OUT/split/split.json" \
  "$OUT/timings.tsv" "$RESULTS/"
echo "protein recipe done: $RESULTS/results.md"
