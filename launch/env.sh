# Sourced by the launch scripts: make sure .venv exists and holds this checkout's dependencies.
# Re-installs only when setup.cfg changed since the last install (a stamp records its hash).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CALLER_DIR="$PWD"  # where the user typed the command: their relative paths start there
cd "$ROOT"
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $($PY --version 2>&1)"
  "$PY" -m venv .venv
fi
STAMP=.venv/.matpac_installed
WANT="$(sha1sum setup.cfg | cut -d' ' -f1)"
if [ "$(cat "$STAMP" 2>/dev/null || true)" != "$WANT" ]; then
  echo "[setup] installing matpac_jax and its dependencies into .venv (first run: a few minutes)"
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e '.[test]'
  echo "$WANT" > "$STAMP"
fi
export PATH="$ROOT/.venv/bin:$PATH"
# JAX on a machine with no GPU (nvidia-smi) and no TPU (/dev/accel*, /dev/vfio): CPU without
# the accelerator probing noise. Persistent compile cache everywhere.
if ! command -v nvidia-smi >/dev/null 2>&1 && ! compgen -G "/dev/accel*" >/dev/null \
    && [ ! -d /dev/vfio ]; then
  export JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}"
fi
export JAX_COMPILATION_CACHE_DIR="${JAX_COMPILATION_CACHE_DIR:-$ROOT/.cache/jax}"
