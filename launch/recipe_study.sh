#!/usr/bin/env bash
# One row of docs/small_scale.md: pretrain a recipe on the demo corpus, then probe the
# pretrained encoder, its own random-init twin (the same command stopped before its first
# update, so the same initial weights) and the log-mel baseline on the demo's three tasks.
#
#   bash launch/recipe_study.sh NAME CONFIG[:ARG] [--config.KEY=VALUE ...]
#   bash launch/recipe_study.sh small configs/matpac_pp.py:small
#   bash launch/recipe_study.sh e1 configs/matpac_pp.py:runlocal --config.ema.encoder=0.996,1.0
#
# Environment:
#   STUDY_DIR           where everything goes (default runs/study; relative: from the current folder)
#   STUDY_NUM_PRETRAIN  pretraining clips of the demo corpus (default 1000, the demo's own)
#   STUDY_SEEDS         probe seeds (default 10)
#
# Writes STUDY_DIR/NAME (the training workdir, its plots/ and probe/), STUDY_DIR/NAME_random,
# STUDY_DIR/NAME/probe/table.md and probe/agreement.txt (tools/agreement.py); STUDY_DIR/audio
# and STUDY_DIR/mels are made once and reused.
if [ $# -lt 2 ]; then
  sed -n '2,17p' "$0" >&2
  exit 2
fi
NAME="$1"; CONFIG="$2"; shift 2
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"  # cd's to the checkout; CALLER_DIR: where we were
DIR="${STUDY_DIR:-$ROOT/runs/study}"
case "$DIR" in
  /*) ;;
  *) DIR="$CALLER_DIR/$DIR" ;;
esac
NUM="${STUDY_NUM_PRETRAIN:-1000}"
CORPUS="$DIR/audio$([ "$NUM" = 1000 ] || echo "_$NUM")"
MELS="$DIR/mels$([ "$NUM" = 1000 ] || echo "_$NUM")"
step() { echo; echo "=== $* ==="; "$@"; }

step python -m matpac_jax.data.demo_corpus --out "$CORPUS" --num_pretrain "$NUM" --num_workers 2
step python -m matpac_jax.audio.preprocess --input_dir "$CORPUS/pretrain" --output_dir "$MELS" \
  --num_workers 2
TASK_FILES=("$CORPUS/tasks/timbre.csv" "$CORPUS/tasks/pitch.csv" "$CORPUS/tasks/event.csv")
EVALS="$(IFS=,; echo "${TASK_FILES[*]}")"
TRAIN=(python -m matpac_jax.train --config="$CONFIG" --config.data.dir="$MELS")
START=$(date +%s)
step "${TRAIN[@]}" --workdir="$DIR/$NAME" --config.evals="$EVALS" "$@"
echo "pretraining took $(( $(date +%s) - START )) s (wall, this machine)"
step python -m matpac_jax.tools.run_summary "$DIR/$NAME" --plot || true  # flags collapse signs
# The twin: the same command, stopped after one step at learning rate 0 (no eval, no update).
step "${TRAIN[@]}" --workdir="$DIR/${NAME}_random" "$@" --config.total_steps=1 \
  --config.optim.peak_lr=0 --config.evals= --config.checkpoint_every=1

TASKS=()
for t in "${TASK_FILES[@]}"; do TASKS+=(--task_csv "$t"); done
SEEDS="${STUDY_SEEDS:-10}"
PROBE=("${TASKS[@]}" --seeds "$SEEDS" --cache "$DIR/probe_cache")
step python -m matpac_jax.evaluation.probe --encoder "$DIR/$NAME" "${PROBE[@]}" --out "$DIR/$NAME/probe/pretrained"
step python -m matpac_jax.evaluation.probe --encoder "$DIR/${NAME}_random" "${PROBE[@]}" \
  --out "$DIR/$NAME/probe/random"
[ -f "$DIR/probe_logmel_${NUM}_s$SEEDS/report.json" ] \
  || step python -m matpac_jax.evaluation.probe --encoder logmel "${PROBE[@]}" --out "$DIR/probe_logmel_${NUM}_s$SEEDS"
step python -m matpac_jax.evaluation.probe table "$DIR/$NAME/probe/pretrained" "$DIR/$NAME/probe/random" \
  "$DIR/probe_logmel_${NUM}_s$SEEDS" --names "$NAME" "random init" "log-mel" --out "$DIR/$NAME/probe/table.md"
# Do the run's last in-training evaluation and the table rank the three encoders alike?
echo; echo "=== do the learning curves and the probe table agree? ==="
python -m matpac_jax.tools.agreement "$DIR/$NAME" --reports "$DIR/$NAME/probe/pretrained" \
  "$DIR/$NAME/probe/random" "$DIR/probe_logmel_${NUM}_s$SEEDS" | tee "$DIR/$NAME/probe/agreement.txt"
