#!/usr/bin/env bash
# The main job on the built-in demo corpus, from a fresh clone: set up .venv if missing, make
# the demo audio, preprocess it into log-mel shards, check the input pipeline's speed, pretrain
# the `runlocal` MATPAC++ model (a few minutes on 2 CPU cores) and summarise the run.
# MATPAC_DEMO_DIR (default runs/demo) says where everything goes; re-running resumes/reuses.
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
DEMO="${MATPAC_DEMO_DIR:-$ROOT/runs/demo}"
mkdir -p "$DEMO"
step() { echo; echo "=== $* ==="; "$@"; }

step python -m matpac_jax.data.demo_corpus --out "$DEMO/audio" --num_workers 2
step python -m matpac_jax.preprocess --input_dir "$DEMO/audio/pretrain" \
  --output_dir "$DEMO/mels" --num_workers 2
step python -m matpac_jax.tools.bench_input --data "$DEMO/mels" --batch_size 64 --seconds 3 \
  --workers 0,2 --preprocess_files 0
step python -m matpac_jax.train --config=configs/matpac_pp.py:runlocal \
  --config.data.dir="$DEMO/mels" --workdir="$DEMO/pretrain"
step python -m matpac_jax.tools.run_summary "$DEMO/pretrain" \
  || echo "(the summary flags a collapse sign above; see docs/architecture.md, 'Monitors')"

echo
echo "demo corpus:    $DEMO/audio (pretrain/, labelled/, tasks/*.csv)"
echo "log-mel shards: $DEMO/mels (index.json, report.json, shards/)"
echo "pretraining:    $DEMO/pretrain (metrics.jsonl, tensorboard/, checkpoints/, export/)"
