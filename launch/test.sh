#!/usr/bin/env bash
# Sets up .venv if needed, then runs the test suite. Extra arguments go to pytest.
#   bash launch/test.sh            everything (what CI runs)
#   bash launch/test.sh --quick    leaves out the tests marked slow (end-to-end runs): the
#                                  edit-test loop, under 3 minutes on 2 cores
# The suite runs on CPU devices (tests/conftest.py fakes 8), even on a GPU or TPU machine.
export MATPAC_ACCELERATOR="${MATPAC_ACCELERATOR:-cpu}"
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
args=()
for arg in "$@"; do
  if [ "$arg" = "--quick" ]; then
    args+=(-m "not slow")
  else
    args+=("$arg")
  fi
done
exec python -m pytest -q -n "${MATPAC_TEST_WORKERS:-2}" --durations=10 ${args[@]+"${args[@]}"}
