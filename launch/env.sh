# Sourced by the launch scripts (or run: `bash launch/env.sh`, e.g. on a login node): make sure
# .venv exists and holds this checkout's dependencies with the JAX build for the accelerator,
# and point JAX at that accelerator.
#
#   MATPAC_ACCELERATOR  auto (default): cuda where nvidia-smi is found, tpu on a Cloud TPU VM
#                       (/dev/accel*, /dev/vfio), cpu elsewhere; or say which: cpu, cuda (JAX's
#                       CUDA 12 build: NVIDIA driver >= 525), cuda13 (driver >= 580), tpu
#   MATPAC_ENV_DRY_RUN  1: print the set-up and the exports (as shell lines), do nothing
#
# cuda and tpu install the package's extra of that name (`pip install -e '.[cuda]'` pulls
# jax[cuda12]: jaxlib's CUDA plugin with CUDA, cuDNN and NCCL as pip wheels, no system CUDA
# needed) and export JAX_PLATFORMS=cuda (tpu), so a node whose accelerator JAX cannot start
# stops the trainer at start-up instead of training on the CPU. A MATPAC_ACCELERATOR given sets
# JAX_PLATFORMS whatever the environment held (sbatch passes the submitting shell's on, which
# may be a login node's cpu); with auto, a JAX_PLATFORMS already set is kept. Re-installs only
# when setup.cfg or the accelerator changed (a stamp records both).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CALLER_DIR="$PWD"  # where the user typed the command: their relative paths start there
cd "$ROOT"
PY="${PYTHON:-python3}"

ACCELERATOR="${MATPAC_ACCELERATOR:-auto}"
KEEP_PLATFORMS=""
if [ "$ACCELERATOR" = auto ]; then
  KEEP_PLATFORMS="${JAX_PLATFORMS:-}"
  if command -v nvidia-smi >/dev/null 2>&1; then
    ACCELERATOR=cuda
  elif compgen -G "/dev/accel*" >/dev/null || [ -d /dev/vfio ]; then
    ACCELERATOR=tpu
  else
    ACCELERATOR=cpu
  fi
fi
case "$ACCELERATOR" in
  cpu) EXTRAS=test; PLATFORM=cpu ;;
  cuda|cuda12) EXTRAS=test,cuda; PLATFORM=cuda ;;
  cuda13) EXTRAS=test,cuda13; PLATFORM=cuda ;;
  tpu) EXTRAS=test,tpu; PLATFORM=tpu ;;
  *)
    echo "launch/env.sh: error: MATPAC_ACCELERATOR=$ACCELERATOR: use auto, cpu, cuda, cuda13 or tpu" >&2
    exit 2 ;;
esac
PLATFORM="${KEEP_PLATFORMS:-$PLATFORM}"
STAMP=.venv/.matpac_installed
WANT="$(sha1sum setup.cfg | cut -d' ' -f1) $EXTRAS"
CACHE="${JAX_COMPILATION_CACHE_DIR:-$ROOT/.cache/jax}"

if [ "${MATPAC_ENV_DRY_RUN:-0}" = 1 ]; then
  echo "# launch/env.sh in $ROOT, MATPAC_ACCELERATOR=$ACCELERATOR:"
  echo "[ -x .venv/bin/python ] || $PY -m venv .venv"
  echo ".venv/bin/python -m pip install -e '.[$EXTRAS]'  # when setup.cfg or the accelerator changed"
  echo "export PATH=$ROOT/.venv/bin:\$PATH"
  echo "export JAX_PLATFORMS=$PLATFORM"
  echo "export JAX_COMPILATION_CACHE_DIR=$CACHE"
else
  if [ ! -x .venv/bin/python ]; then
    echo "[setup] creating .venv with $($PY --version 2>&1)"
    "$PY" -m venv .venv
  fi
  if [ "$(cat "$STAMP" 2>/dev/null || true)" != "$WANT" ]; then
    echo "[setup] installing matpac_jax and its dependencies ('.[$EXTRAS]') into .venv (first run: a few minutes)"
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m pip install --quiet -e ".[$EXTRAS]"
    echo "$WANT" > "$STAMP"
  fi
  export PATH="$ROOT/.venv/bin:$PATH"
  export JAX_PLATFORMS="$PLATFORM"
  export JAX_COMPILATION_CACHE_DIR="$CACHE"
fi
