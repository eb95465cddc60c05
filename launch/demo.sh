#!/usr/bin/env bash
# The main job on the built-in demo corpus, from a fresh clone: set up .venv if missing, make
# the demo audio, preprocess it into log-mel shards and stream training crops from them.
# MATPAC_DEMO_DIR (default runs/demo) says where everything goes.
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
DEMO="${MATPAC_DEMO_DIR:-$ROOT/runs/demo}"
mkdir -p "$DEMO"
step() { echo; echo "=== $* ==="; echo "\$ $*"; "$@"; }

step python -m matpac_jax.data.demo_corpus --out "$DEMO/audio" --num_workers 2
step python -m matpac_jax.preprocess --input_dir "$DEMO/audio/pretrain" \
  --output_dir "$DEMO/mels" --num_workers 2
step python -m matpac_jax.tools.bench_input --data "$DEMO/mels" --batch_size 64 --seconds 3 \
  --workers 0,2 --preprocess_files 0

echo
echo "demo corpus: $DEMO/audio (pretrain/, labelled/, tasks/*.csv)"
echo "log-mel shards: $DEMO/mels (index.json, report.json, shards/)"
