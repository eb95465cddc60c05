#!/usr/bin/env bash
# MATPAC++ pretraining on a Cloud TPU VM slice (e.g. v5p-256: 32 workers x 4 chips): make sure the
# slice exists and is READY (created if missing, re-created if preempted), copy this checkout to
# every worker and install it with the TPU build of JAX, mount the shared file system if it is
# not mounted, then run the trainer on all workers at once (one process per worker) and stream
# their output here. Running it again is always safe: it resumes the run.
#
#   TPU_NAME=matpac ZONE=us-east5-a ACCELERATOR_TYPE=v5p-256 bash launch/tpu_pod.sh -- \
#       --config=configs/matpac_pp.py:variant=B --config.mesh=128,1 \
#       --config.data.dir=/mnt/shared/audioset_mels --workdir=/mnt/shared/runs/matpac_pp_b
#   ... bash launch/tpu_pod.sh --dry_run -- <same args>   # print the commands only
#   ... bash launch/tpu_pod.sh --skip_setup -- <args>     # reuse the copy and .venv as they are
#   ... bash launch/tpu_pod.sh --restarts 20 -- <args>    # ride through up to 20 preemptions
#
# Variables:
#   TPU_NAME, ZONE        required
#   ACCELERATOR_TYPE      used when creating (default v5p-256)
#   RUNTIME_VERSION       the TPU VM image when creating (default: Cloud TPU's for the
#                         generation: v2-alpha-tpuv6e, v2-alpha-tpuv5, v2-alpha-tpuv5-lite,
#                         tpu-ubuntu2204-base for v4 and older)
#   PROJECT               gcloud project (default: gcloud's configured one)
#   SPOT=1                create a Spot slice (preemptible: use --restarts)
#   REMOTE_DIR            the checkout on every worker (default matpac_jax, under $HOME)
#   MATPAC_MODULE         the program (default matpac_jax.train; matpac_jax.train.finetune
#                         fine-tunes)
#   MOUNT_POINT, MOUNT_CMD  make data and workdir visible at the same path on every worker:
#                         MOUNT_CMD runs where MOUNT_POINT is not mounted yet, e.g.
#                         MOUNT_POINT=/mnt/shared MOUNT_CMD='sudo mkdir -p /mnt/shared &&
#                         sudo mount -t nfs 10.0.0.2:/vol /mnt/shared'
#
# Restarts: a Spot or preempted slice is gone, its workers' disks with it. With --restarts N,
# when the training command fails or stops before its last step (the trainers save on SIGTERM
# and exit 0) and the slice is no longer READY, the script re-creates it, sets it up again and
# resumes, up to N times. Every worker writes its part of each checkpoint into the workdir, and
# process 0 holds WORKDIR/.lock (a lock file, no flock; a dead holder's is taken over) and
# writes metrics.jsonl there: the workdir must be a bucket (gs://..., no mount needed) or a
# shared file system (Filestore/NFS) mounted on every worker. JAX finds the workers from the
# TPU metadata server (--distributed=on).
set -euo pipefail

usage() {
  echo "usage: TPU_NAME=.. ZONE=.. $0 [--dry_run] [--skip_setup] [--restarts N] -- <train args>" >&2
  exit 2
}
DRY_RUN=0
SETUP=1
RESTARTS=0
while [ $# -gt 0 ] && [ "$1" != "--" ]; do
  case "$1" in
    --dry_run) DRY_RUN=1 ;;
    --skip_setup) SETUP=0 ;;
    --restarts)
      shift
      [[ "${1:-}" =~ ^[0-9]+$ ]] || { echo "--restarts takes a count" >&2; usage; }
      RESTARTS="$1" ;;
    *) echo "unknown option '$1'" >&2; usage ;;
  esac
  shift
done
[ "${1:-}" = "--" ] || usage
shift
: "${TPU_NAME:?set TPU_NAME (the TPU VM slice to create or reuse)}"
: "${ZONE:?set ZONE (e.g. us-east5-a for v5p, us-west4-a for v5e)}"
ACCELERATOR_TYPE="${ACCELERATOR_TYPE:-v5p-256}"
case "$ACCELERATOR_TYPE" in
  v6e-*) DEFAULT_RUNTIME=v2-alpha-tpuv6e ;;
  v5p-*) DEFAULT_RUNTIME=v2-alpha-tpuv5 ;;
  v5litepod-*|v5e-*) DEFAULT_RUNTIME=v2-alpha-tpuv5-lite ;;
  v2-*|v3-*|v4-*) DEFAULT_RUNTIME=tpu-ubuntu2204-base ;;
  *) DEFAULT_RUNTIME="" ;;
esac
RUNTIME_VERSION="${RUNTIME_VERSION:-$DEFAULT_RUNTIME}"
if [ -z "$RUNTIME_VERSION" ]; then
  echo "no default TPU software version for ACCELERATOR_TYPE=$ACCELERATOR_TYPE: set RUNTIME_VERSION" >&2
  exit 2
fi
if [ -n "${MOUNT_CMD:-}" ] && [ -z "${MOUNT_POINT:-}" ]; then
  echo "MOUNT_CMD needs MOUNT_POINT (where it mounts: it runs only where that is not mounted)" >&2
  exit 2
fi
REMOTE_DIR="${REMOTE_DIR:-matpac_jax}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

GCLOUD=(gcloud compute tpus tpu-vm)
WHERE=(--zone="$ZONE")
[ -n "${PROJECT:-}" ] && WHERE+=(--project="$PROJECT")
# launch/env.sh with the TPU build: installs '.[tpu]' (jax[tpu], libtpu) and exports
# JAX_PLATFORMS=tpu, so a worker where JAX cannot start the TPU stops at once.
ENV="export MATPAC_ACCELERATOR=tpu && source launch/env.sh"

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
state() {  # the slice's state (READY, CREATING, PREEMPTED, ...), empty if it does not exist
  "${GCLOUD[@]}" describe "$TPU_NAME" "${WHERE[@]}" --format='value(state)' 2>/dev/null || true
}

# ---------------------------------------------------------------- the slice
create() {
  local cmd=("${GCLOUD[@]}" create "$TPU_NAME" "${WHERE[@]}"
             --accelerator-type="$ACCELERATOR_TYPE" --version="$RUNTIME_VERSION")
  [ "${SPOT:-0}" = 1 ] && cmd+=(--spot)
  run "${cmd[@]}"
}
FRESH=0  # the workers are new: the copy and .venv must be made again
ensure_slice() {
  if [ "$DRY_RUN" = 1 ]; then
    echo "# if '${GCLOUD[*]} describe $TPU_NAME' finds none:"
    create
    echo "# if it is PREEMPTED, TERMINATED or STOPPED: delete it, then create it as above:"
    run "${GCLOUD[@]}" delete "$TPU_NAME" "${WHERE[@]}" --quiet
    return
  fi
  local s
  for _ in $(seq 120); do  # up to an hour for a slice that is still starting
    s="$(state)"
    case "$s" in
      READY) return ;;
      "") create; FRESH=1 ;;
      PREEMPTED|TERMINATED|STOPPED)
        echo "[tpu] $TPU_NAME is $s: re-creating it" >&2
        run "${GCLOUD[@]}" delete "$TPU_NAME" "${WHERE[@]}" --quiet
        create; FRESH=1 ;;
      *) echo "[tpu] $TPU_NAME is $s: waiting" >&2; sleep 30 ;;
    esac
  done
  echo "[tpu] $TPU_NAME did not become READY" >&2
  exit 1
}

# ---------------------------------------------------------------- code and environment
set_up() {
  local archive="${TMPDIR:-/tmp}/matpac_jax_src.tgz"
  # The working tree as it is (uncommitted changes included), without local state.
  run tar -czf "$archive" -C "$ROOT" --exclude=./.git --exclude=./.venv --exclude=./.cache \
    --exclude=./runs .
  run "${GCLOUD[@]}" scp "$archive" "$TPU_NAME:matpac_jax_src.tgz" "${WHERE[@]}" --worker=all
  on_all_workers "mkdir -p ~/$REMOTE_DIR && tar -xzf ~/matpac_jax_src.tgz -C ~/$REMOTE_DIR \
&& cd ~/$REMOTE_DIR && $ENV"
  if [ "$DRY_RUN" = 1 ]; then  # what env.sh does there
    (MATPAC_ACCELERATOR=tpu MATPAC_ENV_DRY_RUN=1 source "$ROOT/launch/env.sh") | sed 's/^/# /'
  fi
}
mount_shared() {
  [ -n "${MOUNT_CMD:-}" ] || return 0
  on_all_workers "mountpoint -q $(quote "$MOUNT_POINT") || { $MOUNT_CMD; }"
}

# ---------------------------------------------------------------- train
# Each worker's lines are prefixed with its hostname; the remote shell's status is the
# trainer's, so a failed worker makes this script fail.
TRAIN_ARGS="$(for word in "$@"; do quote "$word"; printf ' '; done)"
LOG="${TMPDIR:-/tmp}/matpac_tpu_${TPU_NAME}.log"
train() {
  on_all_workers "cd ~/$REMOTE_DIR && $ENV && set -o pipefail && \
python -m $(quote "${MATPAC_MODULE:-matpac_jax.train}") --distributed=on $TRAIN_ARGS 2>&1 \
| awk -v p=\"[\$(hostname)] \" '{ print p \$0; fflush() }'"
}

attempt=0
while :; do
  ensure_slice
  if [ "$SETUP" = 1 ] || [ "$FRESH" = 1 ]; then
    set_up
  fi
  mount_shared
  [ "$DRY_RUN" = 1 ] && { train; exit 0; }
  status=0
  train 2>&1 | tee "$LOG" || status=$?
  if [ "$status" = 0 ] && ! grep -q "stopped before the last step" "$LOG"; then
    exit 0  # finished: the export is in the workdir
  fi
  s="$(state)"
  if [ "$s" = READY ] && [ "$status" != 0 ]; then
    echo "[tpu] the training failed (status $status) on a READY slice: not a preemption" >&2
    exit "$status"
  fi
  attempt=$((attempt + 1))
  if [ "$attempt" -gt "$RESTARTS" ]; then
    echo "[tpu] stopped before the last step (slice ${s:-gone}); run this script again (or" \
      "pass --restarts N) to resume" >&2
    exit "$([ "$status" = 0 ] && echo 0 || echo "$status")"
  fi
  echo "[tpu] slice ${s:-gone} after an interrupted run: restart $attempt of $RESTARTS" >&2
  FRESH=0
  SETUP=0
done
