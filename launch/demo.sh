#!/usr/bin/env bash
# The main job on the built-in demo corpus, from a fresh clone: set up .venv if missing, make
# the demo audio, preprocess it into log-mel shards, check the input pipeline's speed, pretrain
# the `runlocal` MATPAC++ model (a few minutes on 2 CPU cores), summarise the run, and score
# the pretrained encoder against its random-init twin and the log-mel baseline with linear
# probes on the demo's labelled tasks, then fine-tune it on the demo's multi-label tagging
# mixtures against the same encoder frozen with a trained linear head (docs/finetune.md).
#
# Environment:
#   MATPAC_DEMO_DIR   where everything goes (default runs/demo in the checkout, runs/demo_tiny
#                     with MATPAC_DEMO_SIZE=tiny; a relative path starts from the current
#                     folder); re-running resumes/reuses
#   MATPAC_DEMO_SIZE  full (default) or tiny: every step on a few clips and steps (8 + 72 clips,
#                     3 training steps on 64-frame crops, one probe seed), a one-minute smoke
#                     test of the whole chain (tests/test_docs.py runs the README's quick start
#                     this way)
SIZE="${MATPAC_DEMO_SIZE:-full}"
case "$SIZE" in
  full)
    CORPUS=(); BENCH=(--batch_size 64 --seconds 3 --workers 0,2); TRAIN=(); SEEDS=(--seeds 10) ;;
  tiny)
    CORPUS=(--num_pretrain 8 --num_labelled 72 --num_tagging 8)
    BENCH=(--batch_size 4 --seconds 0.5 --workers 0)
    TRAIN=(--config.total_steps=3 --config.batch_size=4 --config.log_every=1
           --config.checkpoint_every=3 --config.data.crop_frames=64)
    SEEDS=(--seeds 1) ;;
  *)
    echo "launch/demo.sh: error: MATPAC_DEMO_SIZE=$SIZE: use full or tiny" >&2
    exit 2 ;;
esac
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"  # cd's to the checkout; CALLER_DIR: where we were
DEMO="${MATPAC_DEMO_DIR:-$ROOT/runs/demo$([ "$SIZE" = full ] || echo "_$SIZE")}"
case "$DEMO" in
  /*) ;;
  *) DEMO="$CALLER_DIR/$DEMO" ;;
esac
mkdir -p "$DEMO"
step() { echo; echo "=== $* ==="; "$@"; }

# ${A[@]+"${A[@]}"}: an empty array under `set -u` in every bash (macOS ships 3.2).
step python -m matpac_jax.data.demo_corpus --out "$DEMO/audio" --num_workers 2 \
  ${CORPUS[@]+"${CORPUS[@]}"}
step python -m matpac_jax.audio.preprocess --input_dir "$DEMO/audio/pretrain" \
  --output_dir "$DEMO/mels" --num_workers 2
step python -m matpac_jax.tools.bench_input --data "$DEMO/mels" "${BENCH[@]}" \
  --preprocess_files 0
step python -m matpac_jax.train --config=configs/matpac_pp.py:runlocal \
  --config.data.dir="$DEMO/mels" --workdir="$DEMO/pretrain" ${TRAIN[@]+"${TRAIN[@]}"} \
  --config.evals="$DEMO/audio/tasks/timbre.csv,$DEMO/audio/tasks/pitch.csv,$DEMO/audio/tasks/event.csv"
step python -m matpac_jax.tools.run_summary "$DEMO/pretrain" --plot \
  || echo "(the summary flags a collapse sign above; see docs/architecture.md, 'Monitors')"
# The random-init twin: the same command stopped after one step at learning rate 0, so the
# same initial weights and the same input normalisation (the corpus's own) as the run above.
step python -m matpac_jax.train --config=configs/matpac_pp.py:runlocal \
  --config.data.dir="$DEMO/mels" --workdir="$DEMO/random" ${TRAIN[@]+"${TRAIN[@]}"} \
  --config.total_steps=1 --config.optim.peak_lr=0 --config.evals= --config.checkpoint_every=1

# Linear probes (docs/probe.md), the default protocol: the learning rate is chosen per task on
# the validation split, pooled over 10 seeds (the papers' fixed 3e-5 is `--protocol evar`; tuned
# for 3,840-d ViT-B features, it barely moves a probe on the runlocal encoder's 160-d
# embeddings). Ten seeds: a 95% interval of t(9) = 2.26 standard errors, not t(2) = 4.3.
TASKS=(--task_csv "$DEMO/audio/tasks/timbre.csv" --task_csv "$DEMO/audio/tasks/pitch.csv"
       --task_csv "$DEMO/audio/tasks/event.csv")
PROBE=(--cache "$DEMO/probe/cache" ${SEEDS[@]+"${SEEDS[@]}"})
step python -m matpac_jax.evaluation.probe --encoder "$DEMO/pretrain" "${TASKS[@]}" "${PROBE[@]}" \
  --out "$DEMO/probe/pretrained"
step python -m matpac_jax.evaluation.probe --encoder "$DEMO/random" "${TASKS[@]}" "${PROBE[@]}" \
  --out "$DEMO/probe/random"
step python -m matpac_jax.evaluation.probe --encoder logmel "${TASKS[@]}" "${PROBE[@]}" \
  --out "$DEMO/probe/logmel"
step python -m matpac_jax.evaluation.probe table "$DEMO/probe/pretrained" "$DEMO/probe/random" \
  "$DEMO/probe/logmel" --names "MATPAC++ runlocal" "random init" "log-mel" \
  --out "$DEMO/probe/table.md"
# Do the learning curves (the last in-training evaluation against the step-0 one and log-mel)
# rank the three encoders as the table does? One verdict line per in-training protocol.
echo; echo "=== do the learning curves and the probe table agree? ==="
python -m matpac_jax.tools.agreement "$DEMO/pretrain" \
  --reports "$DEMO/probe/pretrained" "$DEMO/probe/random" "$DEMO/probe/logmel" \
  | tee "$DEMO/probe/agreement.txt"

# Fine-tuning (docs/finetune.md): the tagging mixtures' labelled shards, the pretrained encoder
# fine-tuned whole, and the same encoder frozen with only its linear head trained.
for split in train eval; do
  step python -m matpac_jax.audio.preprocess --input_dir "$DEMO/audio/tagging/$split" \
    --labels "$DEMO/audio/tagging/$split.csv" --output_dir "$DEMO/tagging_mels/$split" \
    --num_workers 2
done
FT=(--config=configs/finetune_audioset.py:runlocal --init="$DEMO/pretrain"
    --config.data.train_dir="$DEMO/tagging_mels/train"
    --config.data.eval_dir="$DEMO/tagging_mels/eval" ${TRAIN[@]+"${TRAIN[@]}"})
step python -m matpac_jax.train.finetune "${FT[@]}" --workdir="$DEMO/finetune"
step python -m matpac_jax.train.finetune "${FT[@]}" --workdir="$DEMO/finetune_frozen" \
  --config.freeze_encoder=True
# The last evaluation's mAP of each, beside the probe table.
python - "$DEMO/finetune" "$DEMO/finetune_frozen" > "$DEMO/finetune_map.md" <<'PY'
import json, sys

maps = []
for workdir in sys.argv[1:]:
    with open(f"{workdir}/metrics.jsonl") as f:
        row = [r for r in map(json.loads, f) if "eval/map" in r][-1]
    maps.append(f"{100 * row['eval/map']:.1f} (best {100 * row['eval/best_map']:.1f})")
print("| tagging mAP, demo mixtures (9 classes) | fine-tuned | frozen + linear head |")
print("|---|---|---|")
print(f"| eval split, last epoch | {maps[0]} | {maps[1]} |")
PY
echo
cat "$DEMO/probe/table.md"
grep "^agreement" "$DEMO/probe/agreement.txt" || true
echo
cat "$DEMO/finetune_map.md"
echo
echo "demo corpus:    $DEMO/audio (pretrain/, labelled/, tasks/*.csv, tagging/)"
echo "log-mel shards: $DEMO/mels (index.json, report.json, shards/)"
echo "pretraining:    $DEMO/pretrain (metrics.jsonl, tensorboard/, checkpoints/, export/)"
echo "random twin:    $DEMO/random (the same run stopped before its first update)"
echo "learning curves: $DEMO/pretrain/plots/*.png (losses, monitors, evals vs initial weights and log-mel)"
echo "probe table:    $DEMO/probe/table.md (reports and confusion matrices in $DEMO/probe/*/)"
echo "fine-tuning:    $DEMO/finetune, $DEMO/finetune_frozen (metrics.jsonl: eval/map; export/ tags)"
