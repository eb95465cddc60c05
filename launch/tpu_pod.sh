#!/usr/bin/env bash
# MATPAC++ pretraining on a Cloud TPU VM slice (e.g. v4-32: 4 workers x 4 chips): create the
# TPU VM unless it exists, copy this checkout to every worker and install it, then run the
# trainer on all workers at once (one process per worker) and stream their output here.
#
#   TPU_NAME=matpac ZONE=us-central2-b ACCELERATOR_TYPE=v4-32 bash launch/tpu_pod.sh -- \
#       --config=configs/matpac_pp.py:variant=B --config.mesh=4,4 \
#       --config.data.dir=/mnt/shared/audioset_mels --workdir=/mnt/shared/runs/matpac_pp_b
#   ... bash launch/tpu_pod.sh --dry_run -- <same args>   # print the gcloud commands only
#   ... bash launch/tpu_pod.sh --skip_setup -- <args>     # reuse the copy and .venv as they are
#
# Variables:
#   TPU_NAME, ZONE        required
#   ACCELERATOR_TYPE      used when creating (default v4-32)
#   RUNTIME_VERSION       TPU VM image when creating (default tpu-ubuntu2204-base)
#   PROJECT               gcloud project (default: gcloud's configured one)
#   SPOT=1                create a Spot TPU VM (preemptible; rerun this script to resume)
#   REMOTE_DIR            the checkout on every worker (default matpac_jax, under $HOME)
#   MATPAC_MODULE         the program (default matpac_jax.train; matpac_jax.train.finetune
#                         fine-tunes)
#   MOUNT_CMD             run on every worker before training, to make data and workdir
#                         visible at the same path everywhere, e.g.
#                         'mkdir -p /mnt/shared && sudo mount -t nfs 10.0.0.2:/vol /mnt/shared'
#
# Every worker writes its part of each checkpoint into the workdir, and process 0 holds an
# flock on WORKDIR/.lock and appends metrics.jsonl there: the workdir must be a shared POSIX
# file system (Filestore/NFS); the data directory must be readable from every worker.
# JAX finds the workers from the TPU metadata server (--distributed=on).
set -euo pipefail

usage() {
  echo "usage: TPU_NAME=.. ZONE=.. $0 [--dry_run] [--skip_setup] -- <train args>" >&2
  exit 2
}
DRY_RUN=0
SETUP=1
while [ $# -gt 0 ] && [ "$1" != "--" ]; do
  case "$1" in
    --dry_run) DRY_RUN=1 ;;
    --skip_setup) SETUP=0 ;;
    *) echo "unknown option '$1'" >&2; usage ;;
  esac
  shift
done
[ "${1:-}" = "--" ] || usage
shift
: "${TPU_NAME:?set TPU_NAME (the TPU VM to create or reuse)}"
: "${ZONE:?set ZONE (e.g. us-central2-b for v4, us-west4-a for v5e)}"
ACCELERATOR_TYPE="${ACCELERATOR_TYPE:-v4-32}"
RUNTIME_VERSION="${RUNTIME_VERSION:-tpu-ubuntu2204-base}"
REMOTE_DIR="${REMOTE_DIR:-matpac_jax}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

GCLOUD=(gcloud compute tpus tpu-vm)
WHERE=(--zone="$ZONE")
[ -n "${PROJECT:-}" ] && WHERE+=(--project="$PROJECT")

# env.sh picks CPU where there is no nvidia-smi: a TPU VM has none, so say TPU first.
ENV="export JAX_PLATFORMS=tpu && source launch/env.sh"

quote() {  # one word as a shell reads it back: bare if safe, else in single quotes
  if [[ "$1" =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}
run() {  # prints the command; runs it unless --dry_run
  printf '+'; for word in "$@"; do printf ' '; quote "$word"; done; echo
  [ "$DRY_RUN" = 1 ] || "$@"
}
on_all_workers() {  # a shell command line, on every worker in parallel
  run "${GCLOUD[@]}" ssh "$TPU_NAME" "${WHERE[@]}" --worker=all --command="$1"
}

# ---------------------------------------------------------------- the TPU VM
if [ "$DRY_RUN" = 1 ] || ! "${GCLOUD[@]}" describe "$TPU_NAME" "${WHERE[@]}" >/dev/null 2>&1; then
  [ "$DRY_RUN" = 1 ] && echo "# only if '${GCLOUD[*]} describe $TPU_NAME' fails:"
  CREATE=("${GCLOUD[@]}" create "$TPU_NAME" "${WHERE[@]}" --accelerator-type="$ACCELERATOR_TYPE"
          --version="$RUNTIME_VERSION")
  [ "${SPOT:-0}" = 1 ] && CREATE+=(--spot)
  run "${CREATE[@]}"
fi

# ---------------------------------------------------------------- code and environment
if [ "$SETUP" = 1 ]; then
  ARCHIVE="${TMPDIR:-/tmp}/matpac_jax_src.tgz"
  # The working tree as it is (uncommitted changes included), without local state.
  run tar -czf "$ARCHIVE" -C "$ROOT" --exclude=./.git --exclude=./.venv --exclude=./.cache \
    --exclude=./runs .
  run "${GCLOUD[@]}" scp "$ARCHIVE" "$TPU_NAME:matpac_jax_src.tgz" "${WHERE[@]}" --worker=all
  # env.sh creates .venv and installs the package; then the TPU build of the same jax.
  on_all_workers "mkdir -p ~/$REMOTE_DIR && tar -xzf ~/matpac_jax_src.tgz -C ~/$REMOTE_DIR \
&& cd ~/$REMOTE_DIR && $ENV && pip install --quiet \"jax[tpu]>=0.10,<0.11\""
fi
if [ -n "${MOUNT_CMD:-}" ]; then
  on_all_workers "$MOUNT_CMD"
fi

# ---------------------------------------------------------------- train
# Each worker's lines are prefixed with its hostname; the remote shell's status is the
# trainer's, so a failed worker makes this script fail.
TRAIN_ARGS="$(for word in "$@"; do quote "$word"; printf ' '; done)"
on_all_workers "cd ~/$REMOTE_DIR && $ENV && set -o pipefail && \
python -m $(quote "${MATPAC_MODULE:-matpac_jax.train}") --distributed=on $TRAIN_ARGS 2>&1 \
| awk -v p=\"[\$(hostname)] \" '{ print p \$0; fflush() }'"
