#!/usr/bin/env bash
# NPROC trainer processes on this machine, joined by JAX's distributed runtime over localhost:
# the multi-host code path (per-process data slices, global arrays, cross-process collectives
# over Gloo, multi-host checkpoints) on CPU devices, without a cluster.
#
#   bash launch/local_multiprocess.sh NPROC [--dry_run] -- <python -m matpac_jax.train args>
#   bash launch/local_multiprocess.sh 2 -- --config=configs/matpac_pp.py:runlocal \
#       --workdir=runs/local2
#
# Environment:
#   DEVICES_PER_PROCESS  CPU devices each process sees (default 1)
#   MATPAC_PORT          the coordinator's port on 127.0.0.1 (default: a free one)
#   MATPAC_PYTHON        the interpreter (default: python from .venv, set up by env.sh)
#   MATPAC_MODULE        the program (default matpac_jax.train; matpac_jax.train.finetune
#                        fine-tunes, with its own flags after --)
#
# Output lines are prefixed with [pI] (only process 0 logs at INFO). When a process fails, the
# others are killed and this script exits with the failed process's status; SIGTERM or Ctrl-C
# is passed on to every process (a SIGTERM'd run saves a checkpoint and exits 0).
set -euo pipefail

usage() { echo "usage: $0 NPROC [--dry_run] -- <matpac_jax.train args>" >&2; exit 2; }
[ $# -ge 1 ] || usage
NPROC="$1"; shift
if ! [[ "$NPROC" =~ ^[1-9][0-9]*$ ]]; then
  echo "NPROC must be a positive integer, got '$NPROC'" >&2
  usage
fi
DRY_RUN=0
while [ $# -gt 0 ] && [ "$1" != "--" ]; do
  case "$1" in
    --dry_run) DRY_RUN=1 ;;
    *) echo "unknown option '$1'" >&2; usage ;;
  esac
  shift
done
[ "${1:-}" = "--" ] || usage
shift

if [ "$DRY_RUN" = 1 ]; then
  ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
else
  CALLER_DIR="$PWD"
  source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
  cd "$CALLER_DIR"  # the trainer resolves relative paths (config, workdir, data) from here
fi
PY="${MATPAC_PYTHON:-python}"
free_port() {  # one the OS is not using now (another program could take it before JAX does)
  "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
if [ "$DRY_RUN" = 1 ]; then
  PORT="${MATPAC_PORT:-FREE_PORT}"  # chosen when the processes start
else
  PORT="${MATPAC_PORT:-$(free_port)}"
fi
DEVICES="${DEVICES_PER_PROCESS:-1}"

# CPU devices only, DEVICES of them per process: an inherited device count (e.g. the test
# suite's 8) is replaced, other XLA flags are kept.
export JAX_PLATFORMS=cpu
XLA_FLAGS="$(echo "${XLA_FLAGS:-}" | sed -E 's/--xla_force_host_platform_device_count=[0-9]+//g')"
export XLA_FLAGS="${XLA_FLAGS} --xla_force_host_platform_device_count=${DEVICES}"
export PYTHONUNBUFFERED=1

cmd_for() {  # CMD: the command line of process $1, with the trainer arguments after it
  local id="$1"; shift
  CMD=("$PY" -m "${MATPAC_MODULE:-matpac_jax.train}" "--coordinator_address=127.0.0.1:${PORT}"
       "--num_processes=${NPROC}" "--process_id=${id}" "$@")
}

if [ "$DRY_RUN" = 1 ]; then
  echo "# JAX_PLATFORMS=$JAX_PLATFORMS XLA_FLAGS='${XLA_FLAGS# }'"
  for ((i = 0; i < NPROC; i++)); do
    cmd_for "$i" "$@"
    printf '%q ' "${CMD[@]}"; echo "&"
  done
  exit 0
fi

PIDS=()
kill_all() {
  for pid in ${PIDS[@]+"${PIDS[@]}"}; do kill "-$1" "$pid" 2>/dev/null || true; done
}
trap 'echo "[launch] passing SIGTERM to every process" >&2; kill_all TERM' TERM INT

for ((i = 0; i < NPROC; i++)); do
  cmd_for "$i" "$@"
  # awk (not sed -u, which BSD sed lacks) prefixes and flushes each line.
  "${CMD[@]}" > >(awk -v p="[p$i] " '{ print p $0; fflush() }') 2>&1 &
  PIDS+=($!)
  echo "[launch] process $i of $NPROC: pid ${PIDS[$i]}, coordinator 127.0.0.1:$PORT" >&2
done

# Poll rather than `wait -n` (macOS ships bash 3.2): the first failure ends the whole run.
status=0
remaining=$NPROC
declare -a DONE
while [ "$remaining" -gt 0 ]; do
  for ((i = 0; i < NPROC; i++)); do
    [ -z "${DONE[$i]:-}" ] || continue
    if ! kill -0 "${PIDS[$i]}" 2>/dev/null; then
      rc=0; wait "${PIDS[$i]}" || rc=$?
      DONE[$i]=1; remaining=$((remaining - 1))
      if [ "$rc" -ne 0 ] && [ "$status" -eq 0 ]; then
        status=$rc
        echo "[launch] process $i exited with status $rc: killing the others" >&2
        kill_all KILL
      fi
    fi
  done
  sleep 0.2
done
wait  # the log prefixers drain
exit "$status"
