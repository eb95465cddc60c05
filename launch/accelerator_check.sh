#!/usr/bin/env bash
# The accelerator check (matpac_jax/tools/accelerator_check.py) from a checkout, without
# installing the package: for a lent machine whose python has JAX's accelerator build and no
# network (docs/PERFORMANCE.md, "Accelerator check", lists the packages the check imports).
#
#   bash launch/accelerator_check.sh [--wheels DIR] --out DIR [the check's options]
#   bash launch/accelerator_check.sh --wheels wheels --out runs/accel
#   bash launch/accelerator_check.sh --out runs/accel_tiny --tiny
#
# --wheels DIR: first install every .whl in DIR offline (pip --no-index --no-deps --target), into
# MATPAC_WHEELS_SITE (default .wheels_site in the checkout), put ahead of the python's own
# packages. The check's options (--out, --tiny, --batch_sizes, --deadline_s, ...) pass through;
# relative paths start from the current folder. PYTHON: the interpreter (default python3).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
WHEELS=""
ARGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --wheels)
      [ $# -ge 2 ] || { echo "launch/accelerator_check.sh: error: --wheels needs a folder" >&2; exit 2; }
      WHEELS="$2"; shift 2 ;;
    --wheels=*) WHEELS="${1#*=}"; shift ;;
    *) ARGS+=("$1"); shift ;;
  esac
done
if [ -n "$WHEELS" ]; then
  if [ ! -d "$WHEELS" ]; then
    echo "launch/accelerator_check.sh: error: --wheels $WHEELS: no such folder" >&2
    exit 2
  fi
  shopt -s nullglob
  FOUND=("$WHEELS"/*.whl)
  if [ ${#FOUND[@]} -eq 0 ]; then
    echo "launch/accelerator_check.sh: error: --wheels $WHEELS: no .whl file in it" >&2
    exit 2
  fi
  SITE="${MATPAC_WHEELS_SITE:-$ROOT/.wheels_site}"
  echo "installing ${#FOUND[@]} wheels from $WHEELS into $SITE (offline)"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$SITE" "${FOUND[@]}"
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
exec "$PY" -m matpac_jax.tools.accelerator_check ${ARGS[@]+"${ARGS[@]}"}
